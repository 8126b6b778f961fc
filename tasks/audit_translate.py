"""Reward audit, step 1: the English preference pairs (`audit.pairs`) translated into one language.

The prompt and both answers of every pair are translated on their own, as the translate stage translates a
message (croco.translation: `translate.model`, or the policy in a config that translates nothing, on
`translate.engine`, greedily, up to `translate.max_new_tokens`, in its prompt format); the English stays beside
each record, and English itself is copied, never translated. Each translated answer records the language it was
detected in: the manifest's `fidelity` says how many translations are in the language (a bad translator makes
the audit measure the translator, not the reward model). A unit per language, shards of `PAIRS_PER_SHARD` pairs,
so a crash resumes; a new language, or another reward model, leaves the finished translations as they are.
"""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm

from croco.audit import PreferencePair, pairs_fingerprint, read_pairs
from croco.caching import stage_task
from croco.config import CrocoConfig, ModelConfig, TranslateConfig
from croco.engines import Completion, engine_identity, load_generator
from croco.fidelity import detected, fidelity
from croco.models import model_identity
from croco.plan import Unit
from croco.records import AUDIT_PAIR, AUDIT_SKIPPED
from croco.storage import Version
from croco.tasks import always, throughput, with_english
from croco.translation import SOURCE_LANGUAGE, prompt_format, translate, translation_prompt

NAME = "audit_translate"
CODE_VERSION = "1"
LOADS_MODEL = True
PAIRS_PER_SHARD = 32

enabled = always
units = with_english


def inputs(cfg: CrocoConfig, language: str, model: None) -> list[str]:
    return []


def translator(cfg: CrocoConfig) -> ModelConfig:
    """The translate stage's model, or the policy in a config that translates nothing."""
    return cfg.translate.model or cfg.models.policy


def translation_settings(cfg: CrocoConfig) -> TranslateConfig:
    """The translate stage's settings, with its translator."""
    return cfg.translate.model_copy(update={"model": translator(cfg)})


def settings(cfg: CrocoConfig, language: str, model: None) -> dict[str, Any]:
    found = {"language": language, "pairs": pairs_fingerprint(cfg.audit.source), "limit": cfg.audit.limit}
    if language == SOURCE_LANGUAGE:
        return found
    translation_prompt("", SOURCE_LANGUAGE, language, translation_settings(cfg))  # a language the format cannot name
    return found | {
        "translator": model_identity(translator(cfg)),
        "engine": engine_identity(cfg.translate.engine, translator(cfg)),
        "prompt_format": prompt_format(translation_settings(cfg)),
        "max_new_tokens": cfg.translate.max_new_tokens,
    }


@stage_task
def audit_translate(cfg: CrocoConfig, unit: Unit, out: Version, inputs: dict[str, Version]) -> dict[str, Any]:
    pairs = read_pairs(cfg.audit.source, cfg.audit.limit)
    shards = [pairs[i : i + PAIRS_PER_SHARD] for i in range(0, len(pairs), PAIRS_PER_SHARD)]
    finished = out.finished_shards()
    todo = [i for i in range(len(shards)) if f"{i:05d}" not in finished]

    work_s, translated, tokens = 0.0, 0, 0
    if todo:
        english = unit.language == SOURCE_LANGUAGE
        generator = None if english else load_generator(cfg.translate.engine, translator(cfg))
        total = 3 * sum(len(shards[i]) for i in todo)
        with tqdm(total=total, unit="text", desc=f"audit translate {unit.language}", dynamic_ncols=True) as bar:
            for index in todo:
                started = time.perf_counter()
                texts = [text for pair in shards[index] for text in (pair.prompt, pair.chosen, pair.rejected)]
                if english:
                    found = [Completion(text, "stop", None, None) for text in texts]
                    bar.update(len(texts))
                else:
                    found = translate(
                        generator, texts, SOURCE_LANGUAGE, unit.language, translation_settings(cfg), bar.update
                    )
                    translated += len(texts)
                    tokens += sum(c.completion_tokens or 0 for c in found)
                work_s += time.perf_counter() - started
                records = [
                    _record(pair, unit.language, found[3 * i : 3 * i + 3]) for i, pair in enumerate(shards[index])
                ]
                out.write_shard(f"{index:05d}", records, AUDIT_PAIR, [], AUDIT_SKIPPED)

    written = out.read(AUDIT_PAIR).to_pylist()
    answers = [detected(r[side], unit.language) for r in written for side in ("chosen", "rejected")]
    cut_off = sum(r["cut_off"] for r in written)
    return {
        "records_in": len(pairs),
        "records_out": len(written),
        "skipped": {},
        "cut_off": cut_off,
        "warnings": [f"{cut_off} pairs have a translation cut off at translate.max_new_tokens"] if cut_off else [],
        "throughput": throughput(translated, tokens, work_s),
        "fidelity": fidelity(
            unit.language, [a["detected_language"] for a in answers], [a["line_pass_rate"] for a in answers]
        ),
    }


def _record(pair: PreferencePair, language: str, translations: list[Completion]) -> dict[str, Any]:
    prompt, chosen, rejected = (c.text.strip() for c in translations)
    return {
        "pair_id": pair.pair_id,
        "language": language,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "prompt_en": pair.prompt,
        "chosen_en": pair.chosen,
        "rejected_en": pair.rejected,
        "cut_off": any(c.finish_reason == "length" for c in translations),
    }
