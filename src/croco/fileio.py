"""Small file helpers shared by the run store and the migration (no heavy imports here)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def stable_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: two writers never share it
    tmp.write_bytes(data)
    os.replace(tmp, path)


def folder_sha256(folder: Path) -> str:
    """A digest of every file in a folder (names and contents). File hashes are remembered by path, size and
    modification time in the croco cache, so a 9B model's 18 GB are read once, not at every plan."""
    from croco.embedded import cache_dir

    memo_path = cache_dir() / "file-hashes.json"
    memo = json.loads(memo_path.read_text()) if memo_path.exists() else {}
    parts = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)):
        stat = path.stat()
        stamp = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if stamp not in memo:
            memo[stamp] = file_sha256(path)
        parts.append([path.relative_to(folder).as_posix(), memo[stamp]])
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(memo_path, json.dumps(memo).encode())
    return stable_hash(parts)
