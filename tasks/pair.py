"""Stage 2.5: controlled-contrast pairs from the scored samples (rules: croco.pairing).

Writes four training sets in TRL's conversational format, each loadable with `datasets`:

    data/part-sft_in_language.parquet     best answer per (prompt, language)
    data/part-dpo_in_language.parquet     best vs. near-target answer per (prompt, language)
    data/part-sft_all_languages.parquet   best answer per prompt across languages, prompt in its language
    data/part-dpo_all_languages.parquet   best vs. near-target answer per prompt across languages

Only ids and rewards are held in memory for the selection; the texts of the selected
samples are then read from the generate stage's shards, with the language each was detected in: the manifest's
`fidelity` gives per language the share of chosen and rejected answers in their prompt's language, and
`pair.require_language` removes pools whose chosen (or rejected) answer is not (croco.pairing), counted in `skipped`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from croco.caching import stage_task
from croco.config import CrocoConfig
from croco.errors import CrocoError
from croco.pairing import PRODUCTS, ScoredSamples, Text, build_products
from croco.plan import Unit
from croco.records import DPO, SAMPLE, SCORE, SFT
from croco.storage import Version
from croco.tasks import across_languages, always

NAME = "pair"
CODE_VERSION = "2"  # 2: language fidelity of chosen and rejected answers, pair.require_language
LOADS_MODEL = False

enabled = always
units = across_languages


def inputs(cfg: CrocoConfig, language: str, model: None) -> list[str]:
    return [f"{stage}/{code}" for code in cfg.languages for stage in ("generate", "score")]


def settings(cfg: CrocoConfig, language: str, model: None) -> dict[str, Any]:
    return {"pair": cfg.pair.model_dump(), "languages": cfg.languages, "seed": cfg.seed}


def product_schema(name: str) -> pa.Schema:
    return SFT if name.startswith("sft") else DPO


@stage_task
def pair(cfg: CrocoConfig, unit: Unit, out: Version, inputs: dict[str, Version]) -> dict[str, Any]:
    columns = ["prompt_id", "language", "sample_index", "reward"]
    scores = pa.concat_tables(inputs[f"score/{code}"].read(SCORE, columns=columns) for code in cfg.languages)
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
    generated = [inputs[f"generate/{code}"] for code in cfg.languages]
    text_column = "prompt_sent" if cfg.pair.prompt_text == "sent" else "prompt"
    products, skipped, fidelity = build_products(
        samples,
        cfg.pair.target,
        cfg.pair.k,
        cfg.pair.prompt_source,
        cfg.seed,
        lambda rows: _fetch(generated, samples, rows, text_column),
        cfg.pair.require_language,
    )
    for name in PRODUCTS:
        out.write_shard(name, products[name], product_schema(name))
    return {
        "records_in": scores.num_rows,
        "records_out": sum(len(records) for records in products.values()),
        "products": {name: len(records) for name, records in products.items()},
        "skipped": skipped,
        "fidelity": fidelity,
    }


def _check_one_reward_per_sample(samples: ScoredSamples) -> None:
    key = samples.sample_key(samples.prompt, samples.language, samples.sample_index)
    unique, counts = np.unique(key, return_counts=True)
    if (counts > 1).any():
        row = int(np.flatnonzero(key == unique[counts > 1][0])[0])
        raise CrocoError(
            f"the score stage holds two rewards for {samples.describe(row)}; delete that score version (`croco plan` lists it) and run again"
        )


def _codes(column, values: np.ndarray) -> np.ndarray:
    """Position of each value in `values`; -1 for values not there."""
    codes = pc.index_in(column, value_set=pa.array(values.tolist(), type=pa.string())).fill_null(-1)
    return codes.to_numpy().astype(np.int64)


def _fetch(generated: list[Version], samples: ScoredSamples, rows: np.ndarray, text_column: str) -> dict[int, Text]:
    """Read the prompt, response and detected language of the given rows, one generate shard at a time."""
    if not len(rows):
        return {}
    wanted = samples.sample_key(samples.prompt[rows], samples.language[rows], samples.sample_index[rows])
    order = np.argsort(wanted)
    wanted_sorted, rows_sorted = wanted[order], rows[order]
    texts: dict[int, Text] = {}
    for generate, index in ((version, name) for version in generated for name in version.shard_names()):
        shard = generate.read_shard(
            index,
            SAMPLE,
            columns=["prompt_id", "language", "sample_index", text_column, "response", "detected_language"],
        )
        prompt = _codes(shard["prompt_id"], samples.prompt_ids)
        language = _codes(shard["language"], np.array(samples.languages, dtype=object))
        keys = np.where(
            (prompt >= 0) & (language >= 0),
            samples.sample_key(prompt, language, shard["sample_index"].to_numpy().astype(np.int64)),
            -1,
        )
        position = np.clip(np.searchsorted(wanted_sorted, keys), 0, len(wanted_sorted) - 1)
        hits = np.flatnonzero(wanted_sorted[position] == keys)
        found = zip(
            *(shard[column].take(hits).to_pylist() for column in (text_column, "response", "detected_language"))
        )
        for hit, text in zip(hits, found):
            texts[int(rows_sorted[position[hit]])] = Text(*text)
    missing = [int(row) for row in rows if int(row) not in texts]
    if missing:
        raise CrocoError(
            f"{samples.describe(missing[0])} has a score but no generated answer; delete that score version (`croco plan` lists it) and run again"
        )
    return texts
