"""SFT and DPO on a tiny model: outputs, filtering, provenance, resume after a crash, and merging."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import make_config, prompt_record, run, save_config, version, write_jsonl
from croco.cli import main
from croco.records import DPO
from croco.training import stored_files


@pytest.fixture
def prompts(tmp_path):
    rows = [prompt_record(f"p{i}", lang, f"Question {i} in {lang}?") for lang in ("en", "da") for i in range(5)]
    rows.append(prompt_record("long", "en", "Please read all of this. " * 60))
    return write_jsonl(tmp_path / "p.jsonl", rows)


def files(cfg, unit_id: str) -> Path:
    """The files/ folder of a training version (adapter, metrics, plots, config) on a local storage root."""
    return Path(version(cfg, unit_id).path) / "files"


def test_sft_and_dpo_write_adapter_metrics_and_plots(tmp_path, tiny_models, prompts):
    training = {"max_prompt_length": 64}
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts)}], sft=training, dpo=training)
    result = run(cfg)
    assert {"sft/all", "dpo/all"} <= set(result["versions"])
    for stage, plots in (
        ("sft", {"loss.png", "grad_norm.png", "mean_token_accuracy.png"}),
        ("dpo", {"loss.png", "rewards_accuracies.png", "rewards_margins.png"}),
    ):
        out = version(cfg, f"{stage}/all")
        manifest, folder = out.manifest(), files(cfg, f"{stage}/all")
        assert manifest["skipped"] == {"prompt_too_long": 1}  # the long prompt, dropped before training and counted
        assert (
            manifest["held_out"] >= 1 and manifest["records_out"] + manifest["held_out"] + 1 == manifest["records_in"]
        )
        assert math.isfinite(manifest["final_loss"]) and manifest["settings"]["off_policy"] is False
        assert manifest["warnings"] == []  # the adapter moved
        assert set(manifest["plots"]) == plots and all((folder / p).stat().st_size > 1000 for p in plots)
        assert {"metrics.jsonl", "config.yaml", "adapter/adapter_config.json"} <= set(manifest["files"])
        assert out.problems() == []  # every file the manifest lists is there, at its size
        history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert all(math.isfinite(e["loss"]) for e in history if "loss" in e)
        # No checkpoints were uploaded, and the local work folder was dropped after the upload.
        assert not (folder / "checkpoints").exists() and not any(
            p.name.startswith("checkpoint") for p in folder.rglob("*")
        )
        work = out.work_folder()  # work_folder() creates the folder it names: it must come back empty
        assert not any(work.iterdir())
        work.rmdir()
        base = AutoModelForCausalLM.from_pretrained(tiny_models["policy"])
        PeftModel.from_pretrained(base, folder / "adapter")  # loads again
    assert "rewards/margins" in json.loads((files(cfg, "dpo/all") / "metrics.jsonl").read_text().splitlines()[0])


def test_tuning_another_model_is_flagged_off_policy(tmp_path, tiny_models, prompts):
    import shutil

    from croco.config import parse_config

    other = shutil.copytree(tiny_models["policy"], tmp_path / "another-model")
    raw = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts)}], sft={"enabled": False}).model_dump()
    raw["models"]["base"] = {"path": str(other)}
    cfg = parse_config(raw)
    run(cfg)
    settings = version(cfg, "dpo/all").manifest()["settings"]
    assert settings["off_policy"] is True and settings["base"]["location"]["path"] == str(other)


def resumable_dpo(tmp_path, tiny_models, prompts, root=None):
    """A config that checkpoints DPO every 2 steps, one step per pair, no retries (a crash ends the run, as a killed
    process would); its pairs are computed."""
    cfg = make_config(
        root or tmp_path / "store",
        tiny_models,
        [{"path": str(prompts)}],
        sft={"enabled": False},
        dpo={"save_steps": 2, "eval_fraction": 0.0},
        retries={"default": {"attempts": 0}},
    )
    run(cfg, stages=["pair"])
    return cfg


def crash_after_the_first_checkpoint(cfg, monkeypatch):
    """A DPO run that raises in its third step, after checkpoint-2 was saved."""
    import trl

    original = trl.DPOTrainer.training_step
    calls = []

    def crash_on_third_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trl.DPOTrainer, "training_step", crash_on_third_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, stages=["dpo"])
    monkeypatch.setattr(trl.DPOTrainer, "training_step", original)
    out = version(cfg, "dpo/all")
    assert not out.committed() and (out.work_folder() / "checkpoints" / "checkpoint-2").is_dir()
    return out


def test_a_crashed_training_run_resumes_from_its_last_checkpoint(tmp_path, tiny_models, prompts, monkeypatch):
    cfg = resumable_dpo(tmp_path, tiny_models, prompts)
    out = crash_after_the_first_checkpoint(cfg, monkeypatch)
    result = run(cfg, stages=["dpo"])
    assert result["cached"]["dpo/all"] is False and result["cached"]["pair/all"] is True
    manifest = out.manifest()
    assert manifest["resumed_from"].endswith("checkpoint-2")
    assert manifest["steps"] == manifest["records_out"]  # batch 1, no accumulation: one step per pair, none lost


@pytest.mark.parametrize("root", ["shared folder", "s3"])
def test_a_training_unit_requeued_on_another_node_resumes_from_the_checkpoint_on_the_storage_root(
    tmp_path, tiny_models, prompts, monkeypatch, request, root
):
    if root == "s3":
        for name, value in request.getfixturevalue("s3_server").items():
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("CROCO_CACHE", str(tmp_path / "node-a"))  # where the local work folder lives
    cfg = resumable_dpo(tmp_path, tiny_models, prompts, f"s3://croco/{tmp_path.name}" if root == "s3" else None)
    out = crash_after_the_first_checkpoint(cfg, monkeypatch)
    assert {path.split("/checkpoints/")[1].split("/")[0] for path in stored_files(out)} == {"checkpoint-2"}

    monkeypatch.setenv("CROCO_CACHE", str(tmp_path / "node-b"))  # another node: an empty work folder, the same root
    assert not (out.work_folder() / "checkpoints").exists()
    run(cfg, stages=["dpo"])
    manifest = out.manifest()
    assert manifest["resumed_from"].endswith("checkpoint-2") and manifest["steps"] == manifest["records_out"]
    assert stored_files(out) == []  # gone once the adapter is committed


# A DPO run whose second checkpoint save stops half way (model and optimizer written, RNG and trainer state not) and
# says so in a file, so that the test can kill it there.
KILLED_WHILE_SAVING = """
import pathlib, sys, time
import transformers
from croco.flows.pipeline import pipeline
save_rng_state = transformers.Trainer._save_rng_state
def stall_the_second_save(self, output_dir):
    if self.state.global_step == 4:
        pathlib.Path(sys.argv[2]).write_text(output_dir)
        time.sleep(600)
    save_rng_state(self, output_dir)
