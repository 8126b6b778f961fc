"""Controlled-contrast selection: which sample is chosen and which rejected in each pool.

The rules (docs: METHOD.md, stage 2.5), applied to every pool at once with numpy so that
pairing 100 million samples needs only their ids and rewards in memory:

- chosen is the highest reward; ties go to the earlier sample;
- rejected is the sample whose reward is nearest the target, among samples with a reward
  strictly below chosen's; ties go to the earlier sample;
- targets: mean + k * std (population std, ddof 0; the default k = -2 is `mean_minus_2sigma`),
  `q1` (25th percentile, linear interpolation) or `min`;
- a pool of fewer than 2 samples, or with no sample below chosen, yields no pair.

"Earlier" is the `order` the caller gives: the sample index inside one language, and
(language rank, sample index) across languages.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

TARGETS = ("mean_minus_2sigma", "mean_plus_k_std", "q1", "min")
POOL_TOO_SMALL = "pool_too_small"
NO_VALID_REJECTED = "no_sample_below_chosen"


@dataclass(frozen=True)
class Selection:
    """One entry per pool, pools in ascending group id."""

    group: np.ndarray  # the pool's group id
    pool_size: np.ndarray
    chosen: np.ndarray  # row index of the chosen sample
    rejected: np.ndarray  # row index of the rejected sample, -1 where the pool has none
    target: np.ndarray  # the reward the rejected sample was chosen to be nearest

    @property
    def has_pair(self) -> np.ndarray:
        return self.rejected >= 0

    @property
    def big_enough(self) -> np.ndarray:
        return self.pool_size >= 2

    def skip_counts(self) -> dict[str, int]:
        counts = {
            POOL_TOO_SMALL: int((~self.big_enough).sum()),
            NO_VALID_REJECTED: int((self.big_enough & ~self.has_pair).sum()),
        }
        return {reason: n for reason, n in counts.items() if n}


def select(
    group: np.ndarray, order: np.ndarray, reward: np.ndarray, target: str = "mean_minus_2sigma", k: float = -2.0
) -> Selection:
    """Chosen and rejected rows for every pool; `group`, `order` and `reward` are per-sample arrays.

    One stable sort by (group, order) puts each pool's samples together, earliest first; every
    rule after that is a per-pool reduction, so "the first row that reaches the pool's best"
    is the earliest sample on ties.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    if not np.isfinite(reward).all():
        raise ValueError("rewards must be finite; reject NaN and infinite rewards before pairing")
    if not len(reward):
        empty = np.array([], dtype=np.int64)
        return Selection(empty, empty, empty, empty, np.array([], dtype=np.float64))
    rows = np.lexsort((order, group))
    pool_group, pool_reward = group[rows], reward[rows]
    starts = np.flatnonzero(np.r_[True, pool_group[1:] != pool_group[:-1]])
    sizes = np.diff(np.r_[starts, len(rows)])
    pool_of = np.repeat(np.arange(len(starts)), sizes)

    best = np.maximum.reduceat(pool_reward, starts)
    chosen = rows[_first_where(pool_reward == best[pool_of], starts)]
    goal = _target(pool_reward, pool_of, sizes, starts, target, -2.0 if target == "mean_minus_2sigma" else k)
    distance = np.abs(pool_reward - goal[pool_of])
    distance[pool_reward >= best[pool_of]] = np.inf  # strictly below chosen, and never chosen itself
    nearest = np.minimum.reduceat(distance, starts)
    valid = np.isfinite(nearest) & (sizes >= 2)
    candidate = _first_where(distance == nearest[pool_of], starts)
    rejected = np.where(valid, rows[candidate], -1)
    return Selection(group=pool_group[starts], pool_size=sizes, chosen=chosen, rejected=rejected, target=goal)


