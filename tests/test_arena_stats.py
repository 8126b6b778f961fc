import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from croco.arena_stats import (
    LC_FOLDS,
    bootstrap_interval,
    length_controlled_win_rate,
    outcome_scores,
    standard_error,
    summarize,
    win_rate,
)

VERDICTS = ["win", "win", "loss", "tie", "win", "loss", "win", "tie", "win", "loss"]
LENGTHS = np.array([120.0, 300, -50, 10, 400, -200, 90, 0, 250, -20])


def test_ties_are_scored_as_configured():
    assert outcome_scores(["win", "tie", "loss"]).tolist() == [1.0, 0.5, 0.0]
    assert outcome_scores(["tie"], ties="win").tolist() == [1.0]
    assert outcome_scores(["tie"], ties="loss").tolist() == [0.0]


def test_win_rate_counts_and_standard_error():
    result = win_rate(VERDICTS, np.arange(10), LENGTHS)
    assert (result.wins, result.losses, result.ties) == (5, 3, 2)
    assert result.win_rate == pytest.approx(0.6)
    assert result.standard_error == pytest.approx(np.std(outcome_scores(VERDICTS), ddof=1) / np.sqrt(10))
    assert result.ci_low < result.win_rate < result.ci_high


def test_standard_error_takes_the_question_as_the_unit():
    # Both orders of a question agree: three questions (won, lost, won), not six independent judgments.
    # Per-question means 1, 0, 1: std with ddof=1 is sqrt(1/3), over sqrt(3) questions = 1/3.
    scores = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    assert standard_error(scores, np.array(["a", "a", "b", "b", "c", "c"])) == pytest.approx(1 / 3)
    assert standard_error(scores, np.arange(6)) == pytest.approx(np.std(scores, ddof=1) / np.sqrt(6))


def test_bootstrap_resamples_questions_and_is_seeded():
    # Ten questions, each judged twice with the same outcome, five won. Resampling questions, the mean is
    # Binomial(10, 1/2) / 10, whose 2.5% and 97.5% quantiles are 0.2 and 0.8 (P(X <= 1) = 1.1%, P(X <= 2) = 5.5%).
    # Resampling the twenty judgments one by one would give Binomial(20, 1/2) / 20: 0.3 to 0.7.
    scores = np.repeat([1.0] * 5 + [0.0] * 5, 2)
    questions = np.repeat(np.arange(10), 2)
    interval = bootstrap_interval(scores, questions, rounds=2000, seed=1)
    assert interval == pytest.approx((0.2, 0.8))
    assert bootstrap_interval(scores, questions, rounds=2000, seed=1) == interval


SKLEARN_DEFAULT_CS = np.logspace(-4, 4, 10)


def sklearn_length_controlled(
    scores: np.ndarray, x: np.ndarray, questions: np.ndarray, Cs=SKLEARN_DEFAULT_CS
) -> tuple[float, float]:
    """An independent fit: scikit-learn's logistic regression, ties as a half-weight win and a half-weight loss, and
    the C of scikit-learn's default grid with the lowest held-out log loss over folds of questions (ids in sorted
    order, dealt round-robin), as AlpacaEval's LogisticRegressionCV picks it. Returns (sigmoid(intercept), slope)."""
    ids = sorted(set(questions.tolist()))
    fold = np.array([ids.index(q) % LC_FOLDS for q in questions.tolist()])

    def doubled(mask):
        n = int(mask.sum())
        return (
            np.concatenate([x[mask], x[mask]])[:, None],
            np.r_[np.ones(n), np.zeros(n)],
            np.r_[scores[mask], 1 - scores[mask]],
        )

    def fit(mask, C):
        features, labels, weights = doubled(mask)
        keep = weights > 0
        return LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(
            features[keep], labels[keep], sample_weight=weights[keep]
        )

    def held_out_loss(C):
        total = 0.0
        for k in range(LC_FOLDS):
            features, labels, weights = doubled(fold == k)
            model = fit(fold != k, C)
            total += log_loss(
                labels, model.predict_proba(features)[:, 1], sample_weight=weights, normalize=False, labels=[0, 1]
            )
        return total

    best = min(Cs, key=held_out_loss)
    model = fit(np.ones(len(scores), dtype=bool), best)
    return 1 / (1 + np.exp(-model.intercept_[0])), model.coef_[0, 0]


