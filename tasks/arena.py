"""Stage 6: one evaluated model answers the m-ArenaHard prompts of one language, one answer per question.

The prompts come from CohereLabs/m-ArenaHard-v2.1 (one dataset configuration per language)
or a local file in its schema. A unit is one model in one language, so retraining one adapter
redoes only that adapter's answers. Reasoning traces (`<think>...</think>`, or a server's
separate reasoning field) are kept apart from the answer that gets judged. Every answer records the language
its judged part is written in (croco.fidelity), and the manifest's `fidelity` the share in the question's language.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from tqdm.auto import tqdm

from croco.caching import stage_task
from croco.config import CrocoConfig
from croco.contestants import adapter_input, arena_engine, check_served_names, contestant_names, identity, resolve
from croco.engines import SamplingParams, load_generator
from croco.errors import CrocoError
from croco.fidelity import detected, fidelity
from croco.fileio import stable_hash
from croco.languages import LANGUAGES
from croco.plan import Unit
from croco.records import ARENA_ANSWER
from croco.sources import fingerprint, local_path, read_source
from croco.storage import Version
from croco.tasks import throughput

NAME = "arena"
CODE_VERSION = "2"  # 2: answers record their language
LOADS_MODEL = True
ANSWERS_FILE = "answers.jsonl"  # the original code's output format
REQUIRED = ("question_id", "prompt")
QUESTIONS_PER_SHARD = 64  # a crash loses at most one shard of answers

_loaded: dict[str, list[dict]] = {}


def enabled(cfg: CrocoConfig) -> bool:
    return cfg.arena.enabled


def units(cfg: CrocoConfig) -> list[tuple[str, str]]:
    """One unit per language with questions and evaluated model; the other languages are `skipped`."""
    check_served_names(cfg)
    asked = asked_languages(cfg)
    return [(code, name) for code in cfg.languages if code in asked for name in contestant_names(cfg)]


def skipped(cfg: CrocoConfig) -> dict[str, str]:
    """Why each run language without questions is not evaluated in the arena (the plan counts and reports them)."""
    asked = asked_languages(cfg)
    return {
        code: f"{cfg.arena.prompts.path} holds no questions in {LANGUAGES[code].name} ({code})"
        for code in cfg.languages
        if code not in asked
    }


def inputs(cfg: CrocoConfig, language: str, model: str) -> list[str]:
    return adapter_input(model)


def settings(cfg: CrocoConfig, language: str, model: str) -> dict[str, Any]:
    sampling = {key: getattr(cfg.arena, key) for key in ("max_new_tokens", "temperature", "top_p")}
    return {
        "language": language,
        "model": identity(cfg, model, arena_engine(cfg, model)),
        "sampling": sampling,
        "seed": cfg.seed,
        "questions": questions_identity(cfg, language),
    }


def loaded_by_datasets(cfg: CrocoConfig) -> bool:
    """A hub dataset or a dataset folder: read in the unit, never while planning (the planning machine may have neither
    `datasets` nor the data); a local JSON/JSONL file is read here, as plain text."""
    return local_path(cfg.arena.prompts) is None


def asked_languages(cfg: CrocoConfig) -> set[str]:
    """The run languages with questions (only languages with an m-ArenaHard code are evaluated): those in a local file;
    of a dataset, the source's `language`, else the language its configuration is named after (m-ArenaHard names each
    by its language code), else every one m-ArenaHard covers (a unit whose language has none fails, naming it)."""
    if not loaded_by_datasets(cfg):
        return {q["language"] for q in load_questions(cfg)}
    source = cfg.arena.prompts
    named = any(source.name in (language.code, language.arena_code) for language in LANGUAGES.values())
    only = source.language or (source.name if named else None)
    return {
        code
        for code in cfg.languages
        if LANGUAGES[code].arena_code and only in (None, code, LANGUAGES[code].arena_code)
    }


def questions_identity(cfg: CrocoConfig, language: str) -> Any:
    """What decides a language's questions: those of a local file themselves; of a dataset, its commit (or a folder's
    content) and how many are sampled (the seed is keyed beside)."""
    if loaded_by_datasets(cfg):
        return {"source": fingerprint(cfg.arena.prompts, language, "language"), "per_language": cfg.arena.per_language}
    return stable_hash([(q["question_id"], q["prompt"]) for q in questions_in(cfg, language)])


def questions_in(cfg: CrocoConfig, language: str) -> list[dict]:
    return [q for q in load_questions(cfg) if q["language"] == language]


def load_questions(cfg: CrocoConfig) -> list[dict]:
    """The arena questions of the run's languages, checked, with croco language codes (read once per process)."""
    memo = stable_hash([cfg.arena.prompts.model_dump(), cfg.languages, cfg.arena.per_language, cfg.seed])
    if memo not in _loaded:
        _loaded[memo] = _read_questions(cfg)
    return _loaded[memo]


