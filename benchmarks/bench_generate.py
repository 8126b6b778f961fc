"""Generate stage vs a plain batched `model.generate` loop, same model, prompts and settings.

    .venv/bin/python benchmarks/bench_generate.py [--prompts 8] [--samples 4] [--max-new-tokens 128] [--rounds 2]

Both sides count useful tokens (up to and including the end-of-turn token) over generation
time only (model loading excluded); rounds alternate baseline and stage and the best of each
is kept, since this machine is noisy. Prints both rates and their ratio (target: >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from croco.config import parse_config
from croco.embedded import POLICY, PREFIX, data_file, resolve_model
from croco.plan import build_plan
from croco.storage import storage_of
from croco.tasks.generate import generate
from croco.tasks.prompts import prompts as load_prompts


def demo_prompts(count: int, languages: list[str]) -> list[dict]:
    rows = [json.loads(line) for line in data_file("prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    ids = sorted({r["prompt_id"] for r in rows})[:count]
    return [r for r in rows if r["prompt_id"] in ids and r["language"] in languages]


def baseline(prompts: list[dict], samples: int, max_new_tokens: int, batch_size: int, seed: int) -> tuple[int, float]:
    """The loop a user would write by hand: fixed-size prompt batches, num_return_sequences, left padding."""
    path = resolve_model(PREFIX + POLICY)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    per_batch = max(1, batch_size // samples)
    tokens, seconds = 0, 0.0
    torch.manual_seed(seed)
    for start in range(0, len(prompts), per_batch):
        chats = [[{"role": "user", "content": p["messages"][0]["content"]}] for p in prompts[start : start + per_batch]]
        inputs = tokenizer.apply_chat_template(
            chats, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        )
        began = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=samples,
                pad_token_id=tokenizer.pad_token_id,
            )
        seconds += time.perf_counter() - began
        for row in output[:, inputs["input_ids"].shape[1] :].tolist():
            tokens += row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
    return tokens, seconds


def stage(
    prompts: list[dict], samples: int, max_new_tokens: int, batch_size: int, seed: int, languages: list[str]
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/prompts.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts)
        cfg = parse_config(
            {
                "storage": {"root": f"{tmp}/store"},
                "seed": seed,
                "languages": languages,
                "models": {"policy": {"path": PREFIX + POLICY}, "reward": {"path": "unused"}},
                "data": {"sources": [{"path": path}]},
                "generate": {
                    "num_samples": samples,
                    "max_new_tokens": max_new_tokens,
                    "engine": {"batch_size": batch_size},
                },
            }
        )
        plan = build_plan(cfg, ["generate"])
        for unit in plan.units:  # the stage functions themselves, without Prefect (bench_orchestration measures that)
            (load_prompts if unit.stage == "prompts" else generate).fn(cfg, unit)
        manifests = [storage_of(cfg).version_at(u.version_path).manifest() for u in plan.of("generate")]
        seconds = sum(m["throughput"]["seconds"] for m in manifests)
        tokens = sum(m["throughput"]["tokens_per_s"] * m["throughput"]["seconds"] for m in manifests)
        return {"tokens_per_s": tokens / seconds, "seconds": seconds, "wall_s": sum(m["wall_s"] for m in manifests)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8, help="prompt ids (each in every language)")
    parser.add_argument("--languages", default="en,da,de,ga")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass, on both sides")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    languages = args.languages.split(",")
    prompts = demo_prompts(args.prompts, languages)
    best_baseline, best_stage = 0.0, 0.0
    for round_ in range(args.rounds):
        tokens, seconds = baseline(prompts, args.samples, args.max_new_tokens, args.batch_size, seed=round_)
        measured = stage(prompts, args.samples, args.max_new_tokens, args.batch_size, round_, languages)
        print(
            f"round {round_}: baseline {tokens / seconds:.1f} tokens/s ({tokens} tokens, {seconds:.1f} s); "
            f"stage {measured['tokens_per_s']:.1f} tokens/s ({measured['seconds']:.1f} s generating, {measured['wall_s']:.1f} s wall)"
        )
        best_baseline = max(best_baseline, tokens / seconds)
        best_stage = max(best_stage, measured["tokens_per_s"])
    print(
        f"{len(prompts)} prompts x {args.samples} samples, max {args.max_new_tokens} new tokens, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"best baseline {best_baseline:.1f} tokens/s, best stage {best_stage:.1f} tokens/s, ratio {best_stage / best_baseline:.2f}"
    )


if __name__ == "__main__":
    main()
