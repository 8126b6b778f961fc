"""GPU check: does croco's heavy work run on this machine's GPU, and how fast? Sized for one H100 in under 8 minutes.

    python benchmarks/gpu_check.py            # a GPU: the embedded SmolLM2 for generation and scoring, and a random
                                              # 1.2B Llama built on the spot for SFT and DPO steps (no internet needed)
    python benchmarks/gpu_check.py --tiny     # a 2-layer random model on the CPU: only shows that the script works

Parts: generation with croco's transformers engine (and vLLM's offline LLM where vllm imports), reward scoring,
a few SFT and DPO steps through TRL with croco's trainer arguments and LoRA settings. Prints tokens/s, samples/s and
peak memory per part, and training tokens/s with an MFU estimate: model FLOPs of 6 x parameters per trained token
(forward 2, backward 4; DPO adds 2 for the reference forward), attention and LoRA's own FLOPs left out, over the
peak dense bf16 FLOPs assumed for the device (printed; --peak-tflops sets it). With LoRA the frozen weights need no
weight gradients and gradient checkpointing recomputes the forward, so this is the usual convention, not a count of
what the hardware did. A part whose library is missing (trl, datasets, vllm) is reported and skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

# Peak dense bf16 tensor FLOP/s per device, from the vendors' data sheets (no sparsity).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "MI300X": 1307.0, "MI250X": 191.5, "MI250": 181.0}
WORDS = "the model answers every question in the language it was asked in with care and detail".split()


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no GPU"
    name = torch.cuda.get_device_name(device)
    # MI250X shows as two devices (GCDs): the table holds one GCD's share.
    found = next((tflops for key, tflops in PEAK_TFLOPS.items() if key in name.upper().replace(" ", "")), None)
    return found, name


class Peak:
    """Peak memory of one part: the GPU's allocator where there is one, else this process's peak RSS so far."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.gib = torch.cuda.max_memory_allocated(self.device) / 2**30
            self.kind = "GPU allocated"
        else:
            self.gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            self.kind = "process RSS"
        self.seconds = time.perf_counter() - self.started


