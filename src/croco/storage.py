"""Versioned artifact storage on any fsspec filesystem: a local folder (the default) or S3 via s3fs.

Every stage output is an immutable, content-addressed version:

    <root>/<stage>/<language>/<key>/      (`all` as the language for stages that take every language)
        data/part-<shard>.parquet         the records, one shard per unit of work
        skipped/part-<shard>.parquet      what the stage could not process, with reasons
        index/part-<shard>.json           rows, bytes and sha256 of that shard pair, written after them
        files/...                         other outputs: adapters, plots, tables
        checkpoints/checkpoint-<step>/    a training unit's newest whole checkpoint while it runs, so that a job
                                          resumed on another node finds it (croco.training); gone at the commit
        started.json                      the digests of the inputs the work was started from
        manifest.json                     written last: the commit marker, with the size and sha256 of every file
    <root>/runs/                          run records (croco.runs)
    <root>/reports/                       run reports and comparisons (croco.report, croco.compare)

A shard counts as finished only when its index entry exists and the shard matches it, so a
killed task resumes from its finished shards and a truncated or corrupt shard is redone; it
resumes only over work made from the same inputs (started.json).
Endpoint and credentials come from the environment (AWS variables or profile): they are
never part of a URI, a manifest or a log line.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from croco.errors import CrocoError
from croco.fileio import stable_hash, write_atomic
from croco.records import SKIPPED

log = logging.getLogger("croco")

MANIFEST = "manifest.json"
STARTED = "started.json"
PARTS = ("data", "skipped")
CHECKPOINTS = "checkpoints"
ALL_LANGUAGES = "all"
# Long free text (answers) is rarely repeated: a dictionary page would only be built and thrown away.
DICTIONARY_MAX_AVERAGE_BYTES = 256
# Uploads and downloads run beside the stage's work (the next shard's encoding, generation or decoding).
UPLOADS_IN_FLIGHT = 2
_TRANSFERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="croco-storage")
HASH_BLOCK = 8 << 20


@dataclass(frozen=True)
class Share:
    """The part of a version's shards one process does: those at positions p of the stage's shard list with
    p % count == index (one task of a SLURM job array). COMMIT_ONLY does none: it commits, every shard done."""

    index: int
    count: int


COMMIT_ONLY = Share(0, 0)


class ShardsMissing(Exception):
    """A version about to be committed lacks shards: `missing` are their positions in the stage's shard list."""

    def __init__(self, version: str, missing: list[int], total: int):
        super().__init__(f"{version}: {len(missing)} of its {total} shards are not finished")
        self.missing, self.total = missing, total


class CorruptShard(CrocoError):
    """A shard does not match its index entry; its version has been uncommitted so a rerun redoes it."""


class MissingVersion(CrocoError):
    """A version read as a unit's input is not committed: never finished, or deleted since."""


class Storage:
    def __init__(self, root: str, credentials_block: str | None = None, verify: str = "checksum"):
        if "@" in root.split("://", 1)[-1].split("/", 1)[0]:
            raise CrocoError(
                "storage.root must not hold credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile instead"
            )
        options = _block_credentials(credentials_block, root) if credentials_block else {}
        self.fs, path = fsspec.core.url_to_fs(root, **options)
        self.local = "file" in _protocols(self.fs)
        self.root = str(Path(path).resolve()) if self.local else path.rstrip("/")
        self.uri = self.root if self.local else f"{_protocols(self.fs)[0]}://{self.root}"
        self.verify = verify  # what a cache check compares: sizes, or every byte's checksum

    def version(self, stage: str, language: str, key: str, writing: bool = False) -> "Version":
        return Version(self, f"{self.root}/{stage}/{language}/{key}", writing)

    def version_at(self, relative: str) -> "Version":
        return Version(self, f"{self.root}/{relative}")

    def versions(self) -> list["Version"]:
        """Every version under the root, committed or not."""
        found = []
        for manifest_or_dir in self.fs.glob(f"{self.root}/*/*/*"):
            relative = manifest_or_dir[len(self.root) + 1 :]
            if not relative.startswith(("runs/", "reports/", "_")) and self.fs.isdir(manifest_or_dir):
                found.append(Version(self, manifest_or_dir))
        return found

    # Bytes ---------------------------------------------------------------------------------------

    def put(self, path: str, data: bytes) -> dict:
        """Write a whole object atomically (an S3 PUT is; a local file is written aside and renamed);
        the object's version id where the bucket keeps versions (recorded, never relied on)."""
        if self.local:
            self.fs.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
            return {}
        response = self.fs.pipe_file(path, data) or {}
        return {"version_id": response["VersionId"]} if response.get("VersionId") else {}

    def object_version(self, path: str) -> str | None:
        """The object version id of what is at `path` now, where the bucket keeps versions (one HEAD)."""
        return None if self.local else self.fs.info(path, refresh=True).get("VersionId")

    def uri_of(self, path: str) -> str:
        return path if self.local else f"{self.uri.split('://')[0]}://{path}"


