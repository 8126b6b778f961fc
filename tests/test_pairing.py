import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from croco.pairing import NO_VALID_REJECTED, POOL_TOO_SMALL, select


def one_pool(rewards, target="mean_minus_2sigma", k=-2.0):
    reward = np.array(rewards, dtype=float)
    selection = select(np.zeros(len(reward), dtype=np.int64), np.arange(len(reward)), reward, target, k)
    return int(selection.chosen[0]), int(selection.rejected[0]), float(selection.target[0])


def test_mean_minus_two_sigma_worked_by_hand():
    # mean 2.5, population std 1.5 (ddof 0): target 2.5 - 3.0 = -0.5; nearest below chosen is reward 1 (index 1)
    rewards = [4.0, 1.0, 4.0, 1.0]
    chosen, rejected, target = one_pool(rewards)
    assert (chosen, rejected) == (0, 1) and target == pytest.approx(-0.5)


def test_mean_minus_two_sigma_is_neither_the_minimum_nor_the_sample_standard_deviation():
    # Thirteen rewards of 10 and three low ones, -38, -40 and -36 (indices 1, 4, 7): mean 1. Squared deviations
    # 13 * 81 + 39^2 + 41^2 + 37^2 = 5624. Population variance 5624 / 16 = 351.5, std 18.748: target 1 - 37.497 =
    # -36.497, nearest -36 (0.497 away; -38 is 1.503 away). With ddof=1 the variance would be 5624 / 15, std 19.363,
    # target -37.726, nearest -38; `min` would give -40.
    rewards = [10.0] * 16
    rewards[1], rewards[4], rewards[7] = -38.0, -40.0, -36.0
    chosen, rejected, target = one_pool(rewards)
    assert (chosen, rejected) == (0, 7) and target == pytest.approx(1 - 2 * np.sqrt(351.5))
    assert one_pool(rewards, target="min")[1] == 4


def test_general_k():
    # mean 2, std sqrt(2): k = +0.5 gives 2.707; nearest strictly below chosen (4) is 3
    chosen, rejected, target = one_pool([0.0, 1.0, 2.0, 3.0, 4.0], target="mean_plus_k_std", k=0.5)
    assert (chosen, rejected) == (4, 3) and target == pytest.approx(2 + 0.5 * np.sqrt(2))


def test_q1_uses_linear_interpolation():
    # sorted [0, 1, 2, 3, 10]: position 0.25 * 4 = 1 -> 1.0; sorted [0, 1, 2, 10]: position 0.75 -> 0.75
    assert one_pool([10.0, 2.0, 0.0, 3.0, 1.0], target="q1")[1:] == (4, 1.0)
    chosen, rejected, target = one_pool([10.0, 2.0, 0.0, 1.0], target="q1")
    assert target == pytest.approx(np.percentile([10, 2, 0, 1], 25)) == 0.75 and rejected == 3


def test_min_target_picks_the_lowest():
    assert one_pool([3.0, -1.0, 2.0, -1.0], target="min") == (0, 1, -1.0)


def test_ties_for_chosen_and_rejected_go_to_the_earlier_sample():
    chosen, rejected, _ = one_pool([1.0, 5.0, 5.0, 1.0, 1.0], target="min")
    assert (chosen, rejected) == (1, 0)


def test_rejected_is_strictly_below_chosen():
    # target is far above every reward: the nearest would be the tied best, which may not be rejected
    chosen, rejected, _ = one_pool([5.0, 5.0, 4.0], target="mean_plus_k_std", k=10.0)
    assert (chosen, rejected) == (0, 2)


def test_equal_rewards_give_no_pair():
    selection = select(np.zeros(3, dtype=np.int64), np.arange(3), np.full(3, 2.0))
    assert selection.rejected[0] == -1 and selection.skip_counts() == {NO_VALID_REJECTED: 1}


def test_pools_of_one_are_skipped():
    selection = select(np.array([0, 1, 1]), np.array([0, 0, 1]), np.array([1.0, 2.0, 1.0]))
    assert list(selection.rejected) == [-1, 2] and selection.skip_counts() == {POOL_TOO_SMALL: 1}


def test_order_decides_ties_not_row_position():
    # rows given out of order: sample 3 sits in row 0; on a tie the lower order (sample 1, row 2) wins
    selection = select(np.zeros(3, dtype=np.int64), np.array([3, 2, 1]), np.array([7.0, 0.0, 7.0]))
    assert int(selection.chosen[0]) == 2


def test_many_pools_at_once_match_one_at_a_time():
    rng = np.random.default_rng(0)
    group = rng.integers(0, 50, 2000)
    order = np.arange(2000)
    reward = rng.normal(size=2000).round(1)  # rounding makes ties common
    together = select(group, order, reward)
    for g, c, r in zip(together.group, together.chosen, together.rejected):
        rows = np.flatnonzero(group == g)
        alone = select(np.zeros(len(rows), dtype=np.int64), order[rows], reward[rows])
        assert rows[alone.chosen[0]] == c
        assert (alone.rejected[0] == -1 and r == -1) or rows[alone.rejected[0]] == r


def test_non_finite_rewards_are_refused():
    with pytest.raises(ValueError, match="finite"):
        select(np.zeros(2, dtype=np.int64), np.arange(2), np.array([1.0, np.nan]))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.floats(-50, 50, allow_nan=False)), min_size=1, max_size=60),
    st.sampled_from(["mean_minus_2sigma", "q1", "min", "mean_plus_k_std"]),
    st.floats(-3, 3),
)
def test_rejected_is_the_sample_below_chosen_nearest_the_target(samples, target, k):
    group = np.array([g for g, _ in samples])
    reward = np.array([r for _, r in samples])
    selection = select(group, np.arange(len(samples)), reward, target, k)
    for g, c, r, size in zip(selection.group, selection.chosen, selection.rejected, selection.pool_size):
        members = np.flatnonzero(group == g)
        assert size == len(members) and reward[c] == reward[members].max()
        assert c == members[reward[members] == reward[c]][0]  # earliest of the best
        below = members[reward[members] < reward[c]]
        if size < 2 or not len(below):
            assert r == -1
            continue
        goal = expected_target(reward[members], target, k)
        distance = np.abs(reward[below] - goal)
        assert r in below and abs(reward[r] - goal) <= distance.min() + 1e-9 * (1 + abs(goal))
        assert r == below[reward[below] == reward[r]][0]  # earliest of the samples with that reward


def expected_target(pool: np.ndarray, target: str, k: float) -> float:
    """METHOD's targets, computed independently of pairing.py."""
    if target == "min":
        return pool.min()
    if target == "q1":
        return np.percentile(pool, 25)  # linear interpolation
    return pool.mean() + (-2.0 if target == "mean_minus_2sigma" else k) * pool.std(ddof=0)