def text(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def build_models(tiny: bool, folder: Path) -> dict[str, str]:
    """The policy (generation), a reward model (its backbone with a fresh one-logit head) and the trained base."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from croco.embedded import POLICY, PREFIX, resolve_model

    smollm = resolve_model(PREFIX + POLICY)
    tokenizer = AutoTokenizer.from_pretrained(smollm)
    paths = {}

    def random_llama(name: str, **size) -> str:
        common = dict(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True)
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = LlamaForCausalLM(LlamaConfig(**common, **ids, pad_token_id=tokenizer.pad_token_id, **size))
        model.to(torch.bfloat16).save_pretrained(folder / name)  # half the bytes to write and read back
        tokenizer.save_pretrained(folder / name)
        return str(folder / name)

    if tiny:
        tiny_size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        paths["policy"] = paths["trained"] = random_llama("tiny", num_key_value_heads=2, **tiny_size)
    else:
        paths["policy"] = smollm
        paths["trained"] = random_llama(
            "llama-1.2b",
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
        )
    reward = AutoModelForSequenceClassification.from_pretrained(paths["policy"], num_labels=1)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(folder / "reward")
    tokenizer.save_pretrained(folder / "reward")
    paths["reward"] = str(folder / "reward")
    return paths


def check_generation(paths: dict, device: torch.device, size: dict, prompts: list) -> list[dict]:
    from croco.config import EngineConfig, ModelConfig
    from croco.engines import SamplingParams, load_generator

    params = SamplingParams(size["samples"], size["new_tokens"], temperature=1.0, top_p=1.0, seed=0)
    generator = load_generator(EngineConfig(batch_size=size["generate_batch"]), ModelConfig(path=paths["policy"]))
    with Peak(device) as peak:
        answers = generator.generate(prompts, params)
    tokens = sum(c.completion_tokens or 0 for sample in answers for c in sample)
    rows = [row("generate (transformers engine)", peak, tokens=tokens, samples=len(prompts) * size["samples"])]
    del generator
    if not importlib.util.find_spec("vllm"):
        print("vllm is not installed here: its generation is skipped")
        return rows
    if device.type != "cuda":
        print("vllm's generation is checked on a GPU only: skipped")
        return rows
    from vllm import LLM
    from vllm import SamplingParams as VllmSampling

    torch.cuda.empty_cache()
    llm = LLM(model=paths["policy"], dtype="bfloat16", gpu_memory_utilization=0.6, seed=0)
    sampling = VllmSampling(n=size["samples"], max_tokens=size["new_tokens"], temperature=1.0, seed=0)
    started = time.perf_counter()
    outputs = llm.chat(prompts, sampling, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
    rows.append(
        {"part": "generate (vLLM)", "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
        | {"samples_per_s": round(len(prompts) * size["samples"] / seconds, 2), "peak_gib": None}
    )
    del llm
    return rows


def check_scoring(paths: dict, device: torch.device, size: dict, prompts: list, rng: random.Random) -> dict:
    from croco.config import EngineConfig, ModelConfig
    from croco.engines import load_scorer

    scorer = load_scorer(EngineConfig(batch_size=size["score_batch"]), ModelConfig(path=paths["reward"]))
    conversations = [p + [{"role": "assistant", "content": text(size["answer_words"], rng)}] for p in prompts]
    conversations = (conversations * (size["scored"] // len(conversations) + 1))[: size["scored"]]
    with Peak(device) as peak:
        scores = scorer.score(conversations, max_len=4096)
    tokens = sum(s.num_tokens for s in scores)
    return row("score (transformers engine)", peak, tokens=tokens, samples=len(scores))


def check_training(kind: str, paths: dict, device: torch.device, size: dict, rng: random.Random, peak) -> dict:
    """A few optimizer steps of SFT or DPO with croco's trainer arguments and LoRA settings."""
    import datasets
    import trl
    from transformers import AutoModelForCausalLM

    from croco import training
    from croco.config import DPOConfig, ModelConfig, SFTConfig
    from croco.models import encode_chat, load_model, load_tokenizer

    model_config = ModelConfig(path=paths["trained"])
    tokenizer = load_tokenizer(model_config, padding_side="right")
    length = size["train_length"]
    settings = (SFTConfig if kind == "sft" else DPOConfig)(
        batch_size=size["train_batch"], gradient_accumulation=1, max_length=length, max_prompt_length=length // 4
    )
    examples, tokens_per_step = [], 0
    for _ in range(size["train_batch"] * size["steps"]):
        prompt = [{"role": "user", "content": text(length // 8, rng)}]
        answers = [[{"role": "assistant", "content": text(length // 2, rng)}] for _ in range(2)]
        if kind == "sft":
            examples.append({"messages": prompt + answers[0]})
        else:
            examples.append({"prompt": prompt, "chosen": answers[0], "rejected": answers[1]})
    for example in examples[: size["train_batch"]]:
        conversations = (
            [example["messages"]] if kind == "sft" else [example["prompt"] + example[a] for a in ("chosen", "rejected")]
        )
        tokens_per_step += sum(min(len(encode_chat(tokenizer, c, False)), length) for c in conversations)
    model = load_model(model_config, AutoModelForCausalLM, device).train()
    parameters = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as folder:
        arguments = training.arguments(settings, Path(folder), 0, device, False, 1) | {
            "max_steps": size["steps"],
            "save_strategy": "no",
            "disable_tqdm": True,
        }
        parts = dict(model=model, train_dataset=datasets.Dataset.from_list(examples), processing_class=tokenizer)
        if kind == "sft":
            trainer = trl.SFTTrainer(args=trl.SFTConfig(**arguments), peft_config=training.lora(settings), **parts)
        else:
            args = trl.DPOConfig(beta=settings.beta, **arguments)
            trainer = trl.DPOTrainer(ref_model=None, args=args, peft_config=training.lora(settings), **parts)
        trainer.train()  # the first step compiles kernels and warms the allocator: timed apart below
        with Peak(device) as measured:
            trainer.train()
    tokens = tokens_per_step * size["steps"]
    samples = size["steps"] * size["train_batch"]
    result = row(f"{kind} ({size['steps']} steps of {size['train_batch']})", measured, tokens=tokens, samples=samples)
    flops_per_token = (6 if kind == "sft" else 8) * parameters
    tflops, _ = peak
    achieved = flops_per_token * tokens / measured.seconds / 1e12
    result |= {"parameters": parameters, "model_tflops_per_s": round(achieved, 3)}
    result["mfu"] = round(achieved / tflops, 4) if tflops else None
    return result


def row(part: str, peak: Peak, tokens: int, samples: int | None = None) -> dict:
    return {
        "part": part,
        "seconds": round(peak.seconds, 2),
        "tokens_per_s": round(tokens / peak.seconds, 1),
        "samples_per_s": round(samples / peak.seconds, 2) if samples else None,
        "peak_gib": round(peak.gib, 2),
        "memory": peak.kind,
    }


SIZES = {
    "tiny": dict(prompts=4, samples=2, new_tokens=16, generate_batch=8, scored=8, score_batch=8, answer_words=20)
    | dict(train_length=64, train_batch=2, steps=2),
    "gpu": dict(
        prompts=64, samples=8, new_tokens=256, generate_batch=128, scored=1024, score_batch=64, answer_words=200
    )
    | dict(train_length=1024, train_batch=8, steps=10),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer random model, small sizes: runs on a CPU")
    parser.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s of one device, for the MFU")
    parser.add_argument("--json", type=Path, help="also write the results here")
    options = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not options.tiny:
        print("no GPU here: run with --tiny to check the script on the CPU")
        return 2
    size = SIZES["tiny" if options.tiny else "gpu"]
    peak = peak_tflops(device, options.peak_tflops)
    print(
        f"device: {peak[1]}; torch {torch.__version__}; peak assumed per device: {peak[0] or 'unknown'} TFLOP/s (bf16)"
    )
    rng = random.Random(0)
    prompts = [[{"role": "user", "content": f"Question {i}: {text(12, rng)}?"}] for i in range(size["prompts"])]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        paths = build_models(options.tiny, Path(folder))
        results += check_generation(paths, device, size, prompts)
        results.append(check_scoring(paths, device, size, prompts, rng))
        missing = [name for name in ("trl", "datasets", "peft") if not importlib.util.find_spec(name)]
        if missing:
            print(f"{', '.join(missing)} not installed here: SFT and DPO steps are skipped")
        else:
            for kind in ("sft", "dpo"):
                results.append(check_training(kind, paths, device, size, rng, peak))
    for result in results:
        print(json.dumps(result))
    print(f"total {time.perf_counter() - started:.0f} s")
    if options.json:
        options.json.write_text(json.dumps({"device": peak[1], "peak_tflops": peak[0], "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
