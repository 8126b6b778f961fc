import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from croco.arena_stats import bootstrap_interval, length_controlled_win_rate, outcome_scores, win_rate

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


def test_length_controlled_fit_matches_scikit_learn():
    """The same penalised logistic model fitted independently: ties become a half-weight win and a half-weight loss."""
    scores = outcome_scores(VERDICTS)
    x = np.tanh(LENGTHS / LENGTHS.std())
    ours, phi = length_controlled_win_rate(scores, LENGTHS, l2=1.0)
    features = np.concatenate([x, x])[:, None]
    labels = np.concatenate([np.ones(10), np.zeros(10)])
    weights = np.concatenate([scores, 1 - scores])
    keep = weights > 0
    model = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(features[keep], labels[keep], sample_weight=weights[keep])
    assert phi == pytest.approx(model.coef_[0, 0], abs=1e-5)
    assert ours == pytest.approx(1 / (1 + np.exp(-model.intercept_[0])), abs=1e-6)
    assert phi > 0  # longer answers won more often here; the controlled rate is below the raw 0.6
    assert ours < 0.6


def test_bootstrap_resamples_prompts_and_is_seeded():
    scores = np.array([1.0, 1.0, 0.0, 0.0])
    prompts = np.array(["a", "a", "b", "b"])  # two judgments per prompt: orders of one prompt move together
    low, high = bootstrap_interval(scores, prompts, rounds=2000, seed=1)
    assert (low, high) == (0.0, 1.0) and bootstrap_interval(scores, prompts, rounds=2000, seed=1) == (low, high)
