"""Stage 0: the English conversations of the sources marked `translate`, translated into one language.

Its input is the English prompts version (`prompts/en`, loaded and subsampled as any language's); its output is
that language's prompts, as generate reads them: ids kept, `language` set, the English beside each message.
Every message is translated on its own, greedily (croco.translation), with any engine. A conversation with any
message whose translation prompt is longer than `translate.max_prompt_tokens` is skipped whole (`prompt_too_long`)
before the model is loaded. Conversations are cut into shards, so a killed unit resumes where it stopped, and each
language is its own unit: adding a language to a config translates only that one.

Each translated message records the language it is detected in and its length against the English
(croco.fidelity.translation_check). A conversation with a copy of the English, a message confidently in another
language or an extreme length ratio is flagged, or with `translate.on_bad: drop` skipped under that reason; the
manifest's `fidelity` gives the share of messages on target and the bad ones by kind.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from tqdm.auto import tqdm

from croco.caching import stage_task
from croco.config import CrocoConfig
from croco.engines import engine_identity, load_generator
from croco.errors import CrocoError
from croco.fidelity import translation_check, translation_fidelity
from croco.models import encode_chat, load_tokenizer, model_identity
from croco.plan import Unit
from croco.records import PROMPT, TRANSLATION
from croco.storage import Version
from croco.tasks import throughput
from croco.translation import SOURCE_LANGUAGE, prompt_format, translated_languages, translation_prompt
from croco.translation import translate as translate_all

log = logging.getLogger("croco")

NAME = "translate"
CODE_VERSION = "1"
LOADS_MODEL = True
PROMPT_TOO_LONG = "prompt_too_long"


def enabled(cfg: CrocoConfig) -> bool:
    return bool(translated_languages(cfg))


def units(cfg: CrocoConfig) -> list[tuple[str, None]]:
    return [(code, None) for code in translated_languages(cfg)]


def inputs(cfg: CrocoConfig, language: str, model: None) -> list[str]:
    return [f"prompts/{SOURCE_LANGUAGE}"]


def settings(cfg: CrocoConfig, language: str, model: None) -> dict[str, Any]:
    settings_ = cfg.translate
    translation_prompt("", SOURCE_LANGUAGE, language, settings_)  # a language the format cannot name stops the plan
    return {
        "language": language,
        "translator": model_identity(settings_.model),
        "engine": engine_identity(settings_.engine, settings_.model),
        "translate": settings_.model_dump(exclude={"model", "engine", "languages", "prompt_format"}),
        "prompt_format": prompt_format(settings_),
    }


def shard_name(index: int) -> str:
    return f"{index:05d}"


@stage_task
def translate(cfg: CrocoConfig, unit: Unit, out: Version, inputs: dict[str, Version]) -> dict[str, Any]:
    settings_ = cfg.translate
    english = inputs[f"prompts/{SOURCE_LANGUAGE}"].read(PROMPT).to_pylist()
    size = settings_.conversations_per_shard
    shards = [english[i : i + size] for i in range(0, len(english), size)]
    finished = out.finished_shards()
    todo = [i for i in range(len(shards)) if shard_name(i) not in finished]

    work_s, new_messages, new_tokens = 0.0, 0, 0
    if todo:
        too_long = _too_long(cfg, unit.language, [c for i in todo for c in shards[i]])  # before the model is loaded
        if too_long:
            log.warning(
                "%s: %d conversations have a message whose translation prompt is longer than %d tokens: skipped (%s)",
                unit.id,
                len(too_long),
                settings_.max_prompt_tokens,
                PROMPT_TOO_LONG,
            )
        fitting = {i: [c for c in shards[i] if c["prompt_id"] not in too_long] for i in todo}
        generator = load_generator(settings_.engine, settings_.model) if any(fitting.values()) else None
        total = sum(len(c["messages"]) for i in todo for c in fitting[i])
        with tqdm(total=total, unit="message", desc=f"translate {unit.language}", dynamic_ncols=True) as bar:
            for index in todo:
                started = time.perf_counter()
                translated = _translate_shard(generator, fitting[index], unit.language, cfg, bar.update)
                work_s += time.perf_counter() - started
                dropped = settings_.on_bad == "drop"
                kept = [r for r in translated if not (dropped and r["flag"])]
                skipped = [too_long[c["prompt_id"]] for c in shards[index] if c["prompt_id"] in too_long]
                skipped += [r for r in translated if dropped and r["flag"]]
                out.write_shard(shard_name(index), kept, TRANSLATION, skipped, TRANSLATION)
                new_messages += sum(len(r["checks"]) for r in translated)
                new_tokens += sum(check["completion_tokens"] or 0 for r in translated for check in r["checks"])

    columns = ["checks", "flag"]
    written = out.read(TRANSLATION, columns=columns).to_pylist()
    skipped = out.read(TRANSLATION, columns=columns, skipped=True).to_pylist()
    if not written:
        raise CrocoError(
            f"no English conversation was translated into {unit.language!r} and kept: of {len(english)}, "
            f"{dict(Counter(r['flag'] for r in skipped))} (each one is in the skipped records of {out.uri}); "
            "raise translate.max_prompt_tokens, or set translate.on_bad: flag to keep bad translations"
        )
    translated = written + [r for r in skipped if r["flag"] != PROMPT_TOO_LONG]
    return {
        "records_in": len(english),
        "records_out": len(written),
        "messages_translated_now": new_messages,
        "skipped": dict(Counter(r["flag"] for r in skipped)),
        "shards": len(shards),
        "shards_resumed": len(shards) - len(todo),
        "finish_reasons": dict(Counter(c["finish_reason"] for r in translated for c in r["checks"])),
        "throughput": throughput(new_messages, new_tokens, work_s),
        "fidelity": translation_fidelity(
            unit.language, [c for r in translated for c in r["checks"]], [r["flag"] for r in translated]
        ),
    }


def _too_long(cfg: CrocoConfig, language: str, conversations: list[dict]) -> dict[str, dict]:
    """The skipped records of the conversations with a message whose translation prompt, in the translator's chat
    template, is longer than `translate.max_prompt_tokens`, by prompt id."""
    settings_ = cfg.translate
    tokenizer = load_tokenizer(settings_.model)
    found = {}
    for conversation in conversations:
        longest = max(
            len(
                encode_chat(
                    tokenizer,
                    translation_prompt(m["content"], SOURCE_LANGUAGE, language, settings_),
                    True,
                    settings_.model.chat_template_kwargs,
                )
            )
            for m in conversation["messages"]
        )
        if longest > settings_.max_prompt_tokens:
            found[conversation["prompt_id"]] = _record(
                conversation,
                language,
                [],
                [],
                PROMPT_TOO_LONG,
                f"{longest} tokens; at most {settings_.max_prompt_tokens} fit",
            )
    return found


def _translate_shard(generator, conversations: list[dict], language: str, cfg: CrocoConfig, progress) -> list[dict]:
    """Every message of every conversation translated on its own, in one batch; each conversation with its checks
    and its first problem as `flag`."""
    settings_ = cfg.translate
    texts = [m["content"] for c in conversations for m in c["messages"]]
    completions = iter(translate_all(generator, texts, SOURCE_LANGUAGE, language, settings_, progress) if texts else [])
    records = []
    for conversation in conversations:
        messages, checks = [], []
        for message, completion in zip(conversation["messages"], completions):
            messages.append({"role": message["role"], "content": completion.text})
            check = translation_check(
                message["content"], completion.text, language, settings_.min_length_ratio, settings_.max_length_ratio
            )
            checks.append(
                check | {"finish_reason": completion.finish_reason, "completion_tokens": completion.completion_tokens}
            )
        flag = next((c["problem"] for c in checks if c["problem"]), None)
        records.append(_record(conversation, language, messages, checks, flag, None))
    return records


def _record(conversation: dict, language: str, messages: list[dict], checks: list[dict], flag, detail) -> dict:
    return {
        "prompt_id": conversation["prompt_id"],
        "language": language,
        "messages": messages,
        "source": conversation["source"],
        "english": conversation["messages"],
        "checks": checks,
        "flag": flag,
        "detail": detail,
    }
