"""Stage 1: the policy answers every prompt of one language `num_samples` times (its self-generations).

The prompts are the language's loaded ones, or its translations where the config translates it (croco.translation).

The first user message of each conversation is sent, optionally with an instruction to
answer in the prompt's language; both the original and the sent text are kept. Prompts are
cut into shards; each shard has its own seed, drawn from the run seed, the language and the
shard's number, so a resumed run samples exactly what an uninterrupted one would, whichever
other languages the run has.

A prompt longer than fits (`prompt_token_limit`: by default the policy's context minus
`max_new_tokens`, counted with the policy's tokenizer and chat template as it is sent) is
never sent: it is written to the shard's skipped records as `prompt_too_long` and counted,
before the model is loaded.

Every sample records the language it is written in (croco.fidelity); the manifest's `fidelity` gives the share of
samples in the prompt's language and the line-level pass rate.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import pyarrow.compute as pc
from tqdm.auto import tqdm

from croco.caching import stage_task
from croco.config import CrocoConfig
from croco.engines import SamplingParams, engine_identity, load_generator
from croco.errors import CrocoError
from croco.fidelity import detected, fidelity
from croco.fileio import stable_hash
from croco.languages import LANGUAGE_INSTRUCTION, LANGUAGES
from croco.models import context_length, encode_chat, load_tokenizer, model_identity
from croco.plan import Unit
from croco.records import PROMPT, SAMPLE, SKIPPED
from croco.storage import Version
from croco.tasks import always, per_language, throughput
from croco.translation import prompts_unit

log = logging.getLogger("croco")

NAME = "generate"
CODE_VERSION = "3"  # 2: prompts longer than fit are skipped (prompt_too_long); 3: samples record their language
LOADS_MODEL = True
PROMPT_TOO_LONG = "prompt_too_long"

enabled = always
units = per_language


def inputs(cfg: CrocoConfig, language: str, model: None) -> list[str]:
    return [prompts_unit(cfg, language)]


def settings(cfg: CrocoConfig, language: str, model: None) -> dict[str, Any]:
    return {
        "language": language,
        "policy": model_identity(cfg.models.policy),
        "engine": engine_identity(cfg.generate.engine, cfg.models.policy),
        "generate": cfg.generate.model_dump(exclude={"engine"}),
        "prompt_token_limit": prompt_token_limit(cfg),
        "seed": cfg.seed,
    }


def prompt_token_limit(cfg: CrocoConfig) -> int:
    """The longest prompt generate sends: `generate.max_prompt_tokens`, else what leaves room for a whole answer of
    `max_new_tokens` in the policy's context (an OpenAI-compatible server such as vLLM refuses a request that does not fit)."""
    settings_, policy = cfg.generate, cfg.models.policy
    if settings_.max_prompt_tokens is not None:
        return settings_.max_prompt_tokens
    context = context_length(policy)
    if context is None:
        raise CrocoError(
            f"models.policy {policy.path} names no context length (max_position_embeddings) in its config.json; set generate.max_prompt_tokens"
        )
    if context <= settings_.max_new_tokens:
        raise CrocoError(
            f"generate.max_new_tokens ({settings_.max_new_tokens}) leaves no room for a prompt in the {context}-token context of "
            f"models.policy {policy.path}; lower it or set generate.max_prompt_tokens"
        )
    return context - settings_.max_new_tokens


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
    prompts = inputs[prompts_unit(cfg, unit.language)].read(PROMPT).to_pylist()  # loaded or translated
    shards = [prompts[i : i + settings_.prompts_per_shard] for i in range(0, len(prompts), settings_.prompts_per_shard)]
    todo = [int(name) for name in out.todo([shard_name(i) for i in range(len(shards))])]  # a name is its index
    resumed = len(shards) - len(todo)

    work_s, new_samples, new_tokens = 0.0, 0, 0
    if todo:
        too_long = _too_long(cfg, [p for i in todo for p in shards[i]])  # before the model is loaded
        if too_long:
            log.warning(
                "%s: %d prompts are longer than %d tokens: skipped (%s)",
                unit.id,
                len(too_long),
                prompt_token_limit(cfg),
                PROMPT_TOO_LONG,
            )
        fitting = {i: [p for p in shards[i] if p["prompt_id"] not in too_long] for i in todo}
        generator = load_generator(settings_.engine, cfg.models.policy) if any(fitting.values()) else None
        total = sum(len(fitting[i]) for i in todo) * settings_.num_samples
        with tqdm(total=total, unit="sample", desc=f"generate {unit.language}", dynamic_ncols=True) as bar:
            for index in todo:
                started = time.perf_counter()
                records = (
                    _generate_shard(
                        generator, fitting[index], cfg, shard_seed(cfg.seed, unit.language, index), bar.update
                    )
                    if fitting[index]
                    else []
                )
                work_s += time.perf_counter() - started
                skipped = [too_long[p["prompt_id"]] for p in shards[index] if p["prompt_id"] in too_long]
                out.write_shard(shard_name(index), records, SAMPLE, skipped, SKIPPED)
                new_samples += len(records)
                new_tokens += sum(r["completion_tokens"] or 0 for r in records)  # an unknown count (None) is left out
    if out.array_task:
        return {}  # one array task's shards: the flow commits once every task's are done

    written = out.read(SAMPLE, columns=["finish_reason", "completion_tokens", "detected_language", "line_pass_rate"])
    skipped_reasons = Counter(out.read(SKIPPED, columns=["reason"], skipped=True)["reason"].to_pylist())
    if not written.num_rows:
        raise CrocoError(
            f"no prompt in language {unit.language!r} fits: all {len(prompts)} are longer than {prompt_token_limit(cfg)} tokens (their ids are "
            f"in the skipped records of {out.uri}); shorten them, lower generate.max_new_tokens or set generate.max_prompt_tokens"
        )
    return {
        "records_in": len(prompts),
        "records_out": written.num_rows,
        "samples_generated_now": new_samples,
        "skipped": dict(skipped_reasons),
        "shards": len(shards),
        "shards_resumed": resumed,
        "finish_reasons": dict(Counter(written["finish_reason"].to_pylist())),
        "completion_tokens": int(pc.sum(written["completion_tokens"]).as_py() or 0),
        "throughput": throughput(new_samples, new_tokens, work_s),
        "fidelity": fidelity(
            unit.language, written["detected_language"].to_pylist(), written["line_pass_rate"].to_pylist()
        ),
    }


