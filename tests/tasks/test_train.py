"""SFT and DPO on a tiny model: outputs, filtering, provenance, resume after a crash, and merging."""

import json
import math

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from croco.cli import main
from croco.pipeline import run_pipeline
from croco.store import StageStore

from conftest import make_config, prompt_record, write_jsonl


@pytest.fixture
def prompts(tmp_path):
    rows = [prompt_record(f"p{i}", lang, f"Question {i} in {lang}?") for lang in ("en", "da") for i in range(5)]
    rows.append(prompt_record("long", "en", "Please read all of this. " * 60))
    return write_jsonl(tmp_path / "p.jsonl", rows)


def test_sft_and_dpo_write_adapter_metrics_and_plots(tmp_path, tiny_models, prompts):
    training = {"max_prompt_length": 64}
    cfg = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts)}], sft=training, dpo=training)
    results = {r.name: r.manifest for r in run_pipeline(cfg)}
    for stage, plots in (("sft", {"loss.png", "grad_norm.png", "mean_token_accuracy.png"}), ("dpo", {"loss.png", "rewards_accuracies.png", "rewards_margins.png"})):
        manifest, folder = results[stage], StageStore(cfg.run_dir, stage).path
        assert manifest["skipped"] == {"prompt_too_long": 1}  # the long prompt, dropped before training and counted
        assert manifest["held_out"] >= 1 and manifest["records_out"] + manifest["held_out"] + 1 == manifest["records_in"]
        assert math.isfinite(manifest["final_loss"]) and manifest["settings"]["off_policy"] is False
        assert set(manifest["plots"]) == plots and all((folder / p).stat().st_size > 1000 for p in plots)
        history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert all(math.isfinite(e["loss"]) for e in history if "loss" in e)
        assert not (folder / "checkpoints").exists()
        base = AutoModelForCausalLM.from_pretrained(tiny_models["policy"])
        PeftModel.from_pretrained(base, folder / "adapter")  # loads again
    assert "rewards/margins" in json.loads((StageStore(cfg.run_dir, "dpo").path / "metrics.jsonl").read_text().splitlines()[0])


def test_tuning_another_model_is_flagged_off_policy(tmp_path, tiny_models, prompts):
    import shutil

    from croco.config import parse_config

    other = shutil.copytree(tiny_models["policy"], tmp_path / "another-model")
    raw = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts)}], sft={"enabled": False}).model_dump()
    raw["models"]["base"] = {"path": str(other)}
    assert run_pipeline(parse_config(raw))[-1].manifest["settings"]["off_policy"] is True


def test_a_crashed_training_run_resumes_from_its_last_checkpoint(tmp_path, tiny_models, prompts, monkeypatch):
    import trl

    cfg = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts)}], sft={"enabled": False}, dpo={"save_steps": 2, "eval_fraction": 0.0})
    run_pipeline(cfg, only=["prompts", "generate", "score", "pair"])
    original = trl.DPOTrainer.training_step
    calls = []

    def crash_on_third_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trl.DPOTrainer, "training_step", crash_on_third_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(cfg, only=["dpo"])
    assert (StageStore(cfg.run_dir, "dpo").path / "checkpoints" / "checkpoint-2").is_dir()
    monkeypatch.setattr(trl.DPOTrainer, "training_step", original)
    manifest = run_pipeline(cfg, only=["dpo"])[-1].manifest
    assert manifest["resumed_from"].endswith("checkpoint-2")
    assert manifest["steps"] == manifest["records_out"]  # batch 1, no accumulation: one step per pair, none lost


def test_merge_writes_a_full_model_that_loads_and_matches_the_adapter(tmp_path, tiny_models, prompts):
    cfg = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts)}], sft={"enabled": False}, dpo={"learning_rate": 1e-2})
    run_pipeline(cfg)
    adapter = StageStore(cfg.run_dir, "dpo").path / "adapter"
    assert main(["merge", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.chat_template and (tmp_path / "merged" / "generation_config.json").exists()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["policy"]), adapter).eval()
    ids = torch.tensor([tokenizer.encode("Hello there")])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)


def test_online_dpo_samples_while_training_and_asks_the_reward_model(tmp_path, tiny_models, prompts):
    cfg = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts)}], sft={"enabled": False}, dpo={"online": True},
                      generate={"max_new_tokens": 6})
    manifest = run_pipeline(cfg)[-1].manifest
    assert manifest["settings"]["dpo"]["online"] is True and manifest["settings"]["reward"]["path"] == tiny_models["reward"]
    assert manifest["steps"] >= 1 and math.isfinite(manifest["final_loss"])
    history = [json.loads(line) for line in (StageStore(cfg.run_dir, "dpo").path / "metrics.jsonl").read_text().splitlines()]
    assert any("objective/scores" in entry for entry in history)  # rewards came from the reward model
