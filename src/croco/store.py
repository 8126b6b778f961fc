"""The run store: one folder per run, one sub-folder per stage.

    RUN_DIR/<stage>/manifest.json     what the stage was asked to do (its key) and what it did
    RUN_DIR/<stage>/data/part-*.parquet       the stage's records, one shard per unit of work
    RUN_DIR/<stage>/skipped/part-*.parquet    samples it could not process, with reasons

A shard is written under a temporary name and renamed when complete, so a killed stage
never leaves a partial shard that looks finished; on restart it redoes only the units
whose data shard is missing. The key is a hash of every setting that shapes the stage's
output (and of the upstream stage's key): a stage whose stored key differs is wiped and redone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from croco.fileio import write_atomic


class StageStore:
    def __init__(self, run_dir: Path, name: str):
        self.name = name
        self.path = Path(run_dir) / name
        self.data_dir = self.path / "data"
        self.skipped_dir = self.path / "skipped"
        self.manifest_path = self.path / "manifest.json"

    def manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text())

    def is_complete(self, key: str) -> bool:
        manifest = self.manifest()
        return bool(manifest) and manifest["key"] == key and manifest["status"] == "complete"

    def open(self, key: str, settings: dict[str, Any], keep_data: bool = False) -> None:
        """Start or resume the stage under `key`; output made under another key is removed first, unless
        `keep_data` says the stage names its shards by content and clears stale ones itself."""
        manifest = self.manifest()
        if manifest is not None and manifest["key"] != key and not keep_data:
            self.wipe()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.skipped_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.path.rglob("*.tmp"):
            leftover.unlink()
        if manifest is None or manifest["key"] != key:
            self._write_manifest({"stage": self.name, "key": key, "status": "running", "settings": settings})

    def wipe(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def shard_name(self, index: int | str) -> str:
        return f"part-{index:05d}.parquet" if isinstance(index, int) else f"part-{index}.parquet"

    def has_shard(self, index: int | str) -> bool:
        return (self.data_dir / self.shard_name(index)).exists()

    def write_shard(self, index: int | str, records: list[dict], schema: pa.Schema, skipped: list[dict], skipped_schema: pa.Schema) -> None:
        # The data shard is renamed last: its presence is what marks the unit as done.
        self._write_table(self.skipped_dir / self.shard_name(index), skipped, skipped_schema)
        self._write_table(self.data_dir / self.shard_name(index), records, schema)

    def write_table(self, name: str, records: list[dict], schema: pa.Schema) -> Path:
        """A whole-stage output file, `<stage>/<name>.parquet`, for stages that finish in one go."""
        path = self.path / f"{name}.parquet"
        self._write_table(path, records, schema)
        return path

    def read(self, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
        return self._read_dir(self.data_dir, schema, columns)

    def read_skipped(self, schema: pa.Schema) -> pa.Table:
        return self._read_dir(self.skipped_dir, schema, None)

    def shard_indices(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.data_dir.glob("part-*.parquet") if p.stem.split("-")[1].isdigit())

    def shard_names(self) -> list[str]:
        return sorted(p.stem.removeprefix("part-") for p in self.data_dir.glob("part-*.parquet"))

    def remove_shard(self, name: int | str) -> None:
        for folder in (self.data_dir, self.skipped_dir):
            (folder / self.shard_name(name)).unlink(missing_ok=True)

    def read_shard(self, index: int | str, schema: pa.Schema) -> pa.Table:
        return pq.read_table(self.data_dir / self.shard_name(index), schema=schema)

    def finish(self, report: dict[str, Any]) -> dict[str, Any]:
        manifest = {**(self.manifest() or {}), **report, "status": "complete", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._write_manifest(manifest)
        return manifest

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())

    @staticmethod
    def _write_table(path: Path, records: list[dict], schema: pa.Schema) -> None:
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(pa.Table.from_pylist(records, schema=schema), tmp)
        os.replace(tmp, path)

    @staticmethod
    def _read_dir(folder: Path, schema: pa.Schema, columns: list[str] | None) -> pa.Table:
        paths = sorted(folder.glob("part-*.parquet"))
        if not paths:
            table = schema.empty_table()
            return table.select(columns) if columns else table
        return pa.concat_tables(pq.read_table(p, columns=columns, schema=schema) for p in paths)
