"""Stage 2: the reward model scores every sample of one language.

The conversation scored is [user: the prompt as sent, assistant: the response], rendered
with the reward model's own chat template. The reward is the classifier's raw logit.
A sample that cannot be scored (longer than `score.max_len`, or a non-finite logit) is
written to the skipped records with its reason; it never gets a stand-in value.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pyarrow.compute as pc
from tqdm.auto import tqdm

from croco.caching import stage_task
from croco.config import CrocoConfig
from croco.engines import engine_identity, load_scorer
from croco.models import model_identity
from croco.plan import Unit
from croco.records import SAMPLE, SCORE, SKIPPED
from croco.storage import Version
from croco.tasks import always, per_language, throughput

NAME = "score"
CODE_VERSION = "1"
LOADS_MODEL = True

enabled = always
units = per_language


def inputs(cfg: CrocoConfig, language: str, model: None) -> list[str]:
    return [f"generate/{language}"]


def settings(cfg: CrocoConfig, language: str, model: None) -> dict[str, Any]:
    engine = engine_identity(cfg.score.engine, cfg.models.reward)
    return {
        "language": language,
        "reward": model_identity(cfg.models.reward),
        "engine": engine,
        "score": cfg.score.model_dump(exclude={"engine"}),
    }


@stage_task
def score(cfg: CrocoConfig, unit: Unit, out: Version, inputs: dict[str, Version]) -> dict[str, Any]:
    # Score shard i holds the scores of generate shard i, so resume works shard by shard here too.
    upstream = inputs[f"generate/{unit.language}"]
    todo = out.todo(upstream.shard_names())

    work_s, new_samples, new_tokens = 0.0, 0, 0
    if todo:
        scorer = load_scorer(cfg.score.engine, cfg.models.reward)
        total = sum(upstream.read_shard(i, SAMPLE).num_rows for i in todo)
        with tqdm(total=total, unit="sample", desc=f"score {unit.language}", dynamic_ncols=True) as bar:
            for index in todo:
                samples = upstream.read_shard(index, SAMPLE).to_pylist()
                started = time.perf_counter()
                conversations = [
                    [{"role": "user", "content": s["prompt_sent"]}, {"role": "assistant", "content": s["response"]}]
                    for s in samples
                ]
                scores = scorer.score(conversations, cfg.score.max_len, bar.update)
                work_s += time.perf_counter() - started
                scored, skipped = _split(samples, scores, cfg.models.reward.path)
                out.write_shard(index, scored, SCORE, skipped, SKIPPED)
                new_samples += len(samples)
                new_tokens += sum(s.num_tokens for s in scores if s.reward is not None)
    if out.array_task:
        return {}  # one array task's shards: the flow commits once every task's are done

    skipped_reasons = Counter(out.read(SKIPPED, skipped=True)["reason"].to_pylist())
    rewards = out.read(SCORE, columns=["reward"])["reward"]
    scored_total = len(rewards)
    return {
        "reward_stats": {
            name: round(float(pc.call_function(name, [rewards]).as_py() or 0.0), 4)
            for name in ("mean", "stddev", "min", "max")
        }
        if scored_total
        else {},
        "records_in": scored_total + sum(skipped_reasons.values()),
        "records_out": scored_total,
        "skipped": dict(skipped_reasons),
        "throughput": throughput(new_samples, new_tokens, work_s),
    }


def _split(samples: list[dict], scores, reward_model: str) -> tuple[list[dict], list[dict]]:
    scored, skipped = [], []
    for sample, score in zip(samples, scores):
        key = {"prompt_id": sample["prompt_id"], "language": sample["language"], "sample_index": sample["sample_index"]}
        if score.reward is None:
            skipped.append({**key, "reason": score.skip_reason, "detail": f"{score.num_tokens} tokens"})
        else:
            scored.append(
                {**key, "reward": score.reward, "scored_tokens": score.num_tokens, "reward_model": reward_model}
            )
    return scored, skipped
