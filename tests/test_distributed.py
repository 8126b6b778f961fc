"""Training on several devices: the shipped accelerate configs, the launcher's argv, the effective batch, and a real
two-process run of an SFT unit under `accelerate launch` (gloo on the CPU)."""

import math
import os
import subprocess
import sys
from importlib.resources import files

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from conftest import make_config, prompt_record, run, save_config, version, write_jsonl
from croco.config import parse_config
from croco.distributed import accumulation_per_device, launcher
from croco.errors import CrocoError
from croco.plan import build_plan


@pytest.mark.parametrize(
    "name, distributed_type, zero_stage",
    [
        ("ddp", DistributedType.MULTI_GPU, None),
        ("zero2", DistributedType.DEEPSPEED, 2),
        ("zero3", DistributedType.DEEPSPEED, 3),
    ],
)
def test_each_shipped_accelerate_config_loads_as_accelerate_reads_it(name, distributed_type, zero_stage):
    config = load_config_from_file(str(files("croco.infra") / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type == distributed_type and config.num_machines == 1
    assert config.num_processes == -1  # not pinned to a machine: the launcher passes the job's devices
    assert config.deepspeed_config.get("zero_stage") == zero_stage
    assert "gradient_accumulation_steps" not in config.deepspeed_config  # croco's trainer arguments set it


def tiny_config(tmp_path, tiny_models, prompts_file, **training):
    return make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], sft=training, dpo=training)


def test_one_device_runs_plain_python_and_several_run_under_accelerate_with_the_stage_strategy(
    tmp_path, tiny_models, prompts_file
):
    cfg = tiny_config(tmp_path, tiny_models, prompts_file, gradient_accumulation=8)
    cfg = parse_config(cfg.model_dump() | {"dpo": cfg.dpo.model_dump() | {"distributed": "zero3"}})
    assert launcher(cfg, "sft", 1) == ["python"]
    assert launcher(cfg, "sft", 8) == ["python", "-m", "croco.distributed", "ddp", "8"]
    assert launcher(cfg, "dpo", 4) == ["python", "-m", "croco.distributed", "zero3", "4"]
    with pytest.raises(CrocoError, match=r"^dpo.gradient_accumulation \(8\) must be a multiple of the 3 devices"):
        launcher(cfg, "dpo", 3)  # refused before a job is queued


def test_the_effective_batch_stays_what_the_config_says_on_any_number_of_devices(tmp_path, tiny_models, prompts_file):
    settings = tiny_config(tmp_path, tiny_models, prompts_file, batch_size=2, gradient_accumulation=8).sft
    for devices, per_device in ((1, 8), (2, 4), (4, 2), (8, 1)):
        assert accumulation_per_device(settings, "sft", devices) == per_device
        assert settings.batch_size * per_device * devices == 16
    with pytest.raises(CrocoError) as refused:
        accumulation_per_device(settings, "sft", 16)
    assert str(refused.value) == (
        "sft.gradient_accumulation (8) must be a multiple of the 16 devices training runs on, so that the effective batch "
        "stays batch_size x gradient_accumulation; set it to a multiple of 16 or train on a number of devices that divides it"
    )


def test_the_strategy_is_not_part_of_a_training_key_and_the_effective_batch_is(tmp_path, tiny_models, prompts_file):
    def keys(**training):
        plan = build_plan(tiny_config(tmp_path, tiny_models, prompts_file, **training))
        return plan.by_id["sft/all"].key, plan.by_id["dpo/all"].key

    assert keys(distributed="zero3") == keys(distributed="ddp")
    assert keys(gradient_accumulation=4) != keys(gradient_accumulation=2)


# What a training job's command does with the unit (`croco unit` does the same through the CLI).
RUN_SFT_UNIT = """
import sys
from croco.caching import run_here
from croco.config import load_config
from croco.plan import build_plan
from croco.tasks.sft import sft
cfg = load_config(sys.argv[1])
run_here(cfg, build_plan(cfg).by_id["sft/all"], sft.work)
"""


@pytest.mark.slow
def test_an_sft_unit_on_two_processes_commits_one_adapter_with_the_configured_effective_batch(tmp_path, tiny_models):
    rows = [prompt_record(f"p{i}", lang, f"Question {i} in {lang}?") for lang in ("en", "da") for i in range(5)]
    cfg = make_config(
        tmp_path / "store",
        tiny_models,
        [{"path": str(write_jsonl(tmp_path / "p.jsonl", rows))}],
        sft={"gradient_accumulation": 2, "eval_fraction": 0.0, "save_steps": 2},
        dpo={"enabled": False},
    )
    run(cfg, stages=["pair"])
    script = tmp_path / "run_sft_unit.py"
    script.write_text(RUN_SFT_UNIT)
    command = [sys.executable, *launcher(cfg, "sft", 2)[1:], str(script), str(save_config(cfg, tmp_path / "c.yaml"))]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-4000:]
    manifest = version(cfg, "sft/all").manifest()
    assert manifest["distributed"] == {
        "world_size": 2,
        "strategy": "ddp",
        "gradient_accumulation_per_device": 1,
        "effective_batch": 2,
    }
    # Each optimizer step took 2 examples, one from each process: as many steps as one device accumulating 2.
    assert manifest["steps"] == math.ceil(manifest["records_out"] / 2) and math.isfinite(manifest["final_loss"])
    assert manifest["warnings"] == [] and "adapter/adapter_model.safetensors" in manifest["files"]
    assert "adapter/training_args.bin" not in manifest["files"]
