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
    spread = length_difference.std()
    x = np.tanh(length_difference / spread) if spread > 0 else np.zeros_like(length_difference, dtype=np.float64)
    design = np.column_stack([np.ones_like(x), x])
    params = np.zeros(2)
    penalty = np.diag([0.0, l2])
    for _ in range(100):
        p = 1 / (1 + np.exp(-design @ params))
        gradient = design.T @ (p - scores) + penalty @ params
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hessian, gradient)
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
