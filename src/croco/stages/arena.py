"""Stage 6: every evaluated model answers the m-ArenaHard prompts, one answer per question.

The prompts come from CohereLabs/m-ArenaHard-v2.1 (one dataset configuration per language)
or a local file in its schema. A unit of work is one model in one language; its shard is
named by a hash of the model, the sampling settings and the questions, so retraining one
adapter redoes only that adapter's answers. Reasoning traces (`<think>...</think>`, or a
server's separate reasoning field) are kept apart from the answer that gets judged.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from croco.config import CrocoConfig
from croco.contestants import contestants, identity, run_adapters
from croco.engines import SamplingParams, load_generator
from croco.errors import CrocoError
from croco.fileio import stable_hash
from croco.languages import LANGUAGES
from croco.records import ARENA_ANSWER, SKIPPED
from croco.sources import local_path, read_source
from croco.stages import throughput
from croco.store import StageStore

log = logging.getLogger("croco")

NAME = "arena"
INPUT = None
KEEPS_SHARDS = True
ANSWERS_DIR = "answers"  # answers/<model>/<language>.jsonl, in the original code's output format
REQUIRED = ("question_id", "prompt")


def enabled(cfg: CrocoConfig) -> bool:
    return cfg.arena.enabled


def requires(cfg: CrocoConfig) -> list[str]:
    return run_adapters(cfg)


def settings(cfg: CrocoConfig) -> dict[str, Any]:
    return {"units": sorted(_units(cfg, load_questions(cfg)))}


def load_questions(cfg: CrocoConfig) -> list[dict]:
    """The arena questions of the run's languages, checked, with croco language codes."""
    source = cfg.arena.prompts
    wanted = {LANGUAGES[code].arena_code: code for code in cfg.languages if LANGUAGES[code].arena_code}
    if local_path(source) is not None:
        rows = [(location, raw, None) for location, raw in read_source(source)]
    else:
        rows = [(location, raw, code) for arena_code, code in wanted.items() for location, raw in read_source(source, name=source.name or arena_code)]
    questions: dict[tuple[str, str], dict] = {}
    for location, raw, language in rows:
        question = _check(raw, location, language, wanted)
        if question is None:
            continue
        key = (question["language"], question["question_id"])
        if key in questions:
            raise CrocoError(f"{location}: question {key[1]!r} appears twice in language {key[0]!r}")
        questions[key] = question
    if not questions:
        raise CrocoError(f"arena prompts {source.path} hold no questions in {', '.join(cfg.languages)}")
    return _subsample(list(questions.values()), cfg.arena.per_language, cfg.seed)


def _check(raw: Any, location: str, language: str | None, wanted: dict[str, str]) -> dict | None:
    if not isinstance(raw, dict):
        raise CrocoError(f"{location}: an arena question must be a JSON object")
    for field in REQUIRED:
        if not isinstance(raw.get(field), (str, int)) or str(raw[field]).strip() == "":
            raise CrocoError(f"{location}: missing or empty field {field!r} (arena prompts need question_id, prompt, category, subcategory, language)")
    if language is None:
        code = raw.get("language")
        if not isinstance(code, str):
            raise CrocoError(f"{location}: missing field 'language'")
        if code not in wanted and code not in wanted.values():
            return None  # a language this run does not evaluate
        language = wanted.get(code, code)
    return {
        "language": language,
        "question_id": str(raw["question_id"]),
        "prompt": str(raw["prompt"]),
        "category": str(raw.get("category") or ""),
        "subcategory": str(raw.get("subcategory") or raw.get("category") or ""),
    }


def _subsample(questions: list[dict], per_language: int | None, seed: int) -> list[dict]:
    ids = sorted({q["question_id"] for q in questions})
    if per_language is not None and per_language < len(ids):
        chosen = set(random.Random(seed).sample(ids, per_language))
        questions = [q for q in questions if q["question_id"] in chosen]
    return sorted(questions, key=lambda q: (q["language"], q["question_id"]))


def _units(cfg: CrocoConfig, questions: list[dict]) -> dict[str, tuple[str, str]]:
    """Shard name -> (model, language); the name changes whenever the answers would."""
    sampling = {key: getattr(cfg.arena, key) for key in ("max_new_tokens", "temperature", "top_p")}
    units = {}
    for name, model in contestants(cfg).items():
        who = identity(cfg, name, model, cfg.arena.engine)
        for language in cfg.languages:
            asked = [(q["question_id"], q["prompt"]) for q in questions if q["language"] == language]
            if asked:
                digest = stable_hash({"model": who, "sampling": sampling, "seed": cfg.seed, "questions": asked})[:12]
                units[f"{name}-{language}-{digest}"] = (name, language)
    return units


