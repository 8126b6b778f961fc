"""The transformers engine: runs on a CPU or one GPU with nothing but transformers installed.

Sequences are sorted by prompt length and batched with left padding, so a batch wastes
little compute on padding; results go back in the caller's order.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from transformers import (
    AutoModelForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from croco.config import EngineConfig, ModelConfig
from croco.engines import Completion, Messages, Progress, SamplingParams, Score
from croco.fileio import stable_hash
from croco.models import encode_chat, load_model, load_reward_model, load_tokenizer, pick_device


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def sampling_arguments(params: SamplingParams, generator: torch.Generator) -> dict:
    """Plain sampling as vLLM does it by default (temperature and top_p; transformers would otherwise add top_k=50),
    drawn from `generator`: torch's global generator is shared by every unit running in this process."""
    if params.temperature == 0:
        return {"do_sample": False}
    warpers = [TemperatureLogitsWarper(params.temperature)] if params.temperature != 1.0 else []
    warpers += [TopPLogitsWarper(params.top_p)] if params.top_p < 1.0 else []
    # generate's own sampling draws from the global generator: it picks greedily what SampleWith drew.
    return {"do_sample": False, "logits_processor": LogitsProcessorList([*warpers, SampleWith(generator)])}


class SampleWith(LogitsProcessor):
    """Draws each next token as generate's sampling does (softmax, then multinomial), from a generator of its own;
    leaves only that token for the greedy pick. Seeded alike, it draws the same tokens as the global generator."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.nn.functional.softmax(scores, dim=-1)
        chosen = torch.multinomial(probs, num_samples=1, generator=self.generator)
        return torch.full_like(scores, -math.inf).scatter_(1, chosen, 0.0)


class TransformersGenerator:
    def __init__(self, engine: EngineConfig, model: ModelConfig):
        self.device = pick_device(engine.device)
        self.batch_size = engine.batch_size
        self.tokenizer = load_tokenizer(model, padding_side="left")
        self.model = load_model(model, AutoModelForCausalLM, self.device)
        self.template_kwargs = model.chat_template_kwargs
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Messages],
        params: SamplingParams,
        progress: Progress | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        encoded = [encode_chat(self.tokenizer, messages, True, self.template_kwargs) for messages in prompts]
        # One row per (prompt, sample): rows of one prompt sit together, so batches share prompt lengths.
        rows = [(p, s) for p in range(len(prompts)) for s in range(params.num_samples)]
        results: list[list[Completion | None]] = [[None] * params.num_samples for _ in prompts]
        generator = torch.Generator(self.device).manual_seed(params.seed)
        for batch in _length_sorted_batches([len(encoded[p]) for p, _ in rows], self.batch_size):
            batch_rows = [rows[i] for i in batch]
            if seeds is not None:
                # A batch samples from one random stream: seeded by its own rows, a sample depends on the prompts
                # it is batched with, never on where the batch falls (with batch_size 1, on its prompt alone).
                generator.manual_seed(int(stable_hash([[seeds[p], s] for p, s in batch_rows]), 16) % 2**31)
            inputs = self.tokenizer.pad({"input_ids": [encoded[p] for p, _ in batch_rows]}, return_tensors="pt").to(
                self.device
            )
            output = self.model.generate(
                **inputs,
                max_new_tokens=params.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling_arguments(params, generator),
            )
            new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
            for (p, s), tokens in zip(batch_rows, new_tokens):
                results[p][s] = self._completion(tokens, len(encoded[p]))
            if progress:
                progress(len(batch_rows))
        return results  # type: ignore[return-value]

    def _completion(self, tokens: list[int], prompt_tokens: int) -> Completion:
        stop_at = next((i for i, t in enumerate(tokens) if t in self.stop_ids), None)
        kept = tokens if stop_at is None else tokens[: stop_at + 1]
        return Completion(
            text=self.tokenizer.decode(kept, skip_special_tokens=True).strip(),
            finish_reason="length" if stop_at is None else "stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(kept),
        )


class TransformersScorer:
    def __init__(self, engine: EngineConfig, model: ModelConfig):
        self.device = pick_device(engine.device)
        self.batch_size = engine.batch_size
        self.tokenizer = load_tokenizer(model, padding_side="left")
        self.model = load_reward_model(model, self.device)
        self.template_kwargs = model.chat_template_kwargs
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"reward model {model.path} has {self.model.config.num_labels} labels; croco needs a one-logit classifier"
            )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    @torch.inference_mode()
    def score(self, conversations: Sequence[Messages], max_len: int, progress: Progress | None = None) -> list[Score]:
        encoded = [encode_chat(self.tokenizer, messages, False, self.template_kwargs) for messages in conversations]
        results: list[Score | None] = [None] * len(encoded)
        fitting = []
        for i, ids in enumerate(encoded):
            if len(ids) > max_len:
                results[i] = Score(reward=None, num_tokens=len(ids), skip_reason="too_long")
            else:
                fitting.append(i)
        if progress and len(fitting) < len(encoded):
            progress(len(encoded) - len(fitting))
        for batch in _length_sorted_batches([len(encoded[i]) for i in fitting], self.batch_size):
            indices = [fitting[b] for b in batch]
            inputs = self.tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, return_tensors="pt").to(
                self.device
            )
            logits = self.model(**inputs).logits[:, 0].tolist()
            for i, logit in zip(indices, logits):
                finite = math.isfinite(logit)
                results[i] = Score(
                    reward=logit if finite else None,
                    num_tokens=len(encoded[i]),
                    skip_reason=None if finite else "non_finite_reward",
                )
            if progress:
                progress(len(indices))
        return results  # type: ignore[return-value]
