"""Win-rate statistics for pairwise judgments (docs: METHOD.md, stage 7).

An outcome is the model's result against the baseline in one judgment: 1.0 win, 0.0 loss,
0.5 tie (or ties counted as a win or a loss). Everything here works per group of
outcomes (a language, a subcategory); the arena stage decides the groups.

The statistical unit is the question, not the judgment: the two orders of one question, and
its parallel translations (m-ArenaHard keeps one question_id across languages), are not
independent, so standard errors, bootstrap resamples and cross-validation folds keep all the
judgments of a question together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TIE_SCORES = {"half": 0.5, "win": 1.0, "loss": 0.0}
LC_FOLDS = 5  # AlpacaEval's cross-validation folds; groups with fewer questions get no length-controlled figure
LC_PENALTIES = np.logspace(
    4, -4, 10
)  # L2 strengths tried on the length slope, strongest first (scikit-learn's Cs grid, penalty = 1 / C)


@dataclass(frozen=True)
class WinRate:
    win_rate: float
    standard_error: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    ties: int
    length_controlled: float | None  # None: fewer than LC_FOLDS questions


def outcome_scores(verdicts: list[str], ties: str = "half") -> np.ndarray:
    """'win' / 'loss' / 'tie' verdicts as numbers; ties scored as configured."""
    table = {"win": 1.0, "loss": 0.0, "tie": TIE_SCORES[ties]}
    return np.array([table[v] for v in verdicts], dtype=np.float64)


def bootstrap_interval(
    scores: np.ndarray, questions: np.ndarray, rounds: int = 1000, seed: int = 42, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean score, resampling questions (all judgments of a question move together)."""
    ids, inverse = np.unique(questions, return_inverse=True)
    totals = np.bincount(inverse, weights=scores, minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ids), size=(rounds, len(ids)))
    means = totals[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def standard_error(scores: np.ndarray, questions: np.ndarray) -> float:
    """Standard error of the mean score over questions: std(per-question means, ddof=1) / sqrt(questions).

    Each question's mean is weighted by its share of the judgments (the linearisation of the mean
    of all judgments), which changes nothing when every question has as many judgments."""
    ids, inverse = np.unique(questions, return_inverse=True)
    if len(ids) < 2:
        return float("nan")
    counts = np.bincount(inverse)
    question_means = np.bincount(inverse, weights=scores) / counts
    weighted_deviations = counts / counts.mean() * (question_means - scores.mean())
    return float(weighted_deviations.std(ddof=1) / np.sqrt(len(ids)))


def length_controlled_win_rate(
    scores: np.ndarray, scaled_length_difference: np.ndarray, questions: np.ndarray
) -> tuple[float, float] | None:
    """sigmoid(theta) of the fit p(win) = sigmoid(theta + phi * tanh(x)), with an L2 penalty on phi.

    `x` is the length difference already divided by its spread (`summarize` divides by the spread
    in the judgment's language). The penalty is chosen as AlpacaEval's length-controlled GLM does:
    the strength in LC_PENALTIES with the lowest held-out log loss over LC_FOLDS folds of questions
    (question ids in sorted order, dealt round-robin; all judgments of a question in one fold), then
    refitted on every judgment. A tie (score 0.5) counts as half a win and half a loss.
    Returns (length-controlled win rate, phi), or None with fewer questions than folds.
    """
    ids, question_rank = np.unique(questions, return_inverse=True)
    if len(ids) < LC_FOLDS:
        return None
    if scores.min() == scores.max():  # all wins (or all losses): the fit has no finite optimum
        return float(scores[0]), 0.0
    design = np.column_stack([np.ones(len(scores)), np.tanh(scaled_length_difference)])
    fold = question_rank % LC_FOLDS

    def held_out_loss(penalty: float) -> float:
        loss = 0.0
        for k in range(LC_FOLDS):
            train, test = fold != k, fold == k
            p = np.clip(_sigmoid(design[test] @ _fit(design[train], scores[train], penalty)), 1e-15, 1 - 1e-15)
            loss -= np.sum(scores[test] * np.log(p) + (1 - scores[test]) * np.log(1 - p))
        return loss

    penalty = min(LC_PENALTIES, key=held_out_loss)  # the first minimum: the strongest penalty among equals
    theta, phi = _fit(design, scores, penalty)
    return float(_sigmoid(theta)), float(phi)


def _fit(design: np.ndarray, scores: np.ndarray, penalty: float) -> np.ndarray:
    """(theta, phi) minimising the weighted log loss + penalty / 2 * phi^2, by Newton's method."""
    params = np.zeros(2)
    penalties = np.diag([0.0, penalty])
    for _ in range(100):
        p = _sigmoid(design @ params)
        gradient = design.T @ (p - scores) + penalties @ params
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalties
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[
            0
        ]  # lstsq: the Hessian is near-singular when one side nearly always wins
        params -= step
        if np.abs(step).max() < 1e-10:
            break
    return params


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(z / 2))  # no overflow for the large |z| of a nearly separable fold


def win_rate(
    verdicts: list[str],
    questions: np.ndarray,
    scaled_length_difference: np.ndarray,
    ties: str = "half",
    rounds: int = 1000,
    seed: int = 42,
) -> WinRate:
    """All the per-group figures the arena report shows; the length difference is model minus baseline, divided by its spread."""
    scores = outcome_scores(verdicts, ties)
    low, high = bootstrap_interval(scores, questions, rounds, seed)
    length_controlled = length_controlled_win_rate(scores, scaled_length_difference, questions)
    return WinRate(
        win_rate=float(scores.mean()),
        standard_error=standard_error(scores, questions),
        ci_low=low,
        ci_high=high,
        wins=verdicts.count("win"),
        losses=verdicts.count("loss"),
        ties=verdicts.count("tie"),
        length_controlled=None if length_controlled is None else length_controlled[0],
    )


def summarize(judgments: list[dict], ties: str = "half", rounds: int = 1000, seed: int = 42) -> list[dict]:
    """One row per model, language (and `all`) and subcategory (and `all`), from JUDGMENT records.

    Lengths are in characters. The length-controlled fit divides each length difference once, by
    the spread (population std) of the model's parsed length differences in its language, since
    characters per word differ between languages; for a language's own row this is METHOD's
    tanh(dlen / std(dlen)).
    """
    differences: dict[tuple[str, str], list[int]] = {}
    for j in judgments:
        if j["outcome"] is not None:
            differences.setdefault((j["model"], j["language"]), []).append(j["model_length"] - j["baseline_length"])
    spread = {key: float(np.std(diffs)) or 1.0 for key, diffs in differences.items()}
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for j in judgments:
        for language in (j["language"], "all"):
            for subcategory in (j["subcategory"], "all"):
                groups.setdefault((j["model"], language, subcategory), []).append(j)
    return [
        _summary_row(key, rows, spread, ties, rounds, seed)
        for key, rows in sorted(groups.items(), key=lambda kv: _order(kv[0]))
    ]


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
    questions = np.array(
        [j["question_id"] for j in parsed]
    )  # parallel translations share an id: one unit across languages
    scaled = np.array(
        [(j["model_length"] - j["baseline_length"]) / spread[j["model"], j["language"]] for j in parsed], dtype=float
    )
    result = win_rate([j["outcome"] for j in parsed], questions, scaled, ties, rounds, seed)
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
