"""Stage: load the prompts (local JSON/JSONL or a Hugging Face dataset) into prompt records.

Each record needs a stable prompt id (shared by all translations of one conversation), a
language and a `messages` list with at least one user turn. A record that breaks a rule
stops the run with its file and line, or, with `data.on_invalid: reject`, is written to
rejects.jsonl with its reason and counted. Records in languages the run does not select
are counted, not kept.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from typing import Any

from croco.config import CrocoConfig, DataSource
from croco.errors import CrocoError
from croco.languages import LANGUAGES
from croco.records import PROMPT, SKIPPED
from croco.sources import Malformed, fingerprint, read_source
from croco.store import StageStore

log = logging.getLogger("croco")

NAME = "prompts"
INPUT = None
ROLES = {"system", "user", "assistant"}
REJECTS_FILE = "rejects.jsonl"


class InvalidRecord(Exception):
    pass


def settings(cfg: CrocoConfig) -> dict[str, Any]:
    return {
        "data": cfg.data.model_dump(),
        "languages": cfg.languages,
        "seed": cfg.seed,
        "inputs": [fingerprint(source) for source in cfg.data.sources],
    }


def run(cfg: CrocoConfig, out: StageStore, upstream: StageStore | None) -> dict[str, Any]:
    kept: dict[tuple[str, str], dict] = {}
    rejects: list[dict] = []
    skipped: Counter[str] = Counter()
    records_in = 0
    for source in cfg.data.sources:
        for location, raw in read_source(source):
            records_in += 1
            try:
                record = _validate(raw, source, cfg, location)
                if record["language"] not in cfg.languages:
                    skipped["language_not_selected"] += 1
                    continue
                key = (record["prompt_id"], record["language"])
                if key in kept:
                    raise InvalidRecord(f"duplicate prompt id {key[0]!r} in language {key[1]!r} (first seen at {kept[key]['source']})")
            except InvalidRecord as problem:
                if cfg.data.on_invalid == "error":
                    raise CrocoError(f"{location}: {problem}; fix the record or set data.on_invalid: reject to set such records aside") from None
                rejects.append({"location": location, "reason": str(problem), "record": raw if isinstance(raw, (dict, list)) else str(raw)})
                skipped["invalid_record"] += 1
                continue
            kept[key] = record

    records = _subsample(list(kept.values()), cfg.data.subsample, cfg.seed, skipped)
    missing = [code for code in cfg.languages if not any(r["language"] == code for r in records)]
    if missing and records:
        log.warning("prompts: no prompts for %s in %s", ", ".join(missing), ", ".join(s.path for s in cfg.data.sources))
    if not records:
        raise CrocoError(f"no prompts left in {', '.join(s.path for s in cfg.data.sources)} for languages {', '.join(cfg.languages)}")
    order = {code: i for i, code in enumerate(cfg.languages)}
    records.sort(key=lambda r: (order[r["language"]], r["prompt_id"]))
    (out.path / REJECTS_FILE).write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rejects), encoding="utf-8")
    out.write_shard(0, records, PROMPT, [], SKIPPED)
    return {
        "records_in": records_in,
        "records_out": len(records),
        "skipped": dict(skipped),
        "per_language": dict(Counter(r["language"] for r in records)),
        "languages_without_prompts": missing,
    }


def _subsample(records: list[dict], size: int | None, seed: int, skipped: Counter[str]) -> list[dict]:
    ids = sorted({r["prompt_id"] for r in records})
    if size is None or size >= len(ids):
        return records
    chosen = set(random.Random(seed).sample(ids, size))
    kept = [r for r in records if r["prompt_id"] in chosen]
    skipped["not_in_subsample"] += len(records) - len(kept)
    return kept


def _validate(raw: Any, source: DataSource, cfg: CrocoConfig, location: str) -> dict:
    if isinstance(raw, Malformed):
        raise InvalidRecord(raw)
    if not isinstance(raw, dict):
        raise InvalidRecord(f"a record must be a JSON object, got {type(raw).__name__}")
    prompt_id = raw.get(cfg.data.id_field)
    if isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int)) or str(prompt_id).strip() == "":
        raise InvalidRecord(f"missing or empty prompt id field {cfg.data.id_field!r} (set data.id_field if your data names it otherwise)")
    language = source.language or raw.get(cfg.data.language_field)
    if not isinstance(language, str) or not language:
        raise InvalidRecord(f"no language: the record has no {cfg.data.language_field!r} field and the source sets no language")
    if language not in LANGUAGES:
        raise InvalidRecord(f"unknown language code {language!r}")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRecord("missing or empty 'messages' list")
    for turn, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidRecord(f"message {turn} needs a role of {', '.join(sorted(ROLES))}")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise InvalidRecord(f"message {turn} has empty or non-string content")
    if not any(m["role"] == "user" for m in messages):
        raise InvalidRecord("no user message")
    return {
        "prompt_id": str(prompt_id),
        "language": language,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "source": location,
    }