def storage_of(cfg) -> Storage:
    """The storage a config names (its root, its credentials block if any, and how it is checked)."""
    return Storage(cfg.storage.root, cfg.storage.credentials_block, cfg.storage.verify)


def _block_credentials(name: str, root: str) -> dict[str, Any]:
    """s3fs options from a saved Prefect AwsCredentials block; they stay in memory, never in a file or log."""
    if not root.startswith("s3://"):
        raise CrocoError(f"storage.credentials_block is for an s3:// root, and storage.root is {root!r}")
    from prefect_aws import AwsCredentials

    try:
        block = AwsCredentials.load(name, _sync=True)
    except ValueError as error:
        raise CrocoError(
            f"storage.credentials_block: no AwsCredentials block named {name!r} on the Prefect server ({error})"
        ) from None
    if block.assume_role_arn:
        raise CrocoError(
            f"storage.credentials_block: block {name!r} assumes a role, which croco's s3fs storage does not do; use a profile instead"
        )
    secret = block.aws_secret_access_key
    options = {
        "key": block.aws_access_key_id,
        "secret": secret.get_secret_value() if secret else None,
        "token": block.aws_session_token,
        "profile": block.profile_name,
        "endpoint_url": block.aws_client_parameters.endpoint_url,
        "client_kwargs": {"region_name": block.region_name} if block.region_name else None,
    }
    return {option: value for option, value in options.items() if value}


def _parquet_bytes(table: pa.Table) -> bytes:
    """Parquet with LZ4 (decodes several times faster than Snappy at about the same size) and dictionary
    pages only for columns that repeat: ids, languages, prompts."""
    repeated = [
        f.name
        for f in table.schema
        if not (
            pa.types.is_string(f.type)
            and table.column(f.name).nbytes > DICTIONARY_MAX_AVERAGE_BYTES * max(table.num_rows, 1)
        )
    ]
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="lz4", use_dictionary=repeated)
    return buffer.getvalue()


def _protocols(fs) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


