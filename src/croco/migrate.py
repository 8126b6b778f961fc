"""Pairs from the original research code's files, with croco's selection rules.

The original layout, per language:
- a scored JSONL file, one line per sample: {"messages": [user, assistant], "reward_score": float};
- an originals JSONL file, one line per prompt, in the same (parallel) line order in every
  language, so line k is prompt k everywhere.
The language comes from each file's name, as a code or an English name (`train_da.jsonl`,
`eurollm_danish_scored.jsonl`, `danish.jsonl`, `da-scored.jsonl`, ...).

Samples are matched to their prompt by the user message, with the optional "Please respond
in ..." instruction recognised (the original code lost such samples silently). A sample
that matches no prompt, a reward that is missing (or null), not a number or not finite, or
the original's -999.0 failure marker is counted by reason and reported, never paired. Within a language, samples keep their file order
(ties go to the earlier line); across languages, the order of the --scored files.

    croco pair --scored scored_da.jsonl scored_en.jsonl --originals da.jsonl en.jsonl --out pairs/
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from array import array
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from json.decoder import scanstring
from pathlib import Path

import numpy as np

from croco.errors import CrocoError
from croco.fileio import decode_text, text_lines, write_atomic
from croco.langid import detect
from croco.languages import LANGUAGE_INSTRUCTION, LANGUAGES
from croco.pairing import PRODUCTS, ScoredSamples, Text, build_products

log = logging.getLogger("croco")

FAILED_SCORE = -999.0  # what the original wrote when scoring failed
_LAYOUT_START = '{"messages": [{"role": "user", "content": '
_REWARD_KEY = '"reward_score":'
_CODE_OF_NAME = {language.name.lower(): code for code, language in LANGUAGES.items()}  # "danish" -> "da"
_INSTRUCTION = re.compile(r"\s*" + re.escape(LANGUAGE_INSTRUCTION).replace(r"\{language\}", r"[\w ]+?") + r"\s*$")


@dataclass
class ScoredFile:
    """What one pass over a scored file keeps: per sample, its prompt line, reward and byte offset."""

    path: Path
    language: str
    prompt: np.ndarray
    sample_index: np.ndarray
    reward: np.ndarray
    offset: np.ndarray
    rejected: dict[str, int]


def language_of(path: Path) -> str:
    """The language a file's name gives, as a code or an English name: by the original code's rule, its last
    '_'-separated word once the extension and `_scored` are removed (`eurollm_danish_scored.jsonl`, `danish.jsonl`,
    `train_da.jsonl`); else the one language among its words (`da-scored.jsonl`)."""
    stem = path.name.removesuffix(path.suffix)
    last = _language_named(stem.removesuffix("_scored").rsplit("_", 1)[-1])
    named = {code for code in map(_language_named, re.split(r"[^A-Za-z]+", stem)) if code}
    if last is None and len(named) != 1:
        raise CrocoError(
            f"cannot tell the language of {path} from its name; end it with a language code or name, e.g. scored_da.jsonl or danish_scored.jsonl"
        )
    return last or named.pop()


def _language_named(word: str) -> str | None:
    word = word.lower()
    return word if word in LANGUAGES else _CODE_OF_NAME.get(word)


def migrate(
    scored: list[Path], originals: list[Path], out: Path, target: str, k: float, prompt_source: str, seed: int
) -> dict:
    started = time.perf_counter()
    by_language = {language_of(p): p for p in originals}
    if len(by_language) != len(originals):
        raise CrocoError("two --originals files name the same language")
    languages = [language_of(p) for p in scored]
    if len(set(languages)) != len(languages):
        raise CrocoError("two --scored files name the same language")
    missing = [p for p, lang in zip(scored, languages) if lang not in by_language]
    if missing:
        raise CrocoError(f"no --originals file for the language of {missing[0]} ({language_of(missing[0])})")

    with ProcessPoolExecutor(max_workers=min(len(scored), os.cpu_count() or 1)) as pool:
        files = list(pool.map(_read_scored, scored, languages, [by_language[lang] for lang in languages]))

    prompt_count = max((int(f.prompt.max()) + 1 for f in files if len(f.prompt)), default=0)
    samples = ScoredSamples(
        prompt_ids=np.array([str(i) for i in range(prompt_count)], dtype=object),
        languages=languages,
        prompt=np.concatenate([f.prompt for f in files]),
        language=np.concatenate([np.full(len(f.prompt), rank, dtype=np.int64) for rank, f in enumerate(files)]),
        sample_index=np.concatenate([f.sample_index for f in files]),
        reward=np.concatenate([f.reward for f in files]),
    )
    file_of_row = np.concatenate([np.full(len(f.prompt), rank, dtype=np.int64) for rank, f in enumerate(files)])
    offsets = np.concatenate([f.offset for f in files])

    def fetch(rows: np.ndarray) -> dict[int, Text]:
        texts = {}
        for rank, f in enumerate(files):
            with open(f.path, "rb") as handle:
                for row in rows[file_of_row[rows] == rank]:
                    handle.seek(offsets[row])
                    user, assistant = json.loads(handle.readline())["messages"][:2]
                    texts[int(row)] = Text(user["content"], assistant["content"], detect(assistant["content"]).language)
        return texts

    products, skipped, fidelity = build_products(samples, target, k, prompt_source, seed, fetch)
    out.mkdir(parents=True, exist_ok=True)
    for name in PRODUCTS:
        write_atomic(
            out / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in products[name]).encode()
        )
    rejected = Counter()
    for f in files:
        rejected.update({f"{f.path.name}/{reason}": n for reason, n in f.rejected.items()})
    report = {
        "records_in": sum(len(f.prompt) for f in files) + sum(rejected.values()),
        "records_out": sum(len(r) for r in products.values()),
        "products": {name: len(products[name]) for name in PRODUCTS},
        "rejected_samples": dict(rejected),
        "skipped": skipped,
        "fidelity": fidelity,
        "settings": {"target": target, "k": k, "prompt_source": prompt_source, "seed": seed, "languages": languages},
        "inputs": {"scored": [str(p) for p in scored], "originals": [str(p) for p in originals]},
        "wall_s": round(time.perf_counter() - started, 2),
    }
    write_atomic(out / "manifest.json", json.dumps(report, indent=2).encode())
    return report


def _prompt_lines(originals: Path) -> dict[str, int]:
    lines: dict[str, int] = {}
    for number, line in text_lines(originals):
        try:
            messages = json.loads(line)["messages"]
            prompt = next(m["content"] for m in messages if m["role"] == "user")
        except (json.JSONDecodeError, KeyError, TypeError, StopIteration):
            raise CrocoError(
                f"{originals} line {number}: expected a JSON object with a user message in 'messages'"
            ) from None
        if prompt in lines:
            raise CrocoError(
                f"{originals} lines {lines[prompt] + 1} and {number} hold the same prompt; samples could not be matched to one of them"
            )
        lines[prompt] = number - 1  # line k (from 0) is prompt k
    return lines


def _user_and_reward(line: str) -> tuple[str, object]:
    """The first message's content and the reward of one scored line.

    Most of a line is the response, which pairing does not need until a sample is selected;
    for lines in the original code's exact layout, only the prompt string and the trailing
    reward are decoded (with json's own string scanner). Anything else takes a full parse.
    """
    at = line.rfind(_REWARD_KEY)
    if line.startswith(_LAYOUT_START) and at > 0:
        try:
            score = float(line[at + len(_REWARD_KEY) :].strip().removesuffix("}"))
            if line[len(_LAYOUT_START)] == '"':
                return scanstring(line, len(_LAYOUT_START) + 1)[0], score
        except (ValueError, IndexError):
            pass
    record = json.loads(line)
    return record["messages"][0]["content"], record.get("reward_score")  # a missing reward is counted, like a null one


def _read_scored(path: Path, language: str, originals: Path) -> ScoredFile:
    """One pass: keep prompt line, sample index, reward and offset of every sample; never the texts."""
    prompt_lines = _prompt_lines(originals)
    prompt, sample_index, reward, offset = array("q"), array("q"), array("d"), array("q")
    seen: Counter[int] = Counter()
    rejected: Counter[str] = Counter()
    position = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            start, position = position, position + len(line)
            if not line.strip():
                continue
            try:
                user, score = _user_and_reward(decode_text(line, str(path), number, start))
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                raise CrocoError(
                    f'{path} line {number}: expected {{"messages": [user, assistant], "reward_score": number}}'
                ) from None
            line_number = prompt_lines.get(user)
            if line_number is None:
                line_number = prompt_lines.get(_INSTRUCTION.sub("", user))
            if line_number is None:
                rejected["prompt_not_in_originals"] += 1
            elif score is None:
                rejected["reward_missing"] += 1
            elif isinstance(score, bool) or not isinstance(score, (int, float)):
                rejected["reward_not_a_number"] += 1
            elif not math.isfinite(score):
                rejected["non_finite_reward"] += 1
            elif score == FAILED_SCORE:
                rejected["failed_score_marker"] += 1
            else:
                prompt.append(line_number)
                sample_index.append(seen[line_number])
                reward.append(score)
                offset.append(start)
            if line_number is not None:
                seen[line_number] += 1  # sample indices follow file order, rejected lines included
    return ScoredFile(
        path,
        language,
        *(
            np.frombuffer(a, dtype=np.int64 if a.typecode == "q" else np.float64)
            for a in (prompt, sample_index, reward, offset)
        ),
        dict(rejected),
    )