def _first_where(mask: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per pool, the first position where `mask` holds; pools are contiguous and each has a hit."""
    hits = np.flatnonzero(mask)
    return hits[np.searchsorted(hits, starts)]


def _target(pool_reward, pool_of, sizes, starts, target: str, k: float) -> np.ndarray:
    if target == "min":
        return np.minimum.reduceat(pool_reward, starts)
    if target == "q1":
        ascending = pool_reward[np.lexsort((pool_reward, pool_of))]
        position = 0.25 * (sizes - 1)
        low = np.floor(position).astype(np.int64)
        high = np.ceil(position).astype(np.int64)
        return ascending[starts + low] + (ascending[starts + high] - ascending[starts + low]) * (position - low)
    mean = np.bincount(pool_of, weights=pool_reward, minlength=len(sizes)) / sizes
    std = np.sqrt(np.bincount(pool_of, weights=(pool_reward - mean[pool_of]) ** 2, minlength=len(sizes)) / sizes)
    return mean + k * std


PRODUCTS = ("sft_in_language", "dpo_in_language", "sft_all_languages", "dpo_all_languages")


@dataclass(frozen=True)
class ScoredSamples:
    """Ids and rewards of every scored sample, as integer codes: all pairing holds in memory."""

    prompt_ids: np.ndarray  # the distinct prompt ids; `prompt` indexes into it
    languages: list[str]  # in rank order (earlier language wins ties across languages); `language` indexes into it
    prompt: np.ndarray
    language: np.ndarray
    sample_index: np.ndarray
    reward: np.ndarray

    @cached_property
    def stride(self) -> int:
        return int(self.sample_index.max(initial=0)) + 1

    def sample_key(self, prompt: np.ndarray, language: np.ndarray, sample_index: np.ndarray) -> np.ndarray:
        """One integer per sample, distinct for every (prompt, language, sample index)."""
        return (prompt * len(self.languages) + language) * self.stride + sample_index

    def describe(self, row: int) -> str:
        return f"sample {self.sample_index[row]} of prompt {self.prompt_ids[self.prompt[row]]!r} in {self.languages[self.language[row]]}"


# Given sorted row numbers, the (prompt text, response text) of each: only selected samples' texts are ever read.
Fetch = Callable[[np.ndarray], dict[int, tuple[str, str]]]


def build_products(
    samples: ScoredSamples, target: str, k: float, prompt_source: str, seed: int, fetch: Fetch
) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """The four training sets (in-language and all-language SFT and DPO) and the skips per product and reason."""
    in_language = select(
        samples.prompt * len(samples.languages) + samples.language, samples.sample_index, samples.reward, target, k
    )
    all_languages = select(
        samples.prompt, samples.language * samples.stride + samples.sample_index, samples.reward, target, k
    )

    # All-language DPO takes its prompt from the chosen or the rejected sample's language.
    paired = all_languages.has_pair
    if prompt_source == "random":
        use_rejected = np.random.default_rng(seed).random(len(paired)) < 0.5
    else:
        use_rejected = np.full(len(paired), prompt_source == "rejected")
    prompt_row = np.where(use_rejected & paired, all_languages.rejected, all_languages.chosen)

    wanted = np.concatenate([in_language.chosen, in_language.rejected, all_languages.chosen, all_languages.rejected])
    texts = fetch(np.unique(wanted[wanted >= 0]))

    def sft(selection: Selection) -> list[dict]:
        return [
            _sft_record(samples, texts, int(row), int(size))
            for row, size in zip(selection.chosen[selection.big_enough], selection.pool_size[selection.big_enough])
        ]

    def dpo(selection: Selection, prompt_rows: np.ndarray) -> list[dict]:
        keep = selection.has_pair
        return [
            _dpo_record(samples, texts, int(p), int(c), int(r), int(size))
            for p, c, r, size in zip(
                prompt_rows[keep], selection.chosen[keep], selection.rejected[keep], selection.pool_size[keep]
            )
        ]

    products = {
        "sft_in_language": sft(in_language),
        "dpo_in_language": dpo(in_language, in_language.chosen),
        "sft_all_languages": sft(all_languages),
        "dpo_all_languages": dpo(all_languages, prompt_row),
    }
    skipped = {}
    for name, selection in zip(PRODUCTS, (in_language, in_language, all_languages, all_languages)):
        counts = selection.skip_counts()
        if name.startswith("sft"):
            counts.pop(NO_VALID_REJECTED, None)  # SFT needs only a chosen sample
        skipped.update({f"{name}/{reason}": n for reason, n in counts.items()})
    return products, skipped


def _ids(samples: ScoredSamples, row: int) -> tuple[str, str, int, float]:
    return (
        str(samples.prompt_ids[samples.prompt[row]]),
        samples.languages[samples.language[row]],
        int(samples.sample_index[row]),
        float(samples.reward[row]),
    )


def _sft_record(samples: ScoredSamples, texts, row: int, pool_size: int) -> dict:
    prompt_id, language, index, reward = _ids(samples, row)
    prompt, response = texts[row]
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return {
        "prompt_id": prompt_id,
        "language": language,
        "messages": messages,
        "reward": reward,
        "sample_index": index,
        "pool_size": pool_size,
    }


def _dpo_record(samples: ScoredSamples, texts, prompt_row: int, chosen: int, rejected: int, pool_size: int) -> dict:
    prompt_id, chosen_language, chosen_index, chosen_reward = _ids(samples, chosen)
    _, rejected_language, rejected_index, rejected_reward = _ids(samples, rejected)
    return {
        "prompt_id": prompt_id,
        "language": samples.languages[samples.language[prompt_row]],
        "chosen_language": chosen_language,
        "rejected_language": rejected_language,
        "prompt": [{"role": "user", "content": texts[prompt_row][0]}],
        "chosen": [{"role": "assistant", "content": texts[chosen][1]}],
        "rejected": [{"role": "assistant", "content": texts[rejected][1]}],
        "chosen_reward": chosen_reward,
        "rejected_reward": rejected_reward,
        "margin": chosen_reward - rejected_reward,
        "chosen_sample_index": chosen_index,
        "rejected_sample_index": rejected_index,
        "pool_size": pool_size,
    }
