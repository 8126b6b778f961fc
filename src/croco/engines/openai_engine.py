"""The OpenAI-compatible engine: any server that speaks /v1/chat/completions.

vLLM's and SGLang's servers, `transformers serve` and hosted APIs all fit. Requests run
concurrently up to `engine.concurrency`; the `openai` client retries failed ones with
exponential backoff. Each request asks for all of a prompt's samples at once (`n`), and
asks again for the rest if a server returns fewer. Each sample keeps the finish reason the
server gave it; a server counts tokens per request, so a sample's own token count is known
only when its response held no other sample (else it is None). The API key is read from the
variable named in `engine.api_key_env` and is never written anywhere.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from croco.config import EngineConfig, ModelConfig
from croco.embedded import is_embedded, resolve_model
from croco.engines import Completion, Messages, Progress, SamplingParams
from croco.errors import CrocoError
from croco.fileio import stable_hash
from croco.redaction import api_key


class OpenAIGenerator:
    def __init__(self, engine: EngineConfig, model: ModelConfig):
        if model.adapter and not engine.served_model:
            raise CrocoError(
                f"the openai engine cannot apply adapter {model.adapter} itself; serve it (e.g. vLLM --lora-modules) and give its "
                "served name (evaluate.served_models for an evaluated model, else engine.served_model), or merge it first with `croco merge`"
            )
        key = api_key(engine.api_key_env, "engine.api_key_env")  # remembered, so it is masked wherever it turns up
        self.base_url = engine.base_url
        self.client_settings = {
            "base_url": engine.base_url,
            "api_key": key or "none",
            "max_retries": engine.max_retries,
            "timeout": engine.timeout_s,
        }
        # An embedded model is served from its cache folder, so the server knows it by that path.
        self.model = engine.served_model or (resolve_model(model.path) if is_embedded(model.path) else model.path)
        self.concurrency = engine.concurrency
        self.extra_body = {"chat_template_kwargs": model.chat_template_kwargs} if model.chat_template_kwargs else None

    def generate(
        self,
        prompts: Sequence[Messages],
        params: SamplingParams,
        progress: Progress | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        # A prompt's requests are seeded from its own seed, or else from its place in this call.
        origins = [[seed] for seed in seeds] if seeds is not None else [[params.seed, i] for i in range(len(prompts))]
        return asyncio.run(self._generate_all(prompts, params, progress, origins))

    async def _generate_all(
        self, prompts: Sequence[Messages], params: SamplingParams, progress: Progress | None, origins: list[list[int]]
    ) -> list[list[Completion]]:
        import openai

        limit = asyncio.Semaphore(self.concurrency)
        try:
            # A client per call: each call runs its own event loop, and the client closes with it.
            async with openai.AsyncOpenAI(**self.client_settings) as client:
                return list(
                    await asyncio.gather(
                        *(
                            self._samples(client, i, p, origins[i], params, limit, progress)
                            for i, p in enumerate(prompts)
                        )
                    )
                )
        except openai.APIError as exc:
            status = getattr(exc, "status_code", None)
            raise CrocoError(
                f"request to {self.base_url} (model {self.model}) failed{f' with status {status}' if status else ''}: {exc.message}"
            ) from None

    async def _samples(
        self,
        client: Any,
        index: int,
        messages: Messages,
        origin: list[int],
        params: SamplingParams,
        limit: asyncio.Semaphore,
        progress: Progress | None,
    ) -> list[Completion]:
        samples: list[Completion] = []
        while len(samples) < params.num_samples:
            async with limit:
                response = await client.chat.completions.create(**self._request(messages, params, origin, len(samples)))
            if not response.choices:
                raise CrocoError(f"{self.base_url} returned no choices for prompt {index}")
            samples.extend(_completion(choice, response.usage, len(response.choices)) for choice in response.choices)
            if progress:
                progress(len(response.choices))
        return samples[: params.num_samples]

    def _request(self, messages: Messages, params: SamplingParams, origin: list[int], done: int) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "n": params.num_samples - done,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            # One seed per prompt (and per follow-up request), so the same run asks for the same samples again.
            "seed": int(stable_hash([*origin, done]), 16) % 2**31,
        }
        if self.extra_body:
            request["extra_body"] = self.extra_body
        return request


def _completion(choice: Any, usage: Any, choices: int) -> Completion:
    message = choice.message
    extra = message.model_extra or {}
    # vLLM returns a reasoning parser's trace as `reasoning_content` (older) or `reasoning` (newer).
    reasoning = extra.get("reasoning_content") or extra.get("reasoning") or ""
    # Servers report one usage for all `n` choices of a request: a choice's own token count is known only when
    # it is the only choice; a share of the total would be a made-up number.
    return Completion(
        text=(message.content or "").strip(),
        finish_reason=choice.finish_reason or "unknown",
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage and choices == 1 else None,
        reasoning=reasoning.strip(),
    )
