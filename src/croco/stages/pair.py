"""Stage 2.5: controlled-contrast pairs from the scored samples (rules: croco.pairing).

Writes four training sets in TRL's conversational format, each loadable with `datasets`:

    pair/sft_in_language.parquet     best answer per (prompt, language)
    pair/dpo_in_language.parquet     best vs. near-target answer per (prompt, language)
    pair/sft_all_languages.parquet   best answer per prompt across languages, prompt in its language
    pair/dpo_all_languages.parquet   best vs. near-target answer per prompt across languages

Only ids and rewards are held in memory for the selection; the texts of the selected
samples are then read from the generate stage's shards.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from croco.config import CrocoConfig
from croco.errors import CrocoError
from croco.pairing import PRODUCTS, ScoredSamples, build_products
from croco.records import DPO, SAMPLE, SCORE, SFT
from croco.store import StageStore

NAME = "pair"
INPUT = "score"


def settings(cfg: CrocoConfig) -> dict[str, Any]:
    return {"pair": cfg.pair.model_dump(), "languages": cfg.languages, "seed": cfg.seed}


def run(cfg: CrocoConfig, out: StageStore, upstream: StageStore | None) -> dict[str, Any]:
    scores = upstream.read(SCORE, columns=["prompt_id", "language", "sample_index", "reward"])
    prompt_ids = np.array(pc.unique(scores["prompt_id"]).to_pylist(), dtype=object)
    samples = ScoredSamples(
        prompt_ids=prompt_ids,
        languages=list(cfg.languages),
        prompt=_codes(scores["prompt_id"], prompt_ids),
        language=_codes(scores["language"], np.array(cfg.languages, dtype=object)),
        sample_index=scores["sample_index"].to_numpy().astype(np.int64),
        reward=scores["reward"].to_numpy(),
    )
    _check_one_reward_per_sample(samples)
    generate = StageStore(out.path.parent, "generate")
    text_column = "prompt_sent" if cfg.pair.prompt_text == "sent" else "prompt"
    products, skipped = build_products(
        samples, cfg.pair.target, cfg.pair.k, cfg.pair.prompt_source, cfg.seed, lambda rows: _fetch(generate, samples, rows, text_column)
    )
    for name in PRODUCTS:
        out.write_table(name, products[name], SFT if name.startswith("sft") else DPO)
    return {
        "records_in": scores.num_rows,
        "records_out": sum(len(records) for records in products.values()),
        "products": {name: len(records) for name, records in products.items()},
        "skipped": skipped,
    }


def _check_one_reward_per_sample(samples: ScoredSamples) -> None:
    key = samples.sample_key(samples.prompt, samples.language, samples.sample_index)
    unique, counts = np.unique(key, return_counts=True)
    if (counts > 1).any():
        row = int(np.flatnonzero(key == unique[counts > 1][0])[0])
        raise CrocoError(f"the score stage holds two rewards for {samples.describe(row)}; rerun `croco score --force`")


def _codes(column, values: np.ndarray) -> np.ndarray:
    """Position of each value in `values`; -1 for values not there."""
    codes = pc.index_in(column, value_set=pa.array(values.tolist(), type=pa.string())).fill_null(-1)
    return codes.to_numpy().astype(np.int64)


def _fetch(generate: StageStore, samples: ScoredSamples, rows: np.ndarray, text_column: str) -> dict[int, tuple[str, str]]:
    """Read the prompt and response of the given rows, one generate shard at a time."""
    if not len(rows):
        return {}
    wanted = samples.sample_key(samples.prompt[rows], samples.language[rows], samples.sample_index[rows])
    order = np.argsort(wanted)
    wanted_sorted, rows_sorted = wanted[order], rows[order]
    texts: dict[int, tuple[str, str]] = {}
    for index in generate.shard_indices():
        shard = generate.read_shard(index, SAMPLE).select(["prompt_id", "language", "sample_index", text_column, "response"])
        prompt = _codes(shard["prompt_id"], samples.prompt_ids)
        language = _codes(shard["language"], np.array(samples.languages, dtype=object))
        keys = np.where((prompt >= 0) & (language >= 0), samples.sample_key(prompt, language, shard["sample_index"].to_numpy().astype(np.int64)), -1)
        position = np.clip(np.searchsorted(wanted_sorted, keys), 0, len(wanted_sorted) - 1)
        hits = np.flatnonzero(wanted_sorted[position] == keys)
        prompts, responses = shard[text_column].take(hits).to_pylist(), shard["response"].take(hits).to_pylist()
        for hit, prompt, response in zip(hits, prompts, responses):
            texts[int(rows_sorted[position[hit]])] = (prompt, response)
    missing = [int(row) for row in rows if int(row) not in texts]
    if missing:
        raise CrocoError(f"{samples.describe(missing[0])} has a score but no generated answer; rerun `croco score --force`")
    return texts