def _first_user_message(prompt: dict) -> str:
    return next(m["content"] for m in prompt["messages"] if m["role"] == "user")


def _too_long(cfg: CrocoConfig, prompts: list[dict]) -> dict[str, dict]:
    """The skipped records of the prompts longer than `prompt_token_limit`, by prompt id; counted as they are sent: the first
    user message with any language instruction, in the policy's chat template."""
    limit, policy = prompt_token_limit(cfg), cfg.models.policy
    tokenizer = load_tokenizer(policy)
    found = {}
    for prompt in prompts:
        text = prompt_to_send(_first_user_message(prompt), prompt["language"], cfg.generate.respond_in_language)
        tokens = len(encode_chat(tokenizer, [{"role": "user", "content": text}], True, policy.chat_template_kwargs))
        if tokens > limit:
            found[prompt["prompt_id"]] = {
                "prompt_id": prompt["prompt_id"],
                "language": prompt["language"],
                "sample_index": None,
                "reason": PROMPT_TOO_LONG,
                "detail": f"{tokens} tokens; at most {limit} fit",
            }
    return found


def _generate_shard(generator, prompts: list[dict], cfg: CrocoConfig, seed: int, progress) -> list[dict]:
    settings_ = cfg.generate
    originals = [_first_user_message(p) for p in prompts]
    sent = [prompt_to_send(text, p["language"], settings_.respond_in_language) for text, p in zip(originals, prompts)]
    params = SamplingParams(
        settings_.num_samples, settings_.max_new_tokens, settings_.temperature, settings_.top_p, seed
    )
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
            **detected(completion.text, prompt["language"]),
        }
        for prompt, original, text, samples in zip(prompts, originals, sent, completions)
        for index, completion in enumerate(samples)
    ]
