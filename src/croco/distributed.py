"""Training on several devices of one node: the command a job runs a training unit under, and the arithmetic that
keeps the effective batch what the config says.

`sft.distributed` / `dpo.distributed` name one of the accelerate configs shipped in infra/accelerate/: `ddp` (one
replica per device), `zero2` or `zero3` (DeepSpeed ZeRO: optimizer states and gradients, or the weights too, sharded
across the devices). A config's `batch_size` x `gradient_accumulation` is the batch of one optimizer step on ONE
device; on W devices each process accumulates `gradient_accumulation / W` micro batches. accelerate hands process i
every W-th micro batch of the sampler's order, so an optimizer step sees the same examples on 1 or W devices, the
number of steps and the learning-rate schedule are the same, and neither the number of devices nor the strategy is
part of the adapter's key. What differs: sums in another order (the last bits, as between two GPU runs anyway), and
an epoch's last, partial step, where accelerate repeats a few examples so that every process has a micro batch.
"""

from __future__ import annotations

import os
import sys
from importlib.resources import as_file, files
from typing import TYPE_CHECKING

from croco.config import CrocoConfig, TrainingConfig
from croco.errors import CrocoError

if TYPE_CHECKING:
    import torch  # the launcher runs where the flow does, which may not load torch


def launcher(cfg: CrocoConfig, stage: str, gpus: int) -> list[str]:
    """The argv that stands for `python` in a training unit's command on `gpus` devices of one node; the caller appends
    the rest (`-m croco.cli unit ...`, or a script and its arguments). Several devices go through this module's
    entry point, which finds the shipped accelerate config in the job's own croco installation (the flow's may live
    elsewhere, e.g. on a laptop while the job runs in an image) and hands over to `accelerate launch`."""
    if gpus < 1:
        raise CrocoError(f"a {stage} job needs at least one device, and {gpus} were asked for")
    if gpus == 1:
        return ["python"]
    settings: TrainingConfig = getattr(cfg, stage)
    accumulation_per_device(settings, stage, gpus)  # refused here, before a job is queued
    return ["python", "-m", "croco.distributed", settings.distributed, str(gpus)]


def accumulation_per_device(settings: TrainingConfig, stage: str, world_size: int) -> int:
    """Micro batches each of `world_size` processes accumulates per optimizer step, so that the step's batch stays
    batch_size x gradient_accumulation whatever the number of devices."""
    if settings.gradient_accumulation % world_size:
        raise CrocoError(
            f"{stage}.gradient_accumulation ({settings.gradient_accumulation}) must be a multiple of the {world_size} devices "
            f"training runs on, so that the effective batch stays batch_size x gradient_accumulation; set it to a multiple of {world_size} or train on a number of devices that divides it"
        )
    return settings.gradient_accumulation // world_size


def world_size() -> int:
    """The number of training processes: set by `accelerate launch` (torchrun) in each of them, 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_device(device: torch.device) -> torch.device:
    """Each process's own GPU (accelerate sets LOCAL_RANK); loading every replica onto the first would not fit."""
    import torch

    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def report(settings: TrainingConfig, stage: str) -> dict:
    """What the manifest records about how the training was spread."""
    world = world_size()
    return {
        "world_size": world,
        "strategy": settings.distributed if world > 1 else None,
        "gradient_accumulation_per_device": accumulation_per_device(settings, stage, world),
        "effective_batch": settings.batch_size * settings.gradient_accumulation,
    }


def main(argv: list[str]) -> None:
    """`python -m croco.distributed STRATEGY PROCESSES ARGS...`: `accelerate launch` with the shipped config."""
    strategy, processes, *command = argv
    with as_file(files("croco.infra") / "accelerate" / f"{strategy}.yaml") as config:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        os.execv(sys.executable, [*launch, "--num_processes", processes, *command])


if __name__ == "__main__":
    main(sys.argv[1:])