def _read_questions(cfg: CrocoConfig) -> list[dict]:
    source = cfg.arena.prompts
    wanted = {LANGUAGES[code].arena_code: code for code in cfg.languages if LANGUAGES[code].arena_code}
    if local_path(source) is None and source.name is None:
        # m-ArenaHard's layout: one dataset configuration per language, named by its code.
        rows = [
            (location, raw, code)
            for arena_code, code in wanted.items()
            for location, raw in read_source(source, name=arena_code)
        ]
    else:
        # One file or one named configuration: a question's language is the source's or its own field, never the
        # configuration's name (that would give every language one language's questions).
        rows = [(location, raw, source.language) for location, raw in read_source(source)]
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
            raise CrocoError(
                f"{location}: missing or empty field {field!r} (arena prompts need question_id, prompt, category, subcategory, language)"
            )
    code = language or raw.get("language")
    if not isinstance(code, str):
        raise CrocoError(f"{location}: missing field 'language' (or set arena.prompts.language)")
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
    """The `per_language` questions of each language that rank first by a seeded hash of their id: parallel
    languages keep the same ids, and no language's questions depend on which other languages run."""
    kept = []
    for language in sorted({q["language"] for q in questions}):
        mine = sorted(
            (q for q in questions if q["language"] == language), key=lambda q: stable_hash([seed, q["question_id"]])
        )
        kept += mine[:per_language] if per_language is not None else mine
    return sorted(kept, key=lambda q: (q["language"], q["question_id"]))


@stage_task
def arena(cfg: CrocoConfig, unit: Unit, out: Version, inputs: dict[str, Version]) -> dict[str, Any]:
    questions = questions_in(cfg, unit.language)
    if not questions:  # planned without reading the dataset (`asked_languages`), which holds none in this language
        raise CrocoError(
            f"arena prompts {cfg.arena.prompts.path} hold no questions in {LANGUAGES[unit.language].name} ({unit.language}); "
            "set arena.prompts.language, or leave this language out of the run"
        )
    shards = {
        f"{i // QUESTIONS_PER_SHARD:05d}": questions[i : i + QUESTIONS_PER_SHARD]
        for i in range(0, len(questions), QUESTIONS_PER_SHARD)
    }
    todo = out.todo(list(shards))
    work_s, new_answers, new_tokens = 0.0, 0, 0
    if todo:
        model = resolve(cfg, unit.model, inputs)
        generator = load_generator(arena_engine(cfg, unit.model), model)
        with tqdm(
            total=sum(len(shards[n]) for n in todo),
            unit="answer",
            desc=f"arena {unit.model} {unit.language}",
            dynamic_ncols=True,
        ) as bar:
            for name in todo:
                started = time.perf_counter()
                records = _answer(generator, shards[name], unit.model, model, cfg, bar.update)
                work_s += time.perf_counter() - started
                out.write_shard(name, records, ARENA_ANSWER)
                new_answers += len(records)
                new_tokens += sum(r["completion_tokens"] or 0 for r in records)  # an unknown count (None) is left out
    if out.array_task:
        return {}  # one array task's shards: the flow commits once every task's are done

    answers = out.read(ARENA_ANSWER).to_pylist()
    fields = ("question_id", "prompt", "output", "reasoning", "generator", "category", "subcategory")
    out.put_file(
        ANSWERS_FILE,
        "".join(json.dumps({k: a[k] for k in fields}, ensure_ascii=False) + "\n" for a in answers).encode(),
    )
    return {
        "records_in": len(questions),
        "records_out": len(answers),
        "skipped": {},
        "finish_reasons": dict(Counter(a["finish_reason"] for a in answers)),
        "throughput": throughput(new_answers, new_tokens, work_s),
        "fidelity": fidelity(
            unit.language, [a["detected_language"] for a in answers], [a["line_pass_rate"] for a in answers]
        ),
    }


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
                **detected(output, question["language"]),
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
