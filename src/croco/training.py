"""What the SFT and DPO stages share: data, LoRA, trainer arguments, resume, and the run's record.

TRL does the training; this module only wires the paper's settings into it:
- examples come from a pair product; those whose prompt is longer than `max_prompt_length`
  are dropped and counted (TRL 1.x no longer filters them);
- a seeded share is held out for evaluation;
- LoRA on the configured modules; on a GPU bf16, FlashAttention 2 where installed and
  gradient checkpointing; on a CPU full precision, the same code path;
- checkpoints every `save_steps`: a killed run resumes from the newest whole one (marked once
  transformers' save returned; a save cut short is removed); Version.start drops a work folder made
  from other pairs;
- training runs in a local work folder keyed by the version; each whole checkpoint is also copied
  into the version's checkpoints/ on the storage root (the newest only), so a job requeued on
  another node, whose work folder is empty, resumes from it instead of step 0 (on S3 as on a shared
  file system: one code path, and a LoRA checkpoint is small); the version's files/ then receive
  the adapter with its tokenizer, the resolved config, the metrics history and PNG plots;
- under `accelerate launch` (croco.distributed) every process trains; the main one alone copies
  checkpoints, saves, uploads and commits, the others end with the training;
- an adapter that training left at its initialisation (too few optimizer steps for the
  warm-up) is reported as a warning, in the log, the manifest and the report.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import datasets
import torch
import yaml

from croco import distributed
from croco.config import CrocoConfig, ModelConfig, TrainingConfig
from croco.models import encode_chat, load_model, load_tokenizer, model_identity, pick_device, precision
from croco.records import DPO, SFT
from croco.redaction import redact_value
from croco.storage import CHECKPOINTS, Version

log = logging.getLogger("croco")

# Training settings that never change the adapter (left out of the key); see croco.distributed for `distributed`.
EXECUTION = {"enabled", "save_steps", "distributed"}
ADAPTER_DIR = "adapter"
METRICS_FILE = "metrics.jsonl"
WHOLE_MARKER = "croco-whole"  # written into a checkpoint once transformers has saved all of it


def base_model(cfg: CrocoConfig) -> ModelConfig:
    """The model to tune: `models.base` if set, else the policy that generated the samples."""
    return cfg.models.base or cfg.models.policy


def provenance(cfg: CrocoConfig) -> dict[str, Any]:
    """Recorded in the manifest, so a report can tell the paper's variants apart."""
    base = base_model(cfg)
    off_policy = base.path != cfg.models.policy.path or base.adapter != cfg.models.policy.adapter
    # Training runs on the GPU when there is one, in bfloat16 mixed precision there only: the adapter differs.
    return {"base": model_identity(base), "precision": precision(base, "auto"), "off_policy": off_policy}


def examples(pairs: Version, product: str) -> datasets.Dataset:
    table = pairs.read_shard(product, SFT if product.startswith("sft") else DPO)
    return datasets.Dataset(datasets.table.InMemoryTable(table))


def drop_long_prompts(
    dataset: datasets.Dataset, tokenizer, limit: int, prompt_of: Callable[[dict], list]
) -> tuple[datasets.Dataset, int]:
    keep = [len(encode_chat(tokenizer, prompt_of(row), generation_prompt=True)) <= limit for row in dataset]
    kept = dataset.select([i for i, ok in enumerate(keep) if ok])
    return kept, len(dataset) - len(kept)