def length_judgments(seed: int = 0, questions: int = 24) -> list[dict]:
    """Judgments in both orders, in two languages whose answers differ in length on different scales; the model
    wins more often when its answer is longer, and a few verdicts are unparseable (with huge length gaps)."""
    rng = np.random.default_rng(seed)
    judgments = []
    for language, scale in (("da", 300.0), ("de", 60.0)):
        for q in range(questions):
            gap = int(rng.normal(0, scale))
            for order in ("model_first", "baseline_first"):
                win = rng.random() < 1 / (1 + np.exp(-(0.4 + 2.0 * np.tanh(gap / scale))))
                outcome = rng.choice(["win", "tie"]) if win else rng.choice(["loss", "tie"], p=[0.8, 0.2])
                unparseable = rng.random() < 0.1
                judgments.append(
                    {
                        "model": "dpo",
                        "baseline": "policy",
                        "language": language,
                        "question_id": f"q{q:02d}",
                        "subcategory": "coding",
                        "order": order,
                        "outcome": None if unparseable else str(outcome),
                        "unparseable": "length" if unparseable else None,
                        "model_length": 500 + gap + (20_000 if unparseable else 0),
                        "baseline_length": 500,
                    }
                )
    return judgments


def test_length_controlled_fit_matches_scikit_learn():
    """The penalty is cross-validated (not fixed), and matches an independent scikit-learn fit."""
    judgments = [
        j for j in length_judgments(seed=3, questions=12) if j["outcome"] is not None and j["language"] == "da"
    ]
    scores = outcome_scores([j["outcome"] for j in judgments])
    gaps = np.array([j["model_length"] - j["baseline_length"] for j in judgments], dtype=float)
    questions = np.array([j["question_id"] for j in judgments])
    ours, phi = length_controlled_win_rate(scores, gaps / gaps.std(), questions)
    expected, slope = sklearn_length_controlled(scores, np.tanh(gaps / gaps.std()), questions)
    assert ours == pytest.approx(expected, abs=1e-5) and phi == pytest.approx(slope, abs=1e-4)
    assert phi > 1  # longer answers won more often
    fixed_penalty, _ = sklearn_length_controlled(scores, np.tanh(gaps / gaps.std()), questions, Cs=[1.0])
    assert abs(ours - fixed_penalty) > 0.03  # the choice of penalty matters here (0.515 against 0.473)


def test_summary_normalises_lengths_once_per_language_over_parsed_judgments():
    judgments = length_judgments()
    rows = {(r["language"], r["subcategory"]): r for r in summarize(judgments, rounds=50)}
    parsed = [j for j in judgments if j["outcome"] is not None]
    gap = {
        code: np.std([j["model_length"] - j["baseline_length"] for j in parsed if j["language"] == code])
        for code in ("da", "de")
    }
    for language in ("da", "de", "all"):
        mine = [j for j in parsed if language in (j["language"], "all")]
        x = np.tanh(np.array([(j["model_length"] - j["baseline_length"]) / gap[j["language"]] for j in mine]))
        expected, _ = sklearn_length_controlled(
            outcome_scores([j["outcome"] for j in mine]), x, np.array([j["question_id"] for j in mine])
        )
        assert rows[language, "all"]["length_controlled"] == pytest.approx(expected, abs=1e-5), language


def test_all_languages_row_takes_the_question_as_the_unit():
    # Ten questions translated into two languages, each judged in both orders; every judgment of a question agrees.
    # Ten units, not twenty (language, question) pairs nor forty judgments: the interval of
    # test_bootstrap_resamples_questions_and_is_seeded (0.2-0.8) and SE std(1,1,1,1,1,0,0,0,0,0; ddof=1) / sqrt(10).
    judgments = [
        {
            "model": "dpo",
            "baseline": "policy",
            "language": language,
            "question_id": f"q{q}",
            "subcategory": "coding",
            "order": order,
            "outcome": "win" if q < 5 else "loss",
            "unparseable": None,
            "model_length": 100,
            "baseline_length": 100,
        }
        for language in ("da", "de")
        for q in range(10)
        for order in ("model_first", "baseline_first")
    ]
    overall = next(
        r for r in summarize(judgments, rounds=2000, seed=1) if (r["language"], r["subcategory"]) == ("all", "all")
    )
    assert overall["judgments"] == 40 and overall["win_rate"] == 0.5
    assert (overall["ci_low"], overall["ci_high"]) == pytest.approx((0.2, 0.8))
    assert overall["standard_error"] == pytest.approx(np.std([1] * 5 + [0] * 5, ddof=1) / np.sqrt(10))


def test_no_length_controlled_figure_for_groups_too_small_to_fit():
    # The demo's subcategories: one win and one tie, two questions. A fixed penalty reported 27.0 or 73.0 whatever the gap.
    judgments = [
        {
            "model": "dpo",
            "baseline": "policy",
            "language": "da",
            "question_id": q,
            "subcategory": "coding",
            "order": "none",
            "outcome": outcome,
            "unparseable": None,
            "model_length": length,
            "baseline_length": 100,
        }
        for q, outcome, length in (("q1", "win", 400), ("q2", "tie", 90))
    ]
    rows = summarize(judgments, rounds=50)
    assert [r["length_controlled"] for r in rows] == [None] * len(rows)
    assert [r["win_rate"] for r in rows] == [0.75] * len(rows)
