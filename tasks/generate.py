"""Stage 1: the policy answers every prompt of one language `num_samples` times (its self-generations).

The first user message of each conversation is sent, optionally with an instruction to
answer in the prompt's language; both the original and the sent text are kept. Prompts are
cut into shards; each shard has its own seed, drawn from the run seed, the language and the
shard's number, so a resumed run samples exactly what an uninterrupted one would, whichever
other languages the run has.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pyarrow.compute as pc
from tqdm.auto import tqdm

from croco.caching import stage_task
from croco.config import CrocoConfig
from croco.engines import SamplingParams, engine_identity, load_generator
from croco.fileio import stable_hash
from croco.languages import LANGUAGE_INSTRUCTION, LANGUAGES
from croco.models import model_identity
from croco.plan import Unit
from croco.records import PROMPT, SAMPLE
from croco.storage import Version
from croco.tasks import always, per_language, throughput

NAME = "generate"
CODE_VERSION = "1"

enabled = always
units = per_language


def inputs(cfg: CrocoConfig, language: str, model: None) -> list[str]:
    return [f"prompts/{language}"]


def settings(cfg: CrocoConfig, language: str, model: None) -> dict[str, Any]:
    return {
        "language": language,
        "policy": model_identity(cfg.models.policy),
        "engine": engine_identity(cfg.generate.engine, cfg.models.policy),
        "generate": cfg.generate.model_dump(exclude={"engine"}),
        "seed": cfg.seed,
    }


def prompt_to_send(prompt: str, language: str, respond_in_language: bool) -> str:
    if not respond_in_language:
        return prompt
    return f"{prompt}\n\n{LANGUAGE_INSTRUCTION.format(language=LANGUAGES[language].name)}"


def shard_seed(seed: int, language: str, shard: int) -> int:
    return int(stable_hash([seed, language, shard]), 16) % 2**31


def shard_name(index: int) -> str:
    return f"{index:05d}"


@stage_task
def generate(cfg: CrocoConfig, unit: Unit, out: Version, inputs: dict[str, Version]) -> dict[str, Any]:
    settings_ = cfg.generate
    prompts = inputs[f"prompts/{unit.language}"].read(PROMPT).to_pylist()
    shards = [prompts[i : i + settings_.prompts_per_shard] for i in range(0, len(prompts), settings_.prompts_per_shard)]
    finished = out.finished_shards()
    todo = [i for i in range(len(shards)) if shard_name(i) not in finished]
    resumed = len(shards) - len(todo)

    work_s, new_samples, new_tokens = 0.0, 0, 0
    if todo:
        generator = load_generator(settings_.engine, cfg.models.policy)
        total = sum(len(shards[i]) for i in todo) * settings_.num_samples
        with tqdm(total=total, unit="sample", desc=f"generate {unit.language}", dynamic_ncols=True) as bar:
            for index in todo:
                started = time.perf_counter()
                records = _generate_shard(generator, shards[index], cfg, shard_seed(cfg.seed, unit.language, index), bar.update)
                work_s += time.perf_counter() - started
                out.write_shard(shard_name(index), records, SAMPLE)
                new_samples += len(records)
                new_tokens += sum(r["completion_tokens"] or 0 for r in records)  # an unknown count (None) is left out

    written = out.read(SAMPLE, columns=["finish_reason", "completion_tokens"])
    return {
        "records_in": len(prompts),
        "records_out": written.num_rows,
        "samples_generated_now": new_samples,
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