def hold_out(dataset: datasets.Dataset, fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    if fraction == 0 or len(dataset) < 2:
        return dataset, None
    size = max(1, round(len(dataset) * fraction))
    split = dataset.train_test_split(test_size=size, seed=seed)
    return split["train"], split["test"]


def load_base(cfg: CrocoConfig, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    extra = (
        {"attn_implementation": "flash_attention_2"}
        if device.type == "cuda" and importlib.util.find_spec("flash_attn")
        else {}
    )
    return load_model(base_model(cfg), AutoModelForCausalLM, device, **extra).train()


def lora(settings: TrainingConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora.r,
        lora_alpha=settings.lora.alpha,
        lora_dropout=settings.lora.dropout,
        target_modules=list(settings.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _checkpointing_argument() -> str:
    """Gradient checkpointing's name: `activation_checkpointing` in newer transformers 5 releases,
    `gradient_checkpointing` before (vLLM's CPU build holds transformers at 5.19)."""
    from transformers import TrainingArguments

    parameters = inspect.signature(TrainingArguments.__init__).parameters
    return "activation_checkpointing" if "activation_checkpointing" in parameters else "gradient_checkpointing"


def arguments(
    settings: TrainingConfig, folder: Path, seed: int, device: torch.device, has_eval: bool, accumulation: int
) -> dict[str, Any]:
    """TrainingArguments shared by SFTConfig and DPOConfig; `accumulation` is each process's share."""
    gpu = device.type == "cuda"
    return {
        "output_dir": str(folder / CHECKPOINTS),
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": settings.lr_scheduler,
        "max_length": settings.max_length,
        "per_device_train_batch_size": settings.batch_size,
        "per_device_eval_batch_size": settings.batch_size,
        "gradient_accumulation_steps": accumulation,
        # Every LoRA weight takes part in every step; DDP's search for unused ones breaks gradient checkpointing.
        "ddp_find_unused_parameters": False,
        "warmup_steps": settings.warmup_ratio,  # transformers 5 reads a float below 1 as a ratio of all steps
        "weight_decay": settings.weight_decay,
        "num_train_epochs": settings.epochs,
        "seed": seed,
        "bf16": gpu,
        "use_cpu": not gpu,
        _checkpointing_argument(): gpu,
        "eval_strategy": "epoch" if has_eval else "no",
        "save_strategy": "steps",
        "save_steps": settings.save_steps,
        "save_total_limit": 2,
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": False,
    }


def fit(
    cfg: CrocoConfig,
    settings: TrainingConfig,
    out: Version,
    pairs: Version,
    product: str,
    prompt_of: Callable[[dict], list],
    columns: list[str],
    make_trainer: Callable[..., Any],
    plots: dict[str, str],
) -> dict[str, Any]:
    """Everything an SFT or DPO stage does around its TRL trainer; the report for its manifest."""
    folder = out.work_folder()  # checkpoints and outputs before upload
    spread = distributed.report(settings, out.relative.split("/", 1)[0])
    tokenizer = load_tokenizer(base_model(cfg), padding_side="right")
    dataset = examples(pairs, product)
    dataset, dropped = drop_long_prompts(dataset, tokenizer, settings.max_prompt_length, prompt_of)
    train, held_out = hold_out(dataset.select_columns(columns), settings.eval_fraction, cfg.seed)
    device = distributed.local_device(pick_device("auto"))
    trainer = make_trainer(
        model=load_base(cfg, device),
        arguments=arguments(
            settings, folder, cfg.seed, device, held_out is not None, spread["gradient_accumulation_per_device"]
        ),
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=lora(settings),
    )
    trained = train_and_save(trainer, folder, plots, out)
    if not trainer.accelerator.is_main_process:
        raise SystemExit(0)  # this process's part of the unit was the training: one writer per version
    (folder / "config.yaml").write_text(
        yaml.safe_dump(redact_value(cfg.model_dump()), sort_keys=False, allow_unicode=True)
    )
    for warning in trained["warnings"]:
        log.warning("%s: %s", out.relative, warning)
    return {
        "records_in": len(dataset) + dropped,
        "records_out": len(train),
        "held_out": len(held_out) if held_out is not None else 0,
        "skipped": {"prompt_too_long": dropped} if dropped else {},
        "distributed": spread,
        **trained,
    } | upload(folder, out)


def upload(folder: Path, out: Version) -> dict[str, Any]:
    """Copy the outputs into the version, then drop the local work folder."""
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            out.put_folder(path, path.name)
        else:
            out.put_file(path.name, path.read_bytes())
    shutil.rmtree(folder, ignore_errors=True)
    return {"adapter": out.file_uri(ADAPTER_DIR)}


def last_whole_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint whose save finished. transformers writes a checkpoint file by file into its final folder,
    so a run killed mid-save leaves one that looks like the newest and cannot be resumed: it is removed."""
    from transformers.trainer_utils import get_last_checkpoint

    for partial in sorted(p for p in checkpoints.glob("checkpoint-*") if not (p / WHOLE_MARKER).exists()):
        log.warning("removing %s: its save was cut short", partial)
        shutil.rmtree(partial)
    return get_last_checkpoint(str(checkpoints))


def step_of(checkpoint: str) -> int:
    return int(checkpoint.rsplit("-", 1)[1])


def stored_checkpoint(out: Version) -> str | None:
    """The version's copy of its newest whole checkpoint on the storage root (its marker is copied last)."""
    fs = out.storage.fs
    fs.invalidate_cache(f"{out.path}/{CHECKPOINTS}")
    markers = fs.glob(f"{out.path}/{CHECKPOINTS}/checkpoint-*/{WHOLE_MARKER}")
    return max((marker.rsplit("/", 1)[0] for marker in markers), key=step_of, default=None)


def store_checkpoint(checkpoint: Path, out: Version) -> None:
    """Copy a whole checkpoint into the version's checkpoints/, its marker last, then drop the older copies there."""
    folder = f"{out.path}/{CHECKPOINTS}"
    for file in sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != WHOLE_MARKER):
        out.storage.put(f"{folder}/{checkpoint.name}/{file.relative_to(checkpoint).as_posix()}", file.read_bytes())
    out.storage.put(f"{folder}/{checkpoint.name}/{WHOLE_MARKER}", b"")
    remove_stored_checkpoints(out, keep=checkpoint.name)


def stored_files(out: Version) -> list[str]:
    """Every file under the version's checkpoints/. Files, not folders: on a versioned bucket s3fs still lists a
    folder whose files were all deleted (and fails to remove it)."""
    folder = f"{out.path}/{CHECKPOINTS}"
    out.storage.fs.invalidate_cache(folder)
    return [path for path in out.storage.fs.find(folder) if path.startswith(f"{folder}/")]


def remove_stored_checkpoints(out: Version, keep: str | None = None) -> None:
    folder = f"{out.path}/{CHECKPOINTS}"
    for name in sorted({path[len(folder) + 1 :].split("/", 1)[0] for path in stored_files(out)} - {keep}):
        out.storage.fs.rm(f"{folder}/{name}", recursive=True)


def fetch_newer_checkpoint(out: Version, checkpoints: Path, local: str | None) -> None:
    """A job requeued on another node starts with an empty work folder: bring the version's stored checkpoint when
    it is newer than this node's newest whole one."""
    stored = stored_checkpoint(out)
    if stored is None or (local is not None and step_of(local) >= step_of(stored)):
        return
    target = checkpoints / stored.rsplit("/", 1)[1]
    partial = checkpoints / f".{target.name}.partial"  # outside transformers' checkpoint-* pattern until whole
    shutil.rmtree(partial, ignore_errors=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    out.storage.fs.get(f"{stored}/", f"{partial}/", recursive=True)
    partial.rename(target)
    log.info("%s: fetched %s from %s", out.relative, target.name, out.storage.uri_of(stored))


def keep_whole_checkpoints(out: Version, accelerator):
    """A callback that marks each checkpoint whole and copies it into the version; transformers calls on_save in
    every process once its own part of the save has returned, so the processes wait for each other first."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class KeepWhole(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            accelerator.wait_for_everyone()
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if accelerator.is_local_main_process:
                (checkpoint / WHOLE_MARKER).touch()
            if accelerator.is_main_process:
                store_checkpoint(checkpoint, out)

    return KeepWhole()


def train_and_save(trainer, folder: Path, plots: dict[str, str], out: Version) -> dict[str, Any]:
    """Train, resuming from the newest whole checkpoint (this node's, or the one stored in the version), then save
    the adapter, metrics and plots. Every process trains and takes part in saving the adapter (ZeRO-3 gathers it);
    the rest is the main process's, and only its return value counts."""
    from transformers.trainer import TRAINING_ARGS_NAME

    accelerator = trainer.accelerator
    checkpoints = folder / CHECKPOINTS
    if accelerator.is_local_main_process:
        fetch_newer_checkpoint(out, checkpoints, last_whole_checkpoint(checkpoints))
    accelerator.wait_for_everyone()
    last = last_whole_checkpoint(checkpoints)  # nothing is cut short any more: each process only finds it
    if last:
        log.info("%s: resuming from %s", out.relative, last)
    trainer.add_callback(keep_whole_checkpoints(out, accelerator))
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(folder / ADAPTER_DIR))  # the adapter and its tokenizer
    if not accelerator.is_main_process:
        return {}
    (folder / ADAPTER_DIR / TRAINING_ARGS_NAME).unlink()  # a pickle of the arguments; config.yaml says the same
    shutil.rmtree(checkpoints, ignore_errors=True)  # only needed to resume; the adapter above is the result
    remove_stored_checkpoints(out)
    history = trainer.state.log_history
    (folder / METRICS_FILE).write_text("".join(json.dumps(entry) + "\n" for entry in history))
    drawn = plot_metrics(history, plots, folder)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return {
        "steps": trainer.state.global_step,
        "resumed_from": last,
        "final_loss": losses[-1] if losses else None,
        "eval": next(
            ({k: v for k, v in e.items() if k.startswith("eval_")} for e in reversed(history) if "eval_loss" in e), {}
        ),
        "plots": drawn,
        "warnings": untrained_warnings(trainer, folder / ADAPTER_DIR),
    }


def untrained_warnings(trainer, adapter: Path) -> list[str]:
    """PEFT starts every LoRA B matrix at zero, so an adapter changes nothing until an update with a learning rate
    above 0 moves one; with few examples all optimizer steps can fall in the warm-up, where it is 0. The saved
    adapter is read: under ZeRO-3 a process holds only its shard of the weights."""
    from safetensors.torch import load_file

    weights = load_file(adapter / "adapter_model.safetensors")
    if any(tensor.any() for name, tensor in weights.items() if "lora_B" in name):
        return []
    steps, warmup = trainer.state.global_step, trainer.args.get_warmup_steps(trainer.state.max_steps)
    return [
        f"the adapter is still its initialisation (it changes nothing): {steps} optimizer step(s), with a warm-up of {warmup} "
        "step(s) from learning rate 0; train more steps (more pairs or epochs, a smaller gradient_accumulation or warmup_ratio)"
    ]


def plot_metrics(history: list[dict], plots: dict[str, str], folder: Path) -> list[str]:
    """One PNG per metric: the training curve by step, with evaluation points where there are any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []
    for key, title in plots.items():
        train = [(e["step"], e[key]) for e in history if key in e]
        evaluated = [(e["step"], e[f"eval_{key}"]) for e in history if f"eval_{key}" in e]
        if not train and not evaluated:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        if train:
            ax.plot(*zip(*train), marker=".", label="train")
        if evaluated:
            ax.plot(*zip(*evaluated), marker="o", linestyle="--", label="held out")
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        name = key.replace("/", "_") + ".png"
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        drawn.append(name)
    return drawn
