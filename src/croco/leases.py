"""Leases in the storage root: one writer per unit, whichever machine or process it runs on.

    <root>/_leases/<key>.json          on S3: one object, changed only by conditional PUTs
    <root>/_leases/<key>/<n>.json      on a file system: one file per change, the highest n is the lease

A lease names its holder (an id, the host and pid), when it was acquired and last renewed, and when it
expires. Its holder renews it every CROCO_HEARTBEAT_S seconds from a thread while it holds it; a holder
that dies (kill -9, a node lost) stops renewing, and after three intervals any waiter on any machine may
take it over. Every change is a compare-and-swap against the lease as it was read, so of several waiters
racing for one expired lease exactly one wins, and a holder that was stalled past its expiry learns that
it lost the lease instead of overwriting its successor's:

- S3: `If-None-Match: *` creates a lease, `If-Match: <ETag>` changes one (412 when it changed since).
- A local or shared file system: change n+1 is a hard link of a complete temporary file to `<n+1>.json`,
  which fails if that name exists, as O_EXCL does (and on NFS too), but a reader never sees a half-written
  file. Older changes are then removed; a change linked after a newer one exists was made from a stale
  read and is taken back.

Expiry compares the reader's clock with the writer's: the machines' clocks must agree to within a lease.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Optional

from prefect.locking.protocol import LockManager

from croco.runs import LEASE_HEARTBEATS, heartbeat_s, parse_time, timestamp, utc_now
from croco.storage import Storage

log = logging.getLogger("croco")

FOLDER = "_leases"
LOCK_POLL_S = 0.2  # how often a task waiting on a unit's lock reads its lease
Record = dict[str, Any]


class LeaseLost(Exception):
    """Another holder took the lease over (this one did not renew it in time), or it was released."""


class Lease:
    """The lease on `key` in a storage root, as `holder` (a new id by default) sees it.

    `acquire` takes it when it is free, expired, or already this holder's (so a process given the holder
    id, such as a cluster job or a flow re-attaching to one, picks the same lease up without waiting);
    `keep_alive` renews it from a thread while it is held; `release` frees it; `current` reads who holds it.
    """

    def __init__(self, storage: Storage, key: str, holder: str | None = None, length_s: float | None = None):
        self.key, self.holder = key, holder or uuid.uuid4().hex
        self.length_s = length_s or LEASE_HEARTBEATS * heartbeat_s()
        self._store = _S3Store(storage, key) if not storage.local else _FileStore(Path(storage.root), key)
        self._token: Any = None
        self._stop: threading.Event | None = None

    # Reading ------------------------------------------------------------------------------------

    def current(self) -> Optional[Record]:
        """The lease as stored now (holder, host, pid, acquired_at, renewed_at, expires_at, released_at), or None."""
        found = self._store.read()
        return found[0] if found else None

    def holds(self) -> bool:
        """Whether this holder holds the lease now (held, not expired, not released)."""
        record = self.current()
        return record is not None and record["holder"] == self.holder and not is_free(record)

    # Changing -----------------------------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lease, waiting up to `timeout` seconds (None: as long as it takes; 0: one try)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.05
        while not self._try_acquire():
            if deadline is not None and time.monotonic() + pause > deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 2.0, self.length_s / 4)
        return True

    def _try_acquire(self) -> bool:
        found = self._store.read()
        record, token = found if found else (None, None)
        if record is not None and record["holder"] != self.holder and not is_free(record):
            return False
        ours = record is not None and record["holder"] == self.holder and not record.get("released_at")
        return self._write(token, self._record(acquired_at=record["acquired_at"] if ours else None))

    def renew(self) -> None:
        """Push the expiry one lease length ahead; raises LeaseLost if the lease is no longer this holder's."""
        for _ in range(3):  # another process renewing as the same holder (a job and its flow) may change it first
            found = self._store.read()
            if found is None or found[0]["holder"] != self.holder or found[0].get("released_at"):
                raise LeaseLost(self._lost(found[0] if found else None))
            if self._write(found[1], self._record(acquired_at=found[0]["acquired_at"])):
                return
        raise LeaseLost(self._lost(self.current()))

    def release(self) -> None:
        """Free the lease (a change to a released record, so a later holder never mistakes an old change for its
        own); a lease another holder took over meanwhile is left to it, with a warning."""
        self.stop_renewing()
        found = self._store.read()
        if found is None or found[0]["holder"] != self.holder or found[0].get("released_at"):
            log.warning("%s", self._lost(found[0] if found else None))
            return
        now = utc_now()
        released = {**found[0], "nonce": uuid.uuid4().hex, "expires_at": timestamp(now), "released_at": timestamp(now)}
        if not self._write(found[1], released):
            log.warning("%s", self._lost(self.current()))

    def _record(self, acquired_at: str | None) -> Record:
        now = utc_now()
        return {
            "key": self.key,
            "holder": self.holder,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": acquired_at or timestamp(now),
            "renewed_at": timestamp(now),
            "expires_at": timestamp(now + timedelta(seconds=self.length_s)),
            "released_at": None,
            "nonce": uuid.uuid4().hex,  # tells this change apart from any other, even of the same holder
        }

    def _write(self, token: Any, record: Record) -> bool:
        """Compare-and-swap: store `record` if the lease is still as it was when `token` was read."""
        new = self._store.swap(token, record)
        if new is None:  # refused, or done and its answer lost (a retried request is refused by its own change)
            found = self._store.read()
            if found is None or found[0]["nonce"] != record["nonce"]:
                return False
            new = found[1]
        self._token = new
        return True

    def _lost(self, record: Optional[Record]) -> str:
        if record is None or record.get("released_at"):
            return f"lease {self.key}: released while {self.holder} held it"
        return f"lease {self.key}: taken over by {record['holder']} on {record['host']} (pid {record['pid']}); {self.holder} renewed it too late"

    # Renewing -----------------------------------------------------------------------------------

    def keep_alive(self) -> None:
        """Renew the lease every third of its length from a daemon thread, until `release` or `stop_renewing`."""
        if self._stop is not None:
            return
        self._stop = stop = threading.Event()
        threading.Thread(target=self._renew_until, args=(stop,), name=f"croco-lease-{self.key}", daemon=True).start()

    def stop_renewing(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    def _renew_until(self, stop: threading.Event) -> None:
        while not stop.wait(self.length_s / LEASE_HEARTBEATS):
            try:
                self.renew()
            except LeaseLost as lost:
                log.error("%s", lost)
                return
            except Exception as error:  # a store's hiccup: the next beat tries again, the lease allows a few
                log.warning("lease %s: not renewed (%s)", self.key, error)

    @contextmanager
    def held(self, timeout: float | None = None) -> Iterator["Lease"]:
        """`with lease.held():` acquire, keep alive, release."""
        if not self.acquire(timeout):
            raise TimeoutError(f"lease {self.key} is held by {(self.current() or {}).get('holder')}")
        self.keep_alive()
        try:
            yield self
        finally:
            self.release()


class LeaseLockManager(LockManager):
    """Prefect's lock manager over the leases in one storage root: the unit's lock lives beside
    its versions, so two roots never wait on each other, one root seen from several machines (a shared file
    system, S3) has one writer per unit, and a lock whose holder died is free once its lease expires. The lock
    is held, and renewed, from the task's start until its result is committed; `lease(key)` is the Lease this
    process holds, for a backend that hands its holder id on (to a cluster job, or beside the job id)."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._held: dict[str, Lease] = {}
        self._guard = threading.Lock()

    def lease(self, key: str) -> Lease | None:
        """The lease on `key` this process holds (and renews), if it holds one."""
        with self._guard:
            return self._held.get(key)

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        """`hold_timeout` is not used: a lease is held as long as its holder renews it."""
        lease = Lease(self.storage, key, holder)
        if not lease.acquire(acquire_timeout):
            return False
        lease.keep_alive()
        with self._guard:
            self._held[key] = lease
        return True

    async def aacquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        return await asyncio.to_thread(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        with self._guard:
            lease = self._held.get(key)
            if lease is not None and lease.holder == holder:
                del self._held[key]
            else:
                lease = Lease(self.storage, key, holder)
        lease.release()

    def is_locked(self, key: str) -> bool:
        record = Lease(self.storage, key).current()
        return record is not None and not is_free(record)

    def is_lock_holder(self, key: str, holder: str) -> bool:
        return Lease(self.storage, key, holder).holds()

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(LOCK_POLL_S)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.wait_for_lock, key, timeout)


def is_free(record: Record) -> bool:
    return bool(record.get("released_at")) or parse_time(record["expires_at"]) < utc_now()


class _S3Store:
    """One object; botocore through s3fs's client, since the lease needs the ETag of what it read and the
    precondition that failed (s3fs reads bodies without ETags and turns a failed If-Match into a plain OSError)."""

    def __init__(self, storage: Storage, key: str):
        self.fs = storage.fs
        self.bucket, self.object_key, _ = self.fs.split_path(f"{storage.root}/{FOLDER}/{key}.json")

    def _call(self, method: str, **arguments: Any) -> dict:
        from fsspec.asyn import sync

        async def call() -> dict:
            client = await self.fs.set_session()
            response = await getattr(client, method)(Bucket=self.bucket, Key=self.object_key, **arguments)
            body = response.get("Body")
            if body is not None:
                try:
                    response["Body"] = await body.read()
                finally:
                    body.close()
            return response

        return sync(self.fs.loop, call)

    def read(self) -> Optional[tuple[Record, str]]:
        from botocore.exceptions import ClientError

        try:
            response = self._call("get_object")
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(response["Body"]), response["ETag"]

    def swap(self, etag: str | None, record: Record) -> Optional[str]:
        from botocore.exceptions import ClientError

        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            return self._call("put_object", Body=json.dumps(record).encode(), **condition)["ETag"]
        except ClientError as error:
            # 412: changed since it was read; 409: another conditional write to it was in progress; 404: deleted
            if error.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                return None
            raise


class _FileStore:
    """Numbered changes in a folder: the token is the number of the change read (0: none yet)."""

    def __init__(self, root: Path, key: str):
        self.folder = root / FOLDER / key

    def _numbers(self) -> list[int]:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return sorted(int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit())

    def read(self) -> Optional[tuple[Record, int]]:
        while True:
            numbers = self._numbers()
            if not numbers:
                return None
            try:
                return json.loads((self.folder / f"{numbers[-1]}.json").read_bytes()), numbers[-1]
            except FileNotFoundError:  # a newer change removed it just now: read that one
                continue

    def swap(self, number: int | None, record: Record) -> Optional[int]:
        new = (number or 0) + 1
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{new}.{record['nonce']}.tmp"
        tmp.write_bytes(json.dumps(record).encode())
        try:
            os.link(tmp, self.folder / f"{new}.json")
        except FileExistsError:
            return None
        finally:
            tmp.unlink()
        if self._numbers()[-1] != new:  # linked after older changes were cleaned away: made from a stale read
            (self.folder / f"{new}.json").unlink(missing_ok=True)
            return None
        for older in self._numbers():
            if older < new:
                (self.folder / f"{older}.json").unlink(missing_ok=True)
        return new
