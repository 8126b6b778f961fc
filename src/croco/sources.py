"""Reading records from where users keep them: JSON/JSONL files, dataset folders, hub datasets.

Shared by the prompts stage and the arena stage; each checks the records' schema itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator

from croco.config import DataSource
from croco.embedded import resolve_data
from croco.errors import CrocoError
from croco.fileio import file_sha256, folder_sha256, read_text, text_lines

COMMIT = re.compile(r"[0-9a-f]{40}")


def read_source(source: DataSource, name: str | None = None) -> Iterator[tuple[str, Any]]:
    """(location, record) pairs; `location` names the file and line (or dataset and row) for error messages."""
    local = local_path(source)
    if local is None:
        yield from _read_hub(source, name or source.name)
    elif local.suffix == ".jsonl":
        for number, line in text_lines(local):
            if not line.strip():
                continue
            try:
                yield f"{local} line {number}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"{local} line {number}", Malformed(f"not valid JSON ({exc.msg} at column {exc.colno})")
    else:
        try:
            data = json.loads(read_text(local))
        except json.JSONDecodeError as exc:
            raise CrocoError(
                f"{local} is not valid JSON ({exc.msg} at line {exc.lineno}); use a list of records or JSONL"
            ) from None
        if not isinstance(data, list):
            raise CrocoError(f"{local} must hold a JSON list of records")
        for number, record in enumerate(data):
            yield f"{local} record {number}", record


class Malformed(str):
    """A line that is not JSON; validation reports it like any other invalid record."""


def local_path(source: DataSource) -> Path | None:
    embedded = resolve_data(source.path)
    if embedded is not None:
        return embedded
    path = Path(source.path)
    if path.suffix in {".json", ".jsonl"}:
        if not path.is_file():
            raise CrocoError(f"data file {path} does not exist (data.sources)")
        return path
    if path.is_file():
        raise CrocoError(
            f"data file {path} is neither .json nor .jsonl; convert it, or give its folder to load it through datasets"
        )
    return None  # a dataset id or a local dataset folder, both loaded by datasets


def _read_hub(source: DataSource, name: str | None) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_dataset(source.path, name=name, split=source.split, revision=revision_to_load(source))
    except Exception as exc:  # datasets raises many kinds; the user needs the id and the cause
        raise CrocoError(
            f"could not load dataset {source.path!r}{f' configuration {name!r}' if name else ''} split {source.split!r}: {exc}".replace(
                "\n", " "
            )
        ) from None
    for number, row in enumerate(dataset):
        yield f"dataset {source.path} row {number}", row


def fingerprint(source: DataSource, language: str, language_field: str) -> dict[str, Any]:
    """What of a source can change one language's prompts: for a file holding several languages, the
    records of that language and those no language can be read from (they stop or are rejected in every
    language), so adding another language's rows leaves this language's key as it is. A local file or folder
    is keyed by its content; where it lies is its `location` (in the manifest, not the key), so the same data
    moved or staged elsewhere keeps its key. A hub dataset is keyed by the commit its revision stands for."""
    local = local_path(source)
    if local is not None and source.language is not None:
        return {"location": source.path, "sha256": file_sha256(local)}
    if local is not None:
        digest = hashlib.sha256()
        for _, raw in read_source(source):
            tagged = raw.get(language_field) if isinstance(raw, dict) else None
            if tagged == language or not isinstance(tagged, str):
                digest.update(json.dumps(raw, sort_keys=True, ensure_ascii=False).encode() + b"\n")
        return {"location": source.path, "records_sha256": digest.hexdigest()}
    folder = Path(source.path)
    if folder.is_dir():
        return {"location": source.path, "sha256": folder_sha256(folder), "split": source.split, "name": source.name}
    commit = hub_commit(source.path, source.revision, "dataset")
    return {
        "dataset": source.path,
        "name": source.name,
        "split": source.split,
        "revision": source.revision,
        "commit": commit,
    }


def revision_to_load(source: DataSource) -> str | None:
    """What to load of a hub dataset: the commit its key recorded (see `hub_commit`), not a branch that may have moved."""
    if Path(source.path).is_dir():
        return source.revision
    return hub_commit(source.path, source.revision, "dataset") or source.revision


@functools.lru_cache(maxsize=None)
def hub_commit(repo_id: str, revision: str | None, repo_type: str) -> str | None:
    """The commit a hub repository's revision (None: its default branch) stands for now: asked of the hub, or
    offline (HF_HUB_OFFLINE) or when the hub does not answer, read from the local cache's refs; None when
    neither knows (the key then holds the revision as given). Asked once per process."""
    if revision and COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None  # not a hub id (a URL, a folder that is not there): nothing to resolve
    if not constants.HF_HUB_OFFLINE:
        try:
            return HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type).sha
        except Exception:  # no network, no such repository, no access: the cache may still know
            pass
    ref = (
        Path(constants.HF_HUB_CACHE)
        / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
        / "refs"
        / (revision or "main")
    )
    return ref.read_text().strip() if ref.is_file() else None
