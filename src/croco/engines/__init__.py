"""The engine interface: what stages ask of an inference backend, and nothing more.

A stage hands over chat conversations (lists of {role, content}) and gets back texts or
scores; rendering chat templates, batching and devices are the engine's business. This
fits transformers (here), vLLM's `LLM.chat` and OpenAI-compatible servers alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from croco.config import EngineConfig, ModelConfig
from croco.errors import CrocoError

Messages = list[dict[str, str]]
Progress = Callable[[int], None]  # called with the number of sequences just finished


@dataclass(frozen=True)
class SamplingParams:
    num_samples: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int


@dataclass(frozen=True)
class Completion:
    text: str
    # "stop", "length" (hit max_new_tokens), or what a server reports (e.g. "content_filter", "abort");
    # "unknown" when it reports none.
    finish_reason: str
    prompt_tokens: int | None  # None where the engine does not know the count for this sample
    completion_tokens: int | None
    reasoning: str = ""  # a reasoning trace the server returned apart from the answer (e.g. vLLM's reasoning_content)


@dataclass(frozen=True)
class Score:
    reward: float | None  # raw logit; None when skipped
    num_tokens: int
    skip_reason: str | None = None


class Generator(Protocol):
    def generate(
        self,
        prompts: Sequence[Messages],
        params: SamplingParams,
        progress: Progress | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """`params.num_samples` completions for each prompt, in prompt order; reproducible for a fixed seed. `seeds`,
        one per prompt, tie each prompt's samples to the prompt rather than to its place among `prompts`."""
        ...


class RewardScorer(Protocol):
    def score(self, conversations: Sequence[Messages], max_len: int, progress: Progress | None = None) -> list[Score]:
        """One raw reward per conversation; longer than `max_len` tokens gives a skip, never a value."""
        ...


def engine_identity(engine: EngineConfig, model: ModelConfig) -> dict[str, str | None]:
    """What of an engine running `model` shapes its output, not where or how fast it runs: its kind and the served
    model on a server; in this process, the device class and dtype (float32 on a CPU, bfloat16 on a GPU)."""
    if engine.name == "openai":
        return {"name": engine.name, "served_model": engine.served_model}
    if engine.name == "vllm":  # named without importing vLLM: a key is made where the engine may not be installed
        from croco.engines.vllm_engine import vllm_dtype

        return {"name": engine.name, "dtype": vllm_dtype(model)}
    from croco.models import precision  # here: croco.models loads torch

    return {"name": engine.name, **precision(model, engine.device)}


def load_generator(engine: EngineConfig, model: ModelConfig) -> Generator:
    if engine.name == "openai":
        from croco.engines.openai_engine import OpenAIGenerator

        return OpenAIGenerator(engine, model)
    if engine.name == "vllm":
        from croco.engines.vllm_engine import VllmGenerator

        return VllmGenerator(engine, model)
    from croco.engines.transformers_engine import TransformersGenerator

    return TransformersGenerator(engine, model)


def load_scorer(engine: EngineConfig, model: ModelConfig) -> RewardScorer:
    if engine.name == "vllm":
        from croco.engines.vllm_engine import VllmScorer

        return VllmScorer(engine, model)
    if engine.name != "transformers":
        raise CrocoError(
            f"reward models run on the transformers or vllm engine (got engine {engine.name!r} for {model.path})"
        )
    from croco.engines.transformers_engine import TransformersScorer

    return TransformersScorer(engine, model)
