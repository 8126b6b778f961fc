"""The reward transfer audit: does the run's reward model rank answers in other languages as it ranks them in English?

croco's method rests on one assumption: an (English-trained) reward model ranks answers in every language of the
run as it ranks the same answers in English. The audit measures it for any reward model: English preference pairs
(a prompt, a clearly better answer and a clearly worse one) are translated into each language (stage
audit_translate) and both answers are scored under the translated prompt (stage audit_score). Per language:

- accuracy: the share of pairs whose chosen answer gets a higher reward than its rejected answer (a tie is wrong);
- margin correlation: Spearman's rank correlation between the pairs' margins (chosen minus rejected reward) in this
  language and in English, over the pairs scored in both; 1 means the model orders the pairs as it does in English;
- wrong-language rate: the share of pairs where the *untranslated* English chosen answer gets a higher reward than
  the translated chosen answer, both under the translated prompt. The two say the same thing, so a reward model
  that cares about the prompt's language prefers the translation; a high rate means pairs built with it reward
  answers in the wrong language. Not defined for English.

The shipped set (`embedded:audit-pairs`, src/croco/data/demo/audit_pairs.jsonl) holds 40 pairs on everyday topics,
written for croco and dedicated to the public domain (CC0 1.0); each names its rejected answer's `flaw` (a wrong
fact, harmful advice, an unhelpful, rude or off-topic reply). Any JSON/JSONL file or dataset with the fields
`pair_id`, `prompt`, `chosen` and `rejected` (strings) can take its place (`audit.pairs`).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from croco.config import DataSource
from croco.errors import CrocoError
from croco.fidelity import percent
from croco.fileio import file_sha256
from croco.sources import Malformed, fingerprint, local_path, read_source

PAIR_FIELDS = ("pair_id", "prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    pair_id: str
    prompt: str
    chosen: str
    rejected: str


def read_pairs(source: DataSource, limit: int | None = None) -> list[PreferencePair]:
    """The source's pairs in order (the first `limit`), each checked; a bad record stops with its file and line."""
    pairs: list[PreferencePair] = []
    seen: dict[str, str] = {}
    for location, record in read_source(source):
        if limit is not None and len(pairs) == limit:
            break
        pair = _checked(location, record)
        if pair.pair_id in seen:
            raise CrocoError(
                f"{location}: pair_id {pair.pair_id!r} was already used at {seen[pair.pair_id]}; make ids unique"
            )
        seen[pair.pair_id] = location
        pairs.append(pair)
    if not pairs:
        raise CrocoError(f"{source.path} holds no preference pairs (audit.pairs)")
    return pairs


def pairs_fingerprint(source: DataSource) -> dict[str, Any]:
    """What of the pair source shapes the audit, for its keys: a file's content (where it lies is its `location`),
    a dataset folder's content, or the commit a hub dataset's revision stands for."""
    local = local_path(source)
    if local is not None:
        return {"location": source.path, "sha256": file_sha256(local)}
    return fingerprint(source, "en", "language")  # a dataset: its arguments after the path do not apply


def _checked(location: str, record: Any) -> PreferencePair:
    if isinstance(record, Malformed):
        raise CrocoError(f"{location}: {record}")
    if not isinstance(record, dict):
        raise CrocoError(f"{location}: not a record; each needs the fields {', '.join(PAIR_FIELDS)}")
    for name in PAIR_FIELDS:
        value = record.get(name)
        if not isinstance(value, str) or not value.strip():
            raise CrocoError(
                f"{location}: `{name}` must be a non-empty string; each pair needs {', '.join(PAIR_FIELDS)}"
            )
    if record["chosen"].strip() == record["rejected"].strip():
        raise CrocoError(f"{location}: `chosen` and `rejected` are the same text; a pair needs two different answers")
    return PreferencePair(*(record[name] for name in PAIR_FIELDS))


def accuracy(chosen: list[float], rejected: list[float]) -> float | None:
    """The share of pairs whose chosen reward is above its rejected reward (a tie counts as wrong)."""
    return sum(c > r for c, r in zip(chosen, rejected)) / len(chosen) if chosen else None


