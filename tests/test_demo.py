"""End to end on the embedded models, as `make demo` runs them, at a smaller size."""

import math

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from croco.cli import main
from croco.embedded import resolve_model
from croco.records import ARENA_ANSWER, SAMPLE, SCORE
from croco.store import StageStore

from conftest import REPO


@pytest.mark.slow
def test_demo_config_runs_every_stage_on_embedded_models(tmp_path, demo_reward, capsys):
    reward_dir, _ = demo_reward
    run_dir = tmp_path / "demo"
    overrides = [f"run_dir={run_dir}", f"models.reward.path={reward_dir}", "data.subsample=2", "languages=[en,ga]",
                 "generate.num_samples=3", "generate.max_new_tokens=24", "arena.per_language=3", "arena.max_new_tokens=24"]
    assert main(["run", str(REPO / "configs" / "demo.yaml"), *overrides]) == 0
    samples = StageStore(run_dir, "generate").read(SAMPLE).to_pylist()
    scores = StageStore(run_dir, "score").read(SCORE).to_pylist()
    assert len(samples) == len(scores) == 2 * 2 * 3
    assert all(s["response"].strip() for s in samples)
    assert all(math.isfinite(s["reward"]) for s in scores)
    report = (run_dir / "report.md").read_text()
    assert "## Rewards" in report and "| ga |" in report and (run_dir / "rewards.png").stat().st_size > 1000
    for stage in ("sft", "dpo"):
        manifest = StageStore(run_dir, stage).manifest()
        assert manifest["status"] == "complete" and math.isfinite(manifest["final_loss"]) and manifest["steps"] >= 1
        assert f"## {stage.upper()}" in report and (run_dir / stage / "config.yaml").exists()
        assert all((run_dir / stage / plot).stat().st_size > 1000 for plot in manifest["plots"]) and len(manifest["plots"]) == 3
        base = AutoModelForCausalLM.from_pretrained(resolve_model(manifest["settings"]["base"]["path"]))
        PeftModel.from_pretrained(base, run_dir / stage / "adapter")  # the adapter loads again
    answers = StageStore(run_dir, "arena").read(ARENA_ANSWER).to_pylist()
    assert sorted({a["model"] for a in answers}) == ["dpo", "policy", "sft"] and len(answers) == 3 * 2 * 3
    assert "## Arena win rates" in report and "| sft | ga | all |" in report and "| dpo | all | all |" in report
    assert (run_dir / "judge" / "win_rates.png").stat().st_size > 1000
    assert main(["merge", str(run_dir / "dpo" / "adapter")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "dpo" / "merged")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "dpo" / "merged")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert merged.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
