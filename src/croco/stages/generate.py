"""Stage 1: the policy answers every prompt `num_samples` times (its self-generations).

The first user message of each conversation is sent, optionally with an instruction to
answer in the prompt's language; both the original and the sent text are kept. Prompts are
cut into shards; each shard has its own seed, so a resumed run samples exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pyarrow.compute as pc
from tqdm.auto import tqdm

from croco.config import CrocoConfig
from croco.engines import SamplingParams, load_generator
from croco.fileio import stable_hash
from croco.languages import LANGUAGE_INSTRUCTION, LANGUAGES
from croco.models import model_identity
from croco.records import PROMPT, SAMPLE, SKIPPED
from croco.stages import throughput
from croco.store import StageStore

NAME = "generate"
INPUT = "prompts"


def settings(cfg: CrocoConfig) -> dict[str, Any]:
    return {"policy": model_identity(cfg.models.policy), "generate": cfg.generate.model_dump(), "seed": cfg.seed}


def prompt_to_send(prompt: str, language: str, respond_in_language: bool) -> str:
    if not respond_in_language:
        return prompt
    return f"{prompt}\n\n{LANGUAGE_INSTRUCTION.format(language=LANGUAGES[language].name)}"


def shard_seed(seed: int, shard: int) -> int:
    return int(stable_hash([seed, shard]), 16) % 2**31


def run(cfg: CrocoConfig, out: StageStore, upstream: StageStore | None) -> dict[str, Any]:
    settings_ = cfg.generate
    prompts = upstream.read(PROMPT).to_pylist()
    shards = [prompts[i : i + settings_.prompts_per_shard] for i in range(0, len(prompts), settings_.prompts_per_shard)]
    todo = [i for i in range(len(shards)) if not out.has_shard(i)]
    resumed = len(shards) - len(todo)

    work_s, new_samples, new_tokens = 0.0, 0, 0
    if todo:
        generator = load_generator(settings_.engine, cfg.models.policy)
        total = sum(len(shards[i]) for i in todo) * settings_.num_samples
        with tqdm(total=total, unit="sample", desc="generate", dynamic_ncols=True) as bar:
            for index in todo:
                started = time.perf_counter()
                records = _generate_shard(generator, shards[index], cfg, shard_seed(cfg.seed, index), bar.update)
                work_s += time.perf_counter() - started
                out.write_shard(index, records, SAMPLE, [], SKIPPED)
                new_samples += len(records)
                new_tokens += sum(r["completion_tokens"] for r in records)

    written = out.read(SAMPLE, columns=["finish_reason", "completion_tokens"])
    return {
        "records_in": len(prompts),
        "records_out": written.num_rows,
        "skipped": {},
        "shards": len(shards),
        "shards_resumed": resumed,
        "finish_reasons": dict(Counter(written["finish_reason"].to_pylist())),
        "completion_tokens": int(pc.sum(written["completion_tokens"]).as_py() or 0),
        "throughput": throughput(new_samples, new_tokens, work_s),
    }


def _generate_shard(generator, prompts: list[dict], cfg: CrocoConfig, seed: int, progress) -> list[dict]:
    settings_ = cfg.generate
    originals = [next(m["content"] for m in p["messages"] if m["role"] == "user") for p in prompts]
    sent = [prompt_to_send(text, p["language"], settings_.respond_in_language) for text, p in zip(originals, prompts)]
    params = SamplingParams(settings_.num_samples, settings_.max_new_tokens, settings_.temperature, settings_.top_p, seed)
    completions = generator.generate([[{"role": "user", "content": text}] for text in sent], params, progress)
    return [
        {
            "prompt_id": prompt["prompt_id"],
            "language": prompt["language"],
            "sample_index": index,
            "prompt": original,
            "prompt_sent": text,
            "response": completion.text,
            "finish_reason": completion.finish_reason,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "policy": cfg.models.policy.path,
        }
        for prompt, original, text, samples in zip(prompts, originals, sent, completions)
        for index, completion in enumerate(samples)
    ]

