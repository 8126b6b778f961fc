"""Controlled-contrast selection: which sample is chosen and which rejected in each pool.

The rules (docs: METHOD.md, stage 2.5), applied to every pool at once with numpy so that
pairing 100 million samples needs only their ids and rewards in memory:

- chosen is the highest reward; ties go to the earlier sample;
- rejected is the sample whose reward is nearest the target, among samples with a reward
  strictly below chosen's; ties go to the earlier sample;
- targets: mean + k * std (population std, ddof 0; the default k = -2 is `mean_minus_2sigma`),
  `q1` (25th percentile, linear interpolation) or `min`;
- a pool of fewer than 2 samples, or with no sample below chosen, yields no pair;
- with `require_language` (`chosen` or `both`) a pool whose chosen (or rejected) answer is not detected in the
  language of the prompt it answered is removed, not re-selected: its pair and, for the chosen, its SFT example.
  In a cross-language pool every answer has its own prompt language (the sample's), so an answer counts as in
  the pool's language when it is in its own prompt's; removals are counted under that answer's language.

"Earlier" is the `order` the caller gives: the sample index inside one language, and
(language rank, sample index) across languages.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, NamedTuple

import numpy as np

from croco.langid import target_code

TARGETS = ("mean_minus_2sigma", "mean_plus_k_std", "q1", "min")
POOL_TOO_SMALL = "pool_too_small"
NO_VALID_REJECTED = "no_sample_below_chosen"
CHOSEN_NOT_IN_LANGUAGE = "chosen_not_in_language"
REJECTED_NOT_IN_LANGUAGE = "rejected_not_in_language"
REQUIRE_LANGUAGE = ("none", "chosen", "both")


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


class Text(NamedTuple):
    prompt: str
    response: str
    detected_language: str | None  # as the generate stage recorded it (croco.fidelity)


# Given sorted row numbers, the texts of each: only selected samples' texts are ever read.
Fetch = Callable[[np.ndarray], dict[int, Text]]


def build_products(
    samples: ScoredSamples,
    target: str,
    k: float,
    prompt_source: str,
    seed: int,
    fetch: Fetch,
    require_language: str = "none",
) -> tuple[dict[str, list[dict]], dict[str, int], dict[str, dict]]:
    """The four training sets (in-language and all-language SFT and DPO), the skips per product and reason, and the
    language fidelity of each selection's chosen and rejected answers per language (`LanguageCheck.report`)."""
    if require_language not in REQUIRE_LANGUAGE:
        raise ValueError(f"unknown require_language {require_language!r}; use one of {', '.join(REQUIRE_LANGUAGE)}")
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
    checks = {
        scope: LanguageCheck(scope, samples, selection, texts, require_language)
        for scope, selection in (("in_language", in_language), ("all_languages", all_languages))
    }

    def sft(selection: Selection, check: LanguageCheck) -> list[dict]:
        keep = selection.big_enough & check.chosen_kept
        return [
            _sft_record(samples, texts, int(row), int(size))
            for row, size in zip(selection.chosen[keep], selection.pool_size[keep])
        ]

    def dpo(selection: Selection, prompt_rows: np.ndarray, check: LanguageCheck) -> list[dict]:
        keep = selection.has_pair & check.chosen_kept & check.rejected_kept
        return [
            _dpo_record(samples, texts, int(p), int(c), int(r), int(size))
            for p, c, r, size in zip(
                prompt_rows[keep], selection.chosen[keep], selection.rejected[keep], selection.pool_size[keep]
            )
        ]

    products = {
        "sft_in_language": sft(in_language, checks["in_language"]),
        "dpo_in_language": dpo(in_language, in_language.chosen, checks["in_language"]),
        "sft_all_languages": sft(all_languages, checks["all_languages"]),
        "dpo_all_languages": dpo(all_languages, prompt_row, checks["all_languages"]),
    }
    skipped = {}
    for name in PRODUCTS:
        check = checks[name.split("_", 1)[1]]
        counts = check.selection.skip_counts()
        if name.startswith("sft"):
            counts.pop(NO_VALID_REJECTED, None)  # SFT needs only a chosen sample
        counts.update(check.removed(name))
        skipped.update({f"{name}/{reason}": n for reason, n in counts.items() if n})
    return products, skipped, {scope: check.report() for scope, check in checks.items()}


