"""Stage: load the prompts of one language (local JSON/JSONL or a Hugging Face dataset).

Each record needs a stable prompt id (shared by all translations of one conversation), a
language and a `messages` list with at least one user turn. A record that breaks a rule
stops the run with its file and line, or, with `data.on_invalid: reject`, is written to
files/rejects.jsonl with its reason and counted. A unit reads only the sources that can hold
its language (those with its `language`, or with none; a source marked `translate` only English, which a run
that translates loads even when English is not one of its languages), so adding a language or a source
for another language leaves this language's version as it is; records of other languages
are counted, not kept.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from croco.caching import stage_task
from croco.config import CrocoConfig, DataSource
from croco.errors import CrocoError
from croco.fileio import stable_hash
from croco.languages import LANGUAGES
from croco.plan import Unit
from croco.records import PROMPT
from croco.sources import Malformed, fingerprint, read_source
from croco.storage import Version
from croco.tasks import always
from croco.translation import SOURCE_LANGUAGE, translated_languages

log = logging.getLogger("croco")

NAME = "prompts"
CODE_VERSION = "2"  # 2: a `messages` that is not a list has its own reject reason
LOADS_MODEL = False
ROLES = {"system", "user", "assistant"}
REJECTS_FILE = "rejects.jsonl"

enabled = always


def units(cfg: CrocoConfig) -> list[tuple[str, None]]:
    """The run's languages that are not translated, and English where any is: the translations' source."""
    translated = translated_languages(cfg)
    loaded = [code for code in cfg.languages if code not in translated]
    return [
        (code, None) for code in loaded + ([SOURCE_LANGUAGE] if translated and SOURCE_LANGUAGE not in loaded else [])
    ]


class InvalidRecord(Exception):
    pass


def inputs(cfg: CrocoConfig, language: str, model: None) -> list[str]:
    return []


def sources_for(cfg: CrocoConfig, language: str) -> list[DataSource]:
    """The sources that can hold `language`'s records; those marked `translate` hold English only."""
    return [
        source
        for source in cfg.data.sources
        if source.language in (None, language) and (language == SOURCE_LANGUAGE or not source.translate)
    ]


def settings(cfg: CrocoConfig, language: str, model: None) -> dict[str, Any]:
    sources = sources_for(cfg, language)
    return {
        "language": language,
        "sources": [
            source.model_dump(exclude={"path", "translate"}) for source in sources
        ],  # each one's path or id is in its fingerprint; `translate` says who else reads it, not what it holds
        "data": cfg.data.model_dump(exclude={"sources"}),
        "seed": cfg.seed,
        "inputs": [fingerprint(source, language, cfg.data.language_field) for source in sources],
    }


@stage_task
def prompts(cfg: CrocoConfig, unit: Unit, out: Version, inputs: dict[str, Version]) -> dict[str, Any]:
    kept: dict[str, dict] = {}
    rejects: list[dict] = []
    skipped: Counter[str] = Counter()
    records_in = 0
    for source in sources_for(cfg, unit.language):
        for location, raw in read_source(source):
            records_in += 1
            try:
                record = _validate(raw, source, cfg, location)
                if record["language"] != unit.language:
                    skipped["other_language"] += 1
                    continue
                key = record["prompt_id"]
                if key in kept:
                    raise InvalidRecord(
                        f"duplicate prompt id {key!r} in language {unit.language!r} (first seen at {kept[key]['source']})"
                    )
            except InvalidRecord as problem:
                if cfg.data.on_invalid == "error":
                    raise CrocoError(
                        f"{location}: {problem}; fix the record or set data.on_invalid: reject to set such records aside"
                    ) from None
                rejects.append(
                    {
                        "location": location,
                        "reason": str(problem),
                        "record": raw if isinstance(raw, (dict, list)) else str(raw),
                    }
                )
                skipped["invalid_record"] += 1
                continue
            kept[key] = record

    records = sorted(
        _subsample(list(kept.values()), cfg.data.subsample, cfg.seed, skipped), key=lambda r: r["prompt_id"]
    )
    # Written before the check below: when every record was rejected, their reasons are what the user needs.
    out.put_file(REJECTS_FILE, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rejects).encode())
    if not records:
        paths = (
            ", ".join(s.path for s in sources_for(cfg, unit.language))
            or "no source (every data.sources entry names another language)"
        )
        if rejects:
            first = rejects[0]
            raise CrocoError(
                f"no valid prompts in language {unit.language!r} in {paths}: {len(rejects)} rejected, the first at {first['location']}: "
                f"{first['reason']}; fix the records (every reason is in {out.file_uri(REJECTS_FILE)})"
            )
        raise CrocoError(
            f"no prompts in language {unit.language!r} in {paths}; add a source for it or remove it from languages"
        )
    out.write_shard("00000", records, PROMPT)
    return {"records_in": records_in, "records_out": len(records), "skipped": dict(skipped)}


def _subsample(records: list[dict], size: int | None, seed: int, skipped: Counter[str]) -> list[dict]:
    """The `size` prompt ids that rank first by a seeded hash of the id: every language of a parallel
    set keeps the same ids, whichever other languages the run has."""
    if size is None or size >= len(records):
        return records
    kept = sorted(records, key=lambda r: stable_hash([seed, r["prompt_id"]]))[:size]
    skipped["not_in_subsample"] += len(records) - len(kept)
    return kept


def _validate(raw: Any, source: DataSource, cfg: CrocoConfig, location: str) -> dict:
    if isinstance(raw, Malformed):
        raise InvalidRecord(raw)
    if not isinstance(raw, dict):
        raise InvalidRecord(f"a record must be a JSON object, got {type(raw).__name__}")
    prompt_id = raw.get(cfg.data.id_field)
    if isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int)) or str(prompt_id).strip() == "":
        raise InvalidRecord(
            f"missing or empty prompt id field {cfg.data.id_field!r} (set data.id_field if your data names it otherwise)"
        )
    language = source.language or raw.get(cfg.data.language_field)
    if not isinstance(language, str) or not language:
        raise InvalidRecord(
            f"no language: the record has no {cfg.data.language_field!r} field and the source sets no language"
        )
    if language not in LANGUAGES:
        raise InvalidRecord(f"unknown language code {language!r}")
    messages = raw.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise InvalidRecord(f"'messages' must be a list of {{role, content}} objects, got {type(messages).__name__}")
    if not messages:
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