transformers.Trainer._save_rng_state = stall_the_second_save
pipeline(config=sys.argv[1], stages=["dpo"])
"""


def test_a_run_killed_while_saving_a_checkpoint_resumes_from_the_last_whole_one(
    tmp_path, tiny_models, prompts, prefect_server, caplog
):
    cfg = resumable_dpo(tmp_path, tiny_models, prompts)
    saving, log = tmp_path / "saving", tmp_path / "killed.log"
    with open(log, "w") as output:
        killed = subprocess.Popen(
            [sys.executable, "-c", KILLED_WHILE_SAVING, str(save_config(cfg, tmp_path / "dpo.yaml")), str(saving)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PREFECT_API_URL": prefect_server},
        )
    deadline = time.monotonic() + 300
    while not saving.exists():
        assert killed.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the second checkpoint save never started"
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    checkpoints = version(cfg, "dpo/all").work_folder() / "checkpoints"
    assert (checkpoints / "checkpoint-2" / "trainer_state.json").exists()
    assert not (checkpoints / "checkpoint-4" / "trainer_state.json").exists()  # what a kill mid-save leaves

    caplog.set_level("WARNING", logger="croco")
    run(cfg, stages=["dpo"])
    manifest = version(cfg, "dpo/all").manifest()
    assert manifest["resumed_from"].endswith("checkpoint-2") and manifest["steps"] == manifest["records_out"]
    assert f"removing {checkpoints / 'checkpoint-4'}: its save was cut short" in caplog.messages


def test_checkpoints_made_from_other_pairs_are_not_resumed(tmp_path, tiny_models, prompts, monkeypatch, caplog):
    cfg = resumable_dpo(tmp_path, tiny_models, prompts)
    out = crash_after_the_first_checkpoint(cfg, monkeypatch)
    # The pairs are recomputed with other data under the same key (as another machine's sampling would): here every
    # chosen answer becomes the rejected one.
    pairs = version(cfg, "pair/all")
    before = pairs.manifest()
    table = pairs.read_shard("dpo_in_language", DPO)
    swapped = table.rename_columns(
        [{"chosen": "rejected", "rejected": "chosen"}.get(name, name) for name in table.column_names]
    )
    pairs.uncommit("a test recomputes it")
    pairs.write_shard("dpo_in_language", swapped.select(DPO.names), DPO)
    pairs.flush()
    assert pairs.commit(before)["digest"] != before["digest"]

    caplog.set_level("WARNING", logger="croco")
    result = run(cfg, stages=["dpo"])
    assert result["cached"]["pair/all"] is True
    assert any(
        m.startswith(f"{out.relative}: the local work folder")
        and m.endswith("was made from other inputs; discarding it")
        for m in caplog.messages
    )
    manifest = out.manifest()
    assert (
        manifest["resumed_from"] is None and manifest["steps"] == manifest["records_out"]
    )  # trained afresh on the new pairs
    assert manifest["lineage"]["pair/all"]["digest"] != before["digest"]


def test_training_that_left_the_adapter_at_its_initialisation_says_so(tmp_path, tiny_models, prompts):
    # DPO makes one optimizer step of all its pairs: the first step of the warm-up, at learning rate 0.
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts)}], dpo={"gradient_accumulation": 16})
    result = run(cfg)
    sft, dpo = version(cfg, "sft/all").manifest(), version(cfg, "dpo/all").manifest()
    assert sft["warnings"] == [] and sft["steps"] > 1
    assert dpo["steps"] == 1 and dpo["warnings"] == [
        "the adapter is still its initialisation (it changes nothing): 1 optimizer step(s), with a warm-up of 1 step(s) "
        "from learning rate 0; train more steps (more pairs or epochs, a smaller gradient_accumulation or warmup_ratio)"
    ]
    report = Path(result["report"]).read_text()
    dpo_section = report[report.index("## DPO") :]
    assert (
        f"**Warning: {dpo['warnings'][0]}.**" in dpo_section
        and "Warning" not in report[report.index("## SFT") : report.index("## DPO")]
    )
    assert (
        f"dpo/all: {dpo['records_out']} records" in report and f"; warning: {dpo['warnings'][0]}" in report
    )  # the summary line


def test_merge_writes_a_full_model_that_loads_and_matches_the_adapter(tmp_path, tiny_models, prompts):
    cfg = make_config(
        tmp_path / "store", tiny_models, [{"path": str(prompts)}], sft={"enabled": False}, dpo={"learning_rate": 1e-2}
    )
    run(cfg)
    adapter = files(cfg, "dpo/all") / "adapter"
    assert main(["merge", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.chat_template and (tmp_path / "merged" / "generation_config.json").exists()
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_models["policy"]), adapter
    ).eval()
    ids = torch.tensor([tokenizer.encode("Hello there")])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)


def test_online_dpo_samples_while_training_and_asks_the_reward_model(tmp_path, tiny_models, prompts):
    cfg = make_config(
        tmp_path / "store",
        tiny_models,
        [{"path": str(prompts)}],
        sft={"enabled": False},
        dpo={"online": True},
        generate={"max_new_tokens": 6},
    )
    run(cfg)
    manifest = version(cfg, "dpo/all").manifest()
    assert (
        manifest["settings"]["dpo"]["online"] is True
        and manifest["settings"]["reward"]["location"]["path"] == tiny_models["reward"]
    )
    assert manifest["steps"] >= 1 and math.isfinite(manifest["final_loss"])
    history = [json.loads(line) for line in (files(cfg, "dpo/all") / "metrics.jsonl").read_text().splitlines()]
    assert any("objective/scores" in entry for entry in history)  # rewards came from the reward model