def wrong_language_rate(english_chosen: list[float], translated_chosen: list[float]) -> float | None:
    """The share of pairs whose untranslated English chosen answer outscores the translated one (a tie does not)."""
    pairs = list(zip(english_chosen, translated_chosen))
    return sum(english > translated for english, translated in pairs) / len(pairs) if pairs else None


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties given the mean of the ranks they span (as Spearman's correlation needs)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in order[start : end + 1]:
            result[position] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation: Pearson's correlation of the ranks; None for fewer than two pairs or where either
    side is constant (the correlation is undefined)."""
    if len(x) != len(y):
        raise ValueError("spearman needs two lists of the same length")
    if len(x) < 2:
        return None
    rx, ry = ranks(x), ranks(y)
    mean_x, mean_y = sum(rx) / len(rx), sum(ry) / len(ry)
    covariance = sum((a - mean_x) * (b - mean_y) for a, b in zip(rx, ry))
    spread = math.sqrt(sum((a - mean_x) ** 2 for a in rx) * sum((b - mean_y) ** 2 for b in ry))
    return covariance / spread if spread else None


def language_rows(scores: dict[str, list[dict]], on_target: dict[str, float | None]) -> list[dict[str, Any]]:
    """One row of figures per language from its scored pairs (AUDIT_SCORE records), English first; `on_target` is the
    share of each language's translated answers detected as that language."""
    english = {row["pair_id"]: row["chosen_reward"] - row["rejected_reward"] for row in scores.get("en", [])}
    rows = []
    for language in sorted(scores, key=lambda code: (code != "en", code)):
        scored = scores[language]
        margins = {row["pair_id"]: row["chosen_reward"] - row["rejected_reward"] for row in scored}
        shared = [pair_id for pair_id in margins if pair_id in english]
        foreign = [row for row in scored if row["english_chosen_reward"] is not None]
        rows.append(
            {
                "language": language,
                "pairs": len(scored),
                "accuracy": accuracy([r["chosen_reward"] for r in scored], [r["rejected_reward"] for r in scored]),
                "mean_margin": sum(margins.values()) / len(margins) if margins else None,
                "margin_spearman": None
                if language == "en"
                else spearman([margins[p] for p in shared], [english[p] for p in shared]),
                "wrong_language_rate": wrong_language_rate(
                    [r["english_chosen_reward"] for r in foreign], [r["chosen_reward"] for r in foreign]
                )
                if foreign
                else None,
                "translation_on_target": on_target.get(language),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]], reward_model: str) -> str:
    def number(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    lines = [
        f"Reward model: `{reward_model}`. Accuracy: chosen scored above rejected. Margin ρ: Spearman's correlation of "
        "the chosen-minus-rejected margins with English's. Wrong language: the untranslated English chosen answer "
        "outscores the translated one under the translated prompt. Translation on target: translated answers "
        "detected as the language.",
        "",
        "| language | pairs | accuracy | mean margin | margin ρ vs en | wrong language | translation on target |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['language']} | {r['pairs']} | {percent(r['accuracy'])} | {number(r['mean_margin'])} | "
        f"{number(r['margin_spearman'])} | {percent(r['wrong_language_rate'])} | {percent(r['translation_on_target'])} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]]) -> bytes:
    """Per language, accuracy, margin correlation with English and wrong-language rate side by side (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [
        ("accuracy", "accuracy"),
        ("margin_spearman", "margin ρ vs en"),
        ("wrong_language_rate", "wrong language"),
    ]
    width = 0.8 / len(measures)
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2.5, 3.5))
    for offset, (field, label) in enumerate(measures):
        positions = [i + (offset - 1) * width for i in range(len(rows))]
        ax.bar(positions, [r[field] if r[field] is not None else math.nan for r in rows], width, label=label)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")  # chance for accuracy and the wrong-language rate
    ax.set_xticks(range(len(rows)), [r["language"] for r in rows])
    ax.set_ylim(min(0.0, *(r["margin_spearman"] or 0 for r in rows)) - 0.1, 1.05)
    ax.set_xlabel("language")
    ax.set_title("Reward transfer audit")
    ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()
