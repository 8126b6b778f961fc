"""End to end on the embedded models, as `make demo` runs them, at a smaller size."""

import math

import pytest

from croco.cli import main
from croco.records import SAMPLE, SCORE
from croco.store import StageStore

from conftest import REPO


@pytest.mark.slow
def test_demo_config_runs_generate_and_score_on_embedded_models(tmp_path, demo_reward, capsys):
    reward_dir, _ = demo_reward
    run_dir = tmp_path / "demo"
    overrides = [f"run_dir={run_dir}", f"models.reward.path={reward_dir}", "data.subsample=2", "languages=[en,ga]",
                 "generate.num_samples=2", "generate.max_new_tokens=24"]
    assert main(["run", str(REPO / "configs" / "demo.yaml"), *overrides]) == 0
    samples = StageStore(run_dir, "generate").read(SAMPLE).to_pylist()
    scores = StageStore(run_dir, "score").read(SCORE).to_pylist()
    assert len(samples) == len(scores) == 2 * 2 * 2
    assert all(s["response"].strip() for s in samples)
    assert all(math.isfinite(s["reward"]) for s in scores)
    report = (run_dir / "report.md").read_text()
    assert "## Rewards" in report and "| ga |" in report and (run_dir / "rewards.png").stat().st_size > 1000
