"""SFT and DPO on a tiny model: outputs, filtering, provenance, resume after a crash, and merging."""

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from croco.cli import main

from conftest import make_config, prompt_record, run, version, write_jsonl


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
    for stage, plots in (("sft", {"loss.png", "grad_norm.png", "mean_token_accuracy.png"}), ("dpo", {"loss.png", "rewards_accuracies.png", "rewards_margins.png"})):
        out = version(cfg, f"{stage}/all")
        manifest, folder = out.manifest(), files(cfg, f"{stage}/all")
        assert manifest["skipped"] == {"prompt_too_long": 1}  # the long prompt, dropped before training and counted
        assert manifest["held_out"] >= 1 and manifest["records_out"] + manifest["held_out"] + 1 == manifest["records_in"]
        assert math.isfinite(manifest["final_loss"]) and manifest["settings"]["off_policy"] is False
        assert set(manifest["plots"]) == plots and all((folder / p).stat().st_size > 1000 for p in plots)
        assert {"metrics.jsonl", "config.yaml", "adapter/adapter_config.json"} <= set(manifest["files"])
        assert out.problems() == []  # every file the manifest lists is there, at its size
        history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert all(math.isfinite(e["loss"]) for e in history if "loss" in e)
        # No checkpoints were uploaded, and the local work folder was dropped after the upload.
        assert not (folder / "checkpoints").exists() and not any(p.name.startswith("checkpoint") for p in folder.rglob("*"))
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


def test_a_crashed_training_run_resumes_from_its_last_checkpoint(tmp_path, tiny_models, prompts, monkeypatch):
    import trl

    # No retries: the crash must end the run, as a killed process would.
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts)}], sft={"enabled": False},
                      dpo={"save_steps": 2, "eval_fraction": 0.0}, retries={"default": {"attempts": 0}})
    run(cfg, stages=["pair"])
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
    out = version(cfg, "dpo/all")
    assert not out.committed()
    assert (out.work_folder() / "checkpoints" / "checkpoint-2").is_dir()
    monkeypatch.setattr(trl.DPOTrainer, "training_step", original)
    result = run(cfg, stages=["dpo"])
    assert result["cached"]["dpo/all"] is False and result["cached"]["pair/all"] is True
    manifest = out.manifest()
    assert manifest["resumed_from"].endswith("checkpoint-2")
    assert manifest["steps"] == manifest["records_out"]  # batch 1, no accumulation: one step per pair, none lost


def test_merge_writes_a_full_model_that_loads_and_matches_the_adapter(tmp_path, tiny_models, prompts):
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts)}], sft={"enabled": False}, dpo={"learning_rate": 1e-2})
    run(cfg)
    adapter = files(cfg, "dpo/all") / "adapter"
    assert main(["merge", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.chat_template and (tmp_path / "merged" / "generation_config.json").exists()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["policy"]), adapter).eval()
    ids = torch.tensor([tokenizer.encode("Hello there")])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)


def test_online_dpo_samples_while_training_and_asks_the_reward_model(tmp_path, tiny_models, prompts):
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts)}], sft={"enabled": False}, dpo={"online": True},
                      generate={"max_new_tokens": 6})
    run(cfg)
    manifest = version(cfg, "dpo/all").manifest()
    assert manifest["settings"]["dpo"]["online"] is True and manifest["settings"]["reward"]["location"]["path"] == tiny_models["reward"]
    assert manifest["steps"] >= 1 and math.isfinite(manifest["final_loss"])
    history = [json.loads(line) for line in (files(cfg, "dpo/all") / "metrics.jsonl").read_text().splitlines()]
    assert any("objective/scores" in entry for entry in history)  # rewards came from the reward model