@dataclass
class Version:
    storage: Storage
    path: str
    # The unit that writes this version reads its finished shards before the commit (to resume); any other
    # reader gets committed data or a MissingVersion error, never a partial or empty table.
    writing: bool = False
    # Which shards this process does (see todo): all unfinished ones when None.
    share: Share | None = None
    # Shard uploads in flight (at most UPLOADS_IN_FLIGHT): the next shard is encoded meanwhile.
    _uploads: list[Future] = field(default_factory=list, init=False, repr=False, compare=False)
    # The digests of the inputs this unit's work is made from (see start).
    _made_from: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def relative(self) -> str:
        return self.path[len(self.storage.root) + 1 :]

    @property
    def uri(self) -> str:
        return self.storage.uri_of(self.path)

    @property
    def key(self) -> str:
        return self.path.rsplit("/", 1)[1]

    # State ---------------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.storage.fs.cat_file(f"{self.path}/{MANIFEST}"))
        except FileNotFoundError:
            return None

    def manifest_version_id(self) -> str | None:
        return self.storage.object_version(f"{self.path}/{MANIFEST}")

    def committed(self) -> bool:
        return self.storage.fs.exists(f"{self.path}/{MANIFEST}")

    def committed_manifest(self) -> dict[str, Any]:
        """The manifest of a version read as an input: it must be committed."""
        manifest = self.manifest()
        if manifest is None:
            raise MissingVersion(
                f"version {self.uri} is not committed (its unit has not finished, or the version was deleted, e.g. by `croco gc`); "
                "rerun the config to compute it again"
            )
        return manifest

    def problems(self) -> list[str]:
        """Why a committed version cannot be trusted: a shard or file missing or of another size than its manifest
        says (one listing), or, with `storage.verify: checksum`, one whose bytes changed (every file is read)."""
        self.storage.fs.invalidate_cache(self.path)  # another process may have written since the last listing
        manifest = self.manifest()
        if manifest is None:
            return ["not committed"]
        expected = {
            f"{part}/part-{name}.parquet": entry[part]
            for name, entry in manifest["shards"].items()
            for part in PARTS
            if entry[part]
        }
        # Manifests written before files had checksums hold only their sizes.
        expected |= {
            f"files/{name}": entry if isinstance(entry, dict) else {"bytes": entry}
            for name, entry in manifest.get("files", {}).items()
        }
        sizes = {
            p[len(self.path) + 1 :]: info["size"] for p, info in self.storage.fs.find(self.path, detail=True).items()
        }
        found, same_size = [], []
        for name, entry in expected.items():
            have = sizes.get(name)
            if have is None:
                found.append(f"{name} is missing")
            elif have != entry["bytes"]:
                found.append(f"{name} has {have} bytes, its manifest says {entry['bytes']}")
            elif "sha256" in entry:
                same_size.append(name)
        if self.storage.verify == "checksum":
            checksums = _TRANSFERS.map(lambda name: self._sha256(f"{self.path}/{name}"), same_size)
            found += [
                f"{name} has other bytes than its manifest says (sha256 differs)"
                for name, sha in zip(same_size, checksums)
                if sha != expected[name]["sha256"]
            ]
        return found + self.stale_inputs(manifest)

    def _sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with self.storage.fs.open(path, "rb") as handle:
            for block in iter(lambda: handle.read(HASH_BLOCK), b""):
                digest.update(block)
        return digest.hexdigest()

    def stale_inputs(self, manifest: dict[str, Any] | None = None) -> list[str]:
        """Inputs that are gone or hold other data than this version was made from (recomputed on another
        machine or engine, where sampling is not bit-for-bit reproducible)."""
        manifest = manifest or self.manifest() or {}
        found = []
        for read in manifest.get("lineage", {}).values():
            now = self.storage.version_at(read["version"]).manifest()
            if now is None or now["digest"] != read["digest"]:
                found.append(
                    f"its input {read['version']} has been {'removed' if now is None else 'recomputed with other data'} since"
                )
        return found

    def discard(self, reason: str) -> None:
        """Remove the whole version, finished shards included: they were made from data that is gone."""
        log.warning("%s: %s; it will be recomputed from scratch", self.relative, reason)
        self.remove()

    def remove(self) -> None:
        """Delete the version, its manifest first: a recursive delete (several batches on S3) that stops halfway
        leaves an uncommitted version, never a manifest over missing shards."""
        manifest = f"{self.path}/{MANIFEST}"
        if self.storage.fs.exists(manifest):
            self.storage.fs.rm(manifest)
        self.storage.fs.rm(self.path, recursive=True)

    def start(self, lineage: dict[str, dict]) -> None:
        """Before the unit's work: record the digests of its inputs. What an earlier, killed attempt made from other
        inputs (one recomputed since) is removed first, shards, files and this machine's work folder alike, so
        a resume never stitches new work onto old."""
        made_from = {unit_id: read["digest"] for unit_id, read in lineage.items()}
        fs = self.storage.fs
        fs.invalidate_cache(self.path)
        before = self._json(f"{self.path}/{STARTED}")
        earlier = [
            f"{self.path}/{part}"
            for part in ("index", *PARTS, "files", CHECKPOINTS)
            if fs.exists(f"{self.path}/{part}")
        ]
        if before != made_from and earlier:
            log.warning(
                "%s: its finished work was made from other data than its inputs (%s) hold now; discarding it and starting over",
                self.relative,
                ", ".join(made_from) or "none",
            )
            for folder in earlier:  # the index first: it is what marks a shard finished
                fs.rm(folder, recursive=True)
        work, marker = self._work_paths()
        if work.exists() and marker.exists() and json.loads(marker.read_text()) != made_from:
            log.warning("%s: the local work folder %s was made from other inputs; discarding it", self.relative, work)
            shutil.rmtree(work)
        self.storage.put(f"{self.path}/{STARTED}", json.dumps(made_from, sort_keys=True).encode())
        self._made_from = made_from

    def _json(self, path: str) -> Any:
        try:
            return json.loads(self.storage.fs.cat_file(path))
        except FileNotFoundError:
            return None

    def uncommit(self, reason: str) -> None:
        """Take back the commit marker so the stage runs again and redoes what is broken."""
        log.warning("%s: %s; it will be recomputed", self.relative, reason)
        self.storage.fs.rm(f"{self.path}/{MANIFEST}")

    # Shards --------------------------------------------------------------------------------------

    def finished_shards(self, verify: bool = True) -> dict[str, dict]:
        """Index entries of the finished shards; with `verify`, each shard is checked against its entry
        and a broken one (truncated, corrupt, missing) is removed and reported, so it is redone."""
        self.flush()
        fs = self.storage.fs
        fs.invalidate_cache(self.path)
        entries = {}
        for index_path in fs.glob(f"{self.path}/index/part-*.json"):
            name = index_path.rsplit("/", 1)[1].removeprefix("part-").removesuffix(".json")
            entry = json.loads(fs.cat_file(index_path))
            if not verify:
                entries[name] = entry
                continue
            broken = [
                part
                for part in PARTS
                if entry[part] and not self._matches(f"{self.path}/{part}/part-{name}.parquet", entry[part])
            ]
            if broken:
                log.warning(
                    "%s: shard %s does not match its index (%s); redoing it", self.relative, name, ", ".join(broken)
                )
                self.remove_shard(name)
                continue
            entries[name] = entry
        return entries

    @property
    def array_task(self) -> bool:
        """Whether this process does one share of the shards and leaves the commit to the flow."""
        return self.share is not None and self.share != COMMIT_ONLY

    def todo(self, names: list[str]) -> list[str]:
        """The shards this process is to do, of `names` (the stage's whole shard list, in order): the unfinished ones,
        only those of its share if it has one; with COMMIT_ONLY none, and ShardsMissing if any is unfinished."""
        finished = self.finished_shards()
        missing = [position for position, name in enumerate(names) if name not in finished]
        if self.share is None:
            return [names[p] for p in missing]
        if self.share == COMMIT_ONLY:
            if missing:
                raise ShardsMissing(self.relative, missing, len(names))
            return []
        return [names[p] for p in missing if p % self.share.count == self.share.index]

    def _matches(self, path: str, entry: dict) -> bool:
        try:
            return hashlib.sha256(self.storage.fs.cat_file(path)).hexdigest() == entry["sha256"]
        except FileNotFoundError:
            return False

    def write_shard(
        self,
        name: str,
        records: pa.Table | list[dict],
        schema: pa.Schema,
        skipped: list[dict] | None = None,
        skipped_schema: pa.Schema | None = None,
    ) -> None:
        """Encode one shard (its records, and its skipped records if there are any) and upload it in the
        background, then its index entry: the entry marks it finished. A few shards are in flight at most; an
        upload's error is raised here or at the next read, listing or commit."""
        blobs = {}
        for part, rows, part_schema in (
            ("data", records, schema),
            ("skipped", skipped or [], skipped_schema or SKIPPED),
        ):
            table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=part_schema)
            if part == "data" or table.num_rows:
                blobs[part] = (table.num_rows, _parquet_bytes(table))
        while len(self._uploads) >= UPLOADS_IN_FLIGHT:
            self._uploads.pop(0).result()
        self._uploads.append(_TRANSFERS.submit(self._put_shard, name, blobs))

    def _put_shard(self, name: str, blobs: dict[str, tuple[int, bytes]]) -> None:
        entry: dict[str, dict | None] = {"skipped": None}
        for part, (rows, data) in blobs.items():
            stored = self.storage.put(f"{self.path}/{part}/part-{name}.parquet", data)
            entry[part] = {"rows": rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **stored}
        self.storage.put(f"{self.path}/index/part-{name}.json", json.dumps(entry).encode())

    def flush(self) -> None:
        """Wait for the shard uploads in flight and raise the first error."""
        uploads, self._uploads = self._uploads, []
        for upload in uploads:
            upload.result()

    def remove_shard(self, name: str) -> None:
        for path in (
            f"{self.path}/index/part-{name}.json",
            f"{self.path}/data/part-{name}.parquet",
            f"{self.path}/skipped/part-{name}.parquet",
        ):
            if self.storage.fs.exists(path):
                self.storage.fs.rm(path)

    def _entries(self) -> dict[str, dict]:
        if self.writing:
            manifest = self.manifest()
            return manifest["shards"] if manifest is not None else self.finished_shards(verify=False)
        return self.committed_manifest()["shards"]

    def read(self, schema: pa.Schema, columns: list[str] | None = None, skipped: bool = False) -> pa.Table:
        """Every shard of a committed version (the writing unit's finished shards before that), each checked
        against its index entry; later shards download while earlier ones decode."""
        part = "skipped" if skipped else "data"
        shards = [(name, entry[part]) for name, entry in sorted(self._entries().items()) if entry[part]]
        downloads = [_TRANSFERS.submit(self._fetch, f"{self.path}/{part}/part-{name}.parquet") for name, _ in shards]
        tables = [
            self._decode(name, entry, part, download.result(), schema, columns)
            for (name, entry), download in zip(shards, downloads)
        ]
        if not tables:
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        return pa.concat_tables(tables)

    def read_shard(
        self, name: str, schema: pa.Schema, columns: list[str] | None = None, filters: list[tuple] | None = None
    ) -> pa.Table:
        """One finished shard; `filters` (pyarrow's DNF, e.g. [("prompt_id", "=", "p1")]) keeps only the rows wanted."""
        data = self._fetch(f"{self.path}/data/part-{name}.parquet")
        return self._decode(name, self._entries()[name]["data"], "data", data, schema, columns, filters)

    def shard_names(self) -> list[str]:
        return sorted(self._entries())

    def _fetch(self, path: str) -> bytes:
        try:
            return self.storage.fs.cat_file(path)
        except FileNotFoundError:
            return b""

    def _decode(
        self,
        name: str,
        entry: dict,
        part: str,
        data: bytes,
        schema: pa.Schema,
        columns: list[str] | None,
        filters: list[tuple] | None = None,
    ) -> pa.Table:
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            if not self.writing:
                self.committed_manifest()  # deleted while it was read: say so, rather than "corrupt"
            self.remove_shard(name)
            if self.committed():
                self.uncommit(f"shard {part}/part-{name}.parquet is missing or corrupt")
            raise CorruptShard(
                f"{self.uri}: shard {part}/part-{name}.parquet is missing or corrupt (sha256 differs from its index); it was removed, rerun to redo it"
            )
        return pq.read_table(pa.BufferReader(data), columns=columns, schema=schema, filters=filters)

    # Other files ---------------------------------------------------------------------------------

    def work_folder(self) -> Path:
        """A local folder for this version's work in progress (training checkpoints, EuroEval's files), one per
        storage root and version: a killed task resumes from it on the same machine, if it was made from the
        same inputs (the marker beside it says which; see start)."""
        folder, marker = self._work_paths()
        folder.mkdir(parents=True, exist_ok=True)
        if self._made_from is not None:
            write_atomic(marker, json.dumps(self._made_from, sort_keys=True).encode())
        return folder

    def _work_paths(self) -> tuple[Path, Path]:
        from croco.embedded import cache_dir

        folder = cache_dir() / "work" / stable_hash(self.storage.uri) / self.relative
        return folder, folder.with_name(f"{folder.name}.inputs.json")

    def put_file(self, name: str, data: bytes) -> str:
        path = f"{self.path}/files/{name}"
        self.storage.put(path, data)
        return path

    def put_folder(self, local: Path, name: str) -> None:
        """Upload a local folder (an adapter) into files/<name>."""
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            self.put_file(f"{name}/{file.relative_to(local).as_posix()}", file.read_bytes())

    def file_uri(self, name: str) -> str:
        return self.storage.uri_of(f"{self.path}/files/{name}")

    def local_folder(self, name: str, cache: Path) -> Path:
        """A local path to files/<name> of this committed version: the folder itself on local storage, else a
        copy downloaded once per content (the manifest's digest). Two processes may download at once: each into
        a name of its own, renamed into place; the later one uses the copy already there."""
        digest = self.committed_manifest()["digest"]
        if self.storage.local:
            return Path(f"{self.path}/files/{name}")
        target = cache / digest / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
            try:
                self.storage.fs.get(f"{self.path}/files/{name}/", str(partial) + "/", recursive=True)
                partial.rename(target)
            except OSError:
                if not target.exists():
                    raise
            finally:
                shutil.rmtree(partial, ignore_errors=True)  # a failed download's, or the later of two
        return target

    def file_sizes(self) -> dict[str, int]:
        found = self.storage.fs.find(f"{self.path}/files", detail=True)
        return {p[len(self.path) + len("/files/") :]: info["size"] for p, info in found.items()}

    def commit(self, report: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest, last: from now on the version is complete and immutable."""
        shards = self.finished_shards(verify=False)  # this task wrote or verified each of them
        sizes = self.file_sizes() if self.storage.fs.exists(f"{self.path}/files") else {}
        checksums = _TRANSFERS.map(
            lambda name: self._sha256(f"{self.path}/files/{name}"), sizes
        )  # what is stored, read back
        files = {name: {"bytes": size, "sha256": sha} for (name, size), sha in zip(sizes.items(), checksums)}
        file_versions = {name: self.storage.object_version(f"{self.path}/files/{name}") for name in files}
        manifest = {
            **report,
            "version": self.relative,
            "uri": self.uri,
            "shards": shards,
            "files": files,
            **({"file_version_ids": file_versions} if any(file_versions.values()) else {}),
            # What the data is, not only what asked for it: a later unit records the digests it read.
            "digest": stable_hash(
                [
                    {n: {p: e[p]["sha256"] for p in PARTS if e[p]} for n, e in shards.items()},
                    {n: e["sha256"] for n, e in files.items()},
                ]
            ),
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.storage.put(
            f"{self.path}/{MANIFEST}", json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
        )
        return manifest
