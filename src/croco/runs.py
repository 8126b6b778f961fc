"""The run records: what each run used, whether it is alive, and gc.

    <root>/runs/<run_id>.json     one record per run: its config, the version of every unit it used, its status

A run rewrites its record's `heartbeat_at` every CROCO_HEARTBEAT_S seconds (60 by default) while it
goes, and the record says how long a heartbeat holds (`lease_s`, three intervals). A record still
"running" whose heartbeat is older than its lease is a run that died (killed, out of time, its
machine lost): that holds for a run on another machine too, as long as the clocks agree to within
a lease. Times are UTC ISO 8601; records written by older croco versions (local time with an
offset such as +0100) are read as the moments they name, so every record sorts by when it started.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from croco.errors import CrocoError
from croco.storage import Storage

log = logging.getLogger("croco")

HEARTBEAT_S = 60.0
LEASE_HEARTBEATS = 3  # a heartbeat or two may be late (a slow store, a busy machine); three missed is a dead run


def heartbeat_s() -> float:
    """How often a live run, or a held unit lease (croco.leases), proves it is alive: CROCO_HEARTBEAT_S seconds."""
    return float(os.environ.get("CROCO_HEARTBEAT_S", HEARTBEAT_S))


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def timestamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def parse_time(text: str) -> datetime:
    """The moment a record's time names: UTC ISO (this croco) or local time with an offset (older ones)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def record_path(storage: Storage, run_id: str) -> str:
    return f"{storage.root}/runs/{run_id}.json"


def write(storage: Storage, record: dict[str, Any]) -> str:
    path = record_path(storage, record["run_id"])
    storage.put(path, json.dumps(record, indent=2, sort_keys=True).encode())
    return path


def records(storage: Storage) -> list[dict[str, Any]]:
    """Run records, newest first (by when they started)."""
    found = [json.loads(storage.fs.cat_file(path)) for path in storage.fs.glob(f"{storage.root}/runs/*.json")]
    return sorted(found, key=lambda run: (parse_time(run["started_at"]), run["run_id"]), reverse=True)


def state(run: dict[str, Any], now: datetime | None = None) -> str:
    """completed, failed, running, or died: a run whose record says running but whose heartbeat is past its lease."""
    if run["status"] != "running":
        return run["status"]
    beat = parse_time(run.get("heartbeat_at") or run["started_at"])  # older croco versions wrote no heartbeat
    lease = timedelta(seconds=run.get("lease_s", LEASE_HEARTBEATS * HEARTBEAT_S))
    return "running" if (now or utc_now()) - beat <= lease else "died"


def completed(storage: Storage, name: str) -> list[dict[str, Any]]:
    """The completed runs of config `name`, newest first."""
    return [run for run in records(storage) if run["name"] == name and run["status"] == "completed"]


def last_languages(storage: Storage, name: str) -> list[str] | None:
    """The languages of the newest completed run of this name, or None."""
    runs = completed(storage, name)
    return runs[0]["languages"] if runs else None


class LiveRun:
    """A run's record, written now and rewritten with a new `heartbeat_at` every heartbeat until the run
    finishes; leaving the `with` block without `finish` (an error, an interrupt) records the run as failed."""

    def __init__(self, storage: Storage, record: dict[str, Any]):
        interval = heartbeat_s()
        self.storage, self.interval = storage, interval
        self.record = {**record, "status": "running", "lease_s": LEASE_HEARTBEATS * interval}
        self._lock, self._finished = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, name="croco-heartbeat", daemon=True)

    def __enter__(self) -> "LiveRun":
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *error) -> None:
        if not self._finished.is_set():
            self.finish("failed")

    def update(self, **fields: Any) -> None:
        """Add fields to the record; the next heartbeat writes them."""
        with self._lock:
            self.record = {**self.record, **fields}

    def finish(self, status: str, **fields: Any) -> None:
        self._finished.set()
        with self._lock:  # a heartbeat being written now cannot overwrite the final record
            self.record = {**self.record, **fields, "status": status, "finished_at": timestamp(utc_now())}
            write(self.storage, self.record)
        self._thread.join()

    def _keep_alive(self) -> None:
        while not self._finished.wait(self.interval):
            try:
                self._beat()
            except Exception as error:  # a store's hiccup: the next beat tries again, and the lease allows a few
                log.warning("run %s: heartbeat not written (%s)", self.record["run_id"], error)

    def _beat(self) -> None:
        with self._lock:
            if not self._finished.is_set():
                self.record["heartbeat_at"] = timestamp(utc_now())
                write(self.storage, self.record)


@dataclass
class Collected:
    """What gc deleted (or, in a dry run, would delete) and what it kept: version paths and run record paths."""

    versions: list[str]
    records: list[str]
    kept: list[str]


def gc(storage: Storage, name: str, keep: int, dry_run: bool = False) -> Collected:
    """Delete the runs of config `name` that started before its `keep` newest completed runs, and the committed
    versions only they used. Kept: every run from the keep-th newest completed one on (failed and died ones too: a
    newer failed run's finished units are its rerun's cache hits), every run still going, every run of another
    config, and versions without a manifest (work in progress that a rerun resumes from)."""
    if keep < 1:
        raise CrocoError(f"--keep must be at least 1 (got {keep}): the newest completed run's versions are always kept")
    every, now = records(storage), utc_now()
    ours = [run for run in every if run["name"] == name]
    finished = [run for run in ours if run["status"] == "completed"]
    older = ours[ours.index(finished[keep - 1]) + 1 :] if len(finished) >= keep else []
    removed = [run for run in older if state(run, now) != "running"]
    removed_ids = {run["run_id"] for run in removed}
    used = {path for run in every if run["run_id"] not in removed_ids for path in run["versions"].values()}
    deleted, kept = [], []
    for version in storage.versions():
        if version.relative in used or not version.committed():
            kept.append(version.relative)
            continue
        deleted.append(version.relative)
        if not dry_run:
            version.remove()  # manifest first: a delete stopped halfway leaves no commit
    paths = [record_path(storage, run["run_id"]) for run in removed]
    if not dry_run:
        for path in paths:
            storage.fs.rm(path)
    return Collected(deleted, [path[len(storage.root) + 1 :] for path in paths], kept)
