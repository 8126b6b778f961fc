"""End to end on the embedded models, as `make demo` runs them, at a smaller size."""

import math

import pytest
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO, read, version
from croco.cli import main
from croco.config import load_config
from croco.embedded import resolve_model
from croco.records import ARENA_ANSWER, SAMPLE, SCORE


@pytest.mark.slow
def test_demo_config_runs_every_stage_on_embedded_models(tmp_path, demo_reward, monkeypatch):
    reward_dir, _ = demo_reward
    store = tmp_path / "demo"
    overrides = [
        f"storage.root={store}",
        f"models.reward.path={reward_dir}",
        "data.subsample=2",
        "languages=[en,ga]",
        "generate.num_samples=3",
        "generate.max_new_tokens=24",
        "arena.per_language=3",
        "arena.max_new_tokens=24",
    ]
    config = REPO / "configs" / "demo.yaml"
    assert main(["run", str(config), *overrides]) == 0
    cfg = load_config(config, overrides)
    samples = read(cfg, "generate", SAMPLE).to_pylist()
    scores = read(cfg, "score", SCORE).to_pylist()
    assert len(samples) == len(scores) == 2 * 2 * 3
    assert all(s["response"].strip() for s in samples)
    assert all(math.isfinite(s["reward"]) for s in scores)
    report = (store / "reports" / "demo" / "report.md").read_text()  # the newest run's, where a person looks first
    [folder] = [
        path.parent for path in (store / "reports" / "demo").glob("*/report.md")
    ]  # the run's own, with its plots
    assert "## Rewards" in report and "| ga |" in report and (folder / "rewards.png").stat().st_size > 1000
    for stage in ("sft", "dpo"):
        trained = version(cfg, f"{stage}/all")
        manifest, files = trained.manifest(), store / trained.relative / "files"
        assert math.isfinite(manifest["final_loss"]) and manifest["steps"] >= 1
        assert f"## {stage.upper()}" in report and (files / "config.yaml").exists()
        assert all((files / plot).stat().st_size > 1000 for plot in manifest["plots"]) and len(manifest["plots"]) == 3
        assert f"](../../{trained.relative}/files/{manifest['plots'][0]})" in report  # the report's image links resolve
        base = AutoModelForCausalLM.from_pretrained(resolve_model(manifest["settings"]["base"]["path"]))
        PeftModel.from_pretrained(base, files / "adapter")  # the adapter loads again
        trained_b = [
            w for name, w in load_file(files / "adapter" / "adapter_model.safetensors").items() if "lora_B" in name
        ]
        assert (
            any(w.any() for w in trained_b) and manifest["warnings"] == []
        )  # moved from its initialisation, where B is 0
    answers = read(cfg, "arena", ARENA_ANSWER).to_pylist()
    assert sorted({a["model"] for a in answers}) == ["dpo", "policy", "sft"] and len(answers) == 3 * 2 * 3
    assert "## Arena win rates" in report and "| sft | ga | all |" in report and "| dpo | all | all |" in report
    assert (
        "Warning: the judge is the reward model the training pairs were chosen with" in report
    )  # the demo's circular judge
    assert (folder / "win_rates.png").stat().st_size > 1000 and f"]({folder.name}/win_rates.png)" in report
    dpo = version(cfg, "dpo/all")
    monkeypatch.chdir(tmp_path)
    assert main(["merge", str(store / dpo.relative / "files" / "adapter")]) == 0
    assert (
        not dpo.problems() and not (store / dpo.relative / "files" / "merged").exists()
    )  # a committed version stays as it was
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged" / f"dpo-{dpo.key}")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged" / f"dpo-{dpo.key}")
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert merged.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