def run(cfg: CrocoConfig, out: StageStore, upstream: StageStore | None) -> dict[str, Any]:
    questions = load_questions(cfg)
    unanswered = [code for code in cfg.languages if not any(q["language"] == code for q in questions)]
    if unanswered:  # said here, not in load_questions, which the stage key calls too
        log.warning("arena: no questions in %s (%s); those languages are not evaluated in the arena", ", ".join(unanswered), cfg.arena.prompts.path)
    units = _units(cfg, questions)
    for stale in set(out.shard_names()) - set(units):
        out.remove_shard(stale)
    todo = [shard for shard in units if not out.has_shard(shard)]
    models = contestants(cfg)
    work_s, new_answers, new_tokens = 0.0, 0, 0
    with tqdm(total=sum(1 for q in questions for s in todo if units[s][1] == q["language"]), unit="answer", desc="arena", dynamic_ncols=True) as bar:
        for name in dict.fromkeys(units[s][0] for s in todo):
            generator = load_generator(cfg.arena.engine, models[name])
            for chunk in _chunks([s for s in todo if units[s][0] == name], units, questions, cfg.arena.engine.batch_size):
                asked = [q for shard in chunk for q in questions if q["language"] == units[shard][1]]
                started = time.perf_counter()
                records = _answer(generator, asked, name, models[name], cfg, bar.update)
                work_s += time.perf_counter() - started
                for shard in chunk:
                    out.write_shard(shard, [r for r in records if r["language"] == units[shard][1]], ARENA_ANSWER, [], SKIPPED)
                new_answers += len(records)
                new_tokens += sum(r["completion_tokens"] for r in records)
            del generator
            gc.collect()

    answers = out.read(ARENA_ANSWER)
    _export(answers.to_pylist(), out.path / ANSWERS_DIR)
    rows = answers.select(["model", "language", "finish_reason"]).to_pylist()
    return {
        "records_in": len(questions) * len(models),
        "records_out": answers.num_rows,
        "skipped": {},
        "models": {name: models[name].model_dump() for name in models},
        "questions_per_language": dict(Counter(q["language"] for q in questions)),
        "units": len(units),
        "units_resumed": len(units) - len(todo),
        "finish_reasons": {f"{r}": n for r, n in Counter(f"{x['model']}/{x['language']}/{x['finish_reason']}" for x in rows).items()},
        "throughput": throughput(new_answers, new_tokens, work_s),
    }


def _chunks(shards: list[str], units: dict[str, tuple[str, str]], questions: list[dict], batch_size: int) -> list[list[str]]:
    """Languages answered together until a call fills at least one batch: few questions per language
    would otherwise leave batches half empty, while a crash still loses only the call in flight."""
    chunks: list[list[str]] = [[]]
    filled = 0
    for shard in shards:
        if filled >= batch_size:
            chunks.append([])
            filled = 0
        chunks[-1].append(shard)
        filled += sum(q["language"] == units[shard][1] for q in questions)
    return [c for c in chunks if c]


def _answer(generator, questions: list[dict], name: str, model, cfg: CrocoConfig, progress) -> list[dict]:
    params = SamplingParams(1, cfg.arena.max_new_tokens, cfg.arena.temperature, cfg.arena.top_p, cfg.seed)
    completions = generator.generate([[{"role": "user", "content": q["prompt"]}] for q in questions], params, progress)
    records = []
    for question, (completion,) in zip(questions, completions):
        reasoning, output = split_reasoning(completion.text)
        records.append(
            {
                "model": name,
                **question,
                "output": output,
                "reasoning": "\n".join(part for part in (completion.reasoning, reasoning) if part),
                "finish_reason": completion.finish_reason,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "generator": model.path + (f" + {model.adapter}" if model.adapter else ""),
            }
        )
    return records


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer): a `<think>` block is the reasoning; a block never closed leaves no answer."""
    if "</think>" in text:
        thought, _, answer = text.partition("</think>")
        return thought.replace("<think>", "", 1).strip(), answer.strip()
    if text.lstrip().startswith("<think>"):
        return text.replace("<think>", "", 1).strip(), ""
    return "", text.strip()


def _export(answers: list[dict], folder: Path) -> None:
    """One JSONL file per model and language with the fields of the original code's output files."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for a in answers:
        grouped.setdefault((a["model"], a["language"]), []).append(a)
    for (model, language), rows in grouped.items():
        path = folder / model / f"{language}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = ("question_id", "prompt", "output", "reasoning", "generator", "category", "subcategory")
        path.write_text("".join(json.dumps({k: r[k] for k in fields}, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
