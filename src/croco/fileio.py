"""Small file helpers: reading users' text files, hashes, atomic writes (no heavy imports here)."""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

from croco.errors import CrocoError


def decode_text(data: bytes, name: str, line: int = 1, offset: int = 0) -> str:
    """A user's text file (or its line `line`, at byte `offset`) as UTF-8, with or without the BOM Windows editors
    write; any other encoding is an error naming the file, line and byte offset, never a traceback."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        at = exc.start + (
            len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
        )  # utf-8-sig counts after the BOM
        line += data.count(b"\n", 0, at)
        raise CrocoError(
            f"{name} line {line} is not UTF-8 (byte offset {offset + at}); save the file as UTF-8"
        ) from None


def read_text(path: Path | str) -> str:
    return decode_text(Path(path).read_bytes(), str(path))


def text_lines(path: Path | str) -> Iterator[tuple[int, str]]:
    """(line number, text with its line end) of each line of a UTF-8 text file, read as a stream."""
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, decode_text(raw, str(path), number, offset)
            offset += len(raw)


def stable_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # one per write: two threads never share it
    tmp.write_bytes(data)
    os.replace(tmp, path)


_MEMO_GUARD = threading.Lock()  # units running in threads read and rewrite one memo file


def _read_memo(memo_path: Path) -> dict[str, str]:
    try:
        return json.loads(memo_path.read_text())
    except FileNotFoundError:
        return {}


def folder_sha256(folder: Path) -> str:
    """A digest of every file in a folder (names and contents), each file's hash remembered (`remembered_sha256`)."""
    files = sorted(
        p
        for p in Path(folder).rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    hashes = remembered_sha256(files)
    return stable_hash([[path.relative_to(folder).as_posix(), hashes[path]] for path in files])


def remembered_sha256(paths: list[Path]) -> dict[Path, str]:
    """The sha256 of each file, remembered by path, size and modification time in the croco cache, so a 9B model's
    18 GB (or a cluster image) are read once, not at every plan or job."""
    from croco.embedded import cache_dir

    memo_path = cache_dir() / "file-hashes.json"
    with _MEMO_GUARD:
        memo = _read_memo(memo_path)
    found, hashes = {}, {}
    for path in paths:
        stat = path.stat()
        stamp = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if stamp not in memo:
            found[stamp] = memo[stamp] = file_sha256(path)
        hashes[path] = memo[stamp]
    if found:  # added to the memo as it is now: what another thread or process added meanwhile stays
        with _MEMO_GUARD:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(memo_path, json.dumps({**_read_memo(memo_path), **found}).encode())
    return hashes