class LanguageCheck:
    """Whether each pool's chosen and rejected answers are in the language of the prompt they answered, and which
    pools `require_language` removes for it; `unknown` and a missing detection are not in the language."""

    def __init__(
        self, scope: str, samples: ScoredSamples, selection: Selection, texts: dict[int, Text], require_language: str
    ):
        def in_language(rows: np.ndarray) -> np.ndarray:
            return np.array(
                [
                    row >= 0 and texts[row].detected_language == target_code(samples.languages[samples.language[row]])
                    for row in rows.tolist()
                ],
                dtype=bool,
            )

        self.scope, self.samples, self.selection = scope, samples, selection  # scope: in_language or all_languages
        self.chosen_in_language = in_language(selection.chosen)
        self.rejected_in_language = in_language(selection.rejected)  # False where the pool has no rejected
        every_pool = np.ones(len(selection.chosen), dtype=bool)
        self.chosen_kept = self.chosen_in_language if require_language in ("chosen", "both") else every_pool
        self.rejected_kept = self.rejected_in_language if require_language == "both" else every_pool

    def _removals(self, product: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(pools removed, row of the answer that removed them) per reason; a pool is removed for its first reason."""
        selection = self.selection
        if product.startswith("sft"):
            return {CHOSEN_NOT_IN_LANGUAGE: (selection.big_enough & ~self.chosen_kept, selection.chosen)}
        return {
            CHOSEN_NOT_IN_LANGUAGE: (selection.has_pair & ~self.chosen_kept, selection.chosen),
            REJECTED_NOT_IN_LANGUAGE: (selection.has_pair & self.chosen_kept & ~self.rejected_kept, selection.rejected),
        }

    def removed(self, product: str) -> dict[str, int]:
        return {reason: int(pools.sum()) for reason, (pools, _) in self._removals(product).items()}

    def report(self) -> dict[str, dict]:
        """Per language: the share of chosen answers (pools of 2 or more) and of rejected answers (pools with a pair)
        in the language, and what `require_language` removed per product and reason."""
        samples, selection = self.samples, self.selection
        languages = samples.languages
        report = {}
        for code, language in enumerate(languages):
            chosen = selection.big_enough & (samples.language[selection.chosen] == code)
            rejected = selection.has_pair & (samples.language[np.maximum(selection.rejected, 0)] == code)
            removed = {
                f"{product}/{reason}": int((pools & (samples.language[np.maximum(rows, 0)] == code)).sum())
                for product in PRODUCTS
                if product.endswith(self.scope)
                for reason, (pools, rows) in self._removals(product).items()
            }
            if chosen.any() or rejected.any():
                report[language] = {
                    "chosen_on_target": _share(self.chosen_in_language[chosen]),
                    "rejected_on_target": _share(self.rejected_in_language[rejected]),
                    "removed": {key: n for key, n in removed.items() if n},
                }
        return report


def _share(flags: np.ndarray) -> float | None:
    return float(flags.mean()) if len(flags) else None


def _ids(samples: ScoredSamples, row: int) -> tuple[str, str, int, float]:
    return (
        str(samples.prompt_ids[samples.prompt[row]]),
        samples.languages[samples.language[row]],
        int(samples.sample_index[row]),
        float(samples.reward[row]),
    )


def _sft_record(samples: ScoredSamples, texts, row: int, pool_size: int) -> dict:
    prompt_id, language, index, reward = _ids(samples, row)
    prompt, response, _ = texts[row]
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
        "prompt": [{"role": "user", "content": texts[prompt_row].prompt}],
        "chosen": [{"role": "assistant", "content": texts[chosen].response}],
        "rejected": [{"role": "assistant", "content": texts[rejected].response}],
        "chosen_reward": chosen_reward,
        "rejected_reward": rejected_reward,
        "margin": chosen_reward - rejected_reward,
        "chosen_sample_index": chosen_index,
        "rejected_sample_index": rejected_index,
        "pool_size": pool_size,
    }
