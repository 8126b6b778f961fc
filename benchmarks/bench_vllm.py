"""The vllm engine against the transformers engine on the embedded policy: the same sampled answers, tokens/s.

    .venv/bin/python benchmarks/bench_vllm.py [--prompts 4] [--samples 8] [--max-new-tokens 64] [--rounds 3] [--compile]

Both engines run through croco's Generator protocol in this process, one after the other (never at once):
the transformers engine in its CPU dtype (float32), vLLM in its default bfloat16, eager unless --compile.
Counted: completion tokens (up to and including the end-of-turn token) over generation time only; engine
start-up is printed apart. Rounds alternate the engines and the best of each is kept, since this machine is shared.
"""

from __future__ import annotations

import argparse
import json
import time

from croco.config import EngineConfig, ModelConfig
from croco.embedded import POLICY, PREFIX, data_file
from croco.engines import SamplingParams, load_generator


def english_prompts(count: int) -> list[list[dict[str, str]]]:
    rows = [json.loads(line) for line in data_file("prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r["messages"] for r in rows if r["language"] == "en"][:count]


def timed(generator, prompts, params) -> tuple[int, float]:
    began = time.perf_counter()
    results = generator.generate(prompts, params, seeds=list(range(len(prompts))))
    seconds = time.perf_counter() - began
    assert all(len(samples) == params.num_samples for samples in results)
    return sum(c.completion_tokens for samples in results for c in samples), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="vLLM with torch.compile (a minute or more to start)")
    args = parser.parse_args()
    prompts = english_prompts(args.prompts)
    params = SamplingParams(args.samples, args.max_new_tokens, temperature=1.0, top_p=1.0, seed=0)
    model = ModelConfig(path=PREFIX + POLICY)
    engines = {
        "transformers (float32)": EngineConfig(
            name="transformers", device="cpu", batch_size=len(prompts) * args.samples
        ),
        f"vllm (bfloat16, {'compiled' if args.compile else 'eager'})": EngineConfig(
            name="vllm", kv_cache_gib=1, enforce_eager=not args.compile
        ),
    }
    generators = {}
    for name, engine in engines.items():
        began = time.perf_counter()
        generators[name] = load_generator(engine, model)
        print(f"{name}: started in {time.perf_counter() - began:.1f} s", flush=True)
    best = {name: 0.0 for name in engines}
    for round_ in range(args.rounds):
        for name, generator in generators.items():
            tokens, seconds = timed(generator, prompts, params)
            best[name] = max(best[name], tokens / seconds)
            print(f"round {round_ + 1} {name}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.0f} tokens/s")
    answers = f"{len(prompts)} prompts x {args.samples} samples, up to {args.max_new_tokens} new tokens"
    print(f"best of {args.rounds} rounds, {answers}:")
    for name, rate in best.items():
        print(f"  {name}: {rate:.0f} tokens/s")
    vllm_rate, transformers_rate = best[list(engines)[1]], best[list(engines)[0]]
    print(f"  vllm / transformers: {vllm_rate / transformers_rate:.2f}")


if __name__ == "__main__":  # vLLM may spawn worker processes, which import this file again
    main()
