"""Win-rate statistics for pairwise judgments (docs: METHOD.md, stage 7).

An outcome is the model's result against the baseline on one prompt: 1.0 win, 0.0 loss,
0.5 tie (or ties counted as a win or a loss). Everything here works per group of
outcomes (a language, a subcategory); the arena stage decides the groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TIE_SCORES = {"half": 0.5, "win": 1.0, "loss": 0.0}


@dataclass(frozen=True)
class WinRate:
    win_rate: float
    standard_error: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    ties: int
    length_controlled: float


def outcome_scores(verdicts: list[str], ties: str = "half") -> np.ndarray:
    """'win' / 'loss' / 'tie' verdicts as numbers; ties scored as configured."""
    table = {"win": 1.0, "loss": 0.0, "tie": TIE_SCORES[ties]}
    return np.array([table[v] for v in verdicts], dtype=np.float64)


def bootstrap_interval(scores: np.ndarray, prompts: np.ndarray, rounds: int = 1000, seed: int = 42, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean score, resampling prompts (all judgments of a prompt move together)."""
    ids, inverse = np.unique(prompts, return_inverse=True)
    totals = np.bincount(inverse, weights=scores, minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ids), size=(rounds, len(ids)))
    means = totals[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def length_controlled_win_rate(scores: np.ndarray, length_difference: np.ndarray, l2: float = 1.0) -> tuple[float, float]:
    """sigmoid(theta) of the fit p(win) = sigmoid(theta + phi * tanh(dlen / std(dlen))), with an L2 penalty on phi.

    Minimises sum_i [w_i log-loss] + l2 / 2 * phi^2 by Newton's method, where a tie (score 0.5)
    counts as half a win and half a loss. Returns (length-controlled win rate, phi).
    """
    if scores.min() == scores.max():  # all wins (or all losses): the fit has no finite optimum
        return float(scores[0]), 0.0
    spread = length_difference.std()
    x = np.tanh(length_difference / spread) if spread > 0 else np.zeros_like(length_difference, dtype=np.float64)
    design = np.column_stack([np.ones_like(x), x])
    params = np.zeros(2)
    penalty = np.diag([0.0, l2])
    for _ in range(100):
        p = 1 / (1 + np.exp(-design @ params))
        gradient = design.T @ (p - scores) + penalty @ params
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]  # lstsq: the Hessian is near-singular when one side nearly always wins
        params -= step
        if np.abs(step).max() < 1e-10:
            break
    theta, phi = params
    return float(1 / (1 + np.exp(-theta))), float(phi)


def win_rate(verdicts: list[str], prompts: np.ndarray, length_difference: np.ndarray, ties: str = "half", rounds: int = 1000, seed: int = 42) -> WinRate:
    """All the per-group figures the arena report shows; `length_difference` is model minus baseline length."""
    scores = outcome_scores(verdicts, ties)
    low, high = bootstrap_interval(scores, prompts, rounds, seed)
    return WinRate(
        win_rate=float(scores.mean()),
        standard_error=float(scores.std(ddof=1) / np.sqrt(len(scores))) if len(scores) > 1 else float("nan"),
        ci_low=low,
        ci_high=high,
        wins=verdicts.count("win"),
        losses=verdicts.count("loss"),
        ties=verdicts.count("tie"),
        length_controlled=length_controlled_win_rate(scores, length_difference)[0],
    )


def summarize(judgments: list[dict], ties: str = "half", rounds: int = 1000, seed: int = 42) -> list[dict]:
    """One row per model, language (and `all`) and subcategory (and `all`), from JUDGMENT records.

    Lengths are in characters. The length-controlled fit divides each length difference by the
    spread of differences in its language, since characters per word differ between languages.
    """
    spread: dict[tuple[str, str], float] = {}
    for j in judgments:
        spread.setdefault((j["model"], j["language"]), 0.0)
    for model, language in spread:
        diffs = np.array([j["model_length"] - j["baseline_length"] for j in judgments if (j["model"], j["language"]) == (model, language)], dtype=float)
        spread[model, language] = float(diffs.std()) or 1.0
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for j in judgments:
        for language in (j["language"], "all"):
            for subcategory in (j["subcategory"], "all"):
                groups.setdefault((j["model"], language, subcategory), []).append(j)
    return [_summary_row(key, rows, spread, ties, rounds, seed) for key, rows in sorted(groups.items(), key=lambda kv: _order(kv[0]))]


def _order(key: tuple[str, str, str]) -> tuple:
    model, language, subcategory = key
    return (model, language == "all", language, subcategory != "all", subcategory)


def _summary_row(key: tuple[str, str, str], rows: list[dict], spread: dict, ties: str, rounds: int, seed: int) -> dict:
    model, language, subcategory = key
    parsed = [j for j in rows if j["outcome"] is not None]
    row = {
        "model": model,
        "baseline": rows[0]["baseline"],
        "language": language,
        "subcategory": subcategory,
        "questions": len({(j["language"], j["question_id"]) for j in rows}),
        "judgments": len(rows),
        "unparseable": len(rows) - len(parsed),
        "unparseable_length": sum(j["unparseable"] == "length" for j in rows),
        "model_length": float(np.mean([j["model_length"] for j in rows])),
        "baseline_length": float(np.mean([j["baseline_length"] for j in rows])),
        "order_disagreement": _order_disagreement(parsed),
    }
    if not parsed:
        return {**row, "win_rate": None}
    prompts = np.array([f"{j['language']}\0{j['question_id']}" for j in parsed])
    scaled = np.array([(j["model_length"] - j["baseline_length"]) / spread[j["model"], j["language"]] for j in parsed], dtype=float)
    result = win_rate([j["outcome"] for j in parsed], prompts, scaled, ties, rounds, seed)
    return {**row, **result.__dict__}


def _order_disagreement(parsed: list[dict]) -> float | None:
    """Share of questions judged in both orders whose two outcomes differ (None when no question was)."""
    by_question: dict[tuple[str, str], dict[str, str]] = {}
    for j in parsed:
        by_question.setdefault((j["language"], j["question_id"]), {})[j["order"]] = j["outcome"]
    both = [o for o in by_question.values() if {"model_first", "baseline_first"} <= o.keys()]
    if not both:
        return None
    return sum(o["model_first"] != o["baseline_first"] for o in both) / len(both)
