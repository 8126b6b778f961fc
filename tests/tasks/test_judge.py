"""The judge stage: battles in both orders, the reward judge, and resuming from the judgment cache."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

import croco.judging
from croco.pipeline import run_pipeline
from croco.records import JUDGMENT
from croco.stages.judge import CACHE_FILE
from croco.store import StageStore

from conftest import make_config, write_jsonl
from stages.test_arena import arena_question


@pytest.fixture
def arena_file(tmp_path):
    rows = [arena_question(f"q{i}", lang, "coding" if i % 2 else "math") for lang in ("en", "da") for i in range(4)]
    return write_jsonl(tmp_path / "arena.jsonl", rows)


def judge_config(tmp_path, tiny_models, smollm_dir, prompts_file, arena_file, judge):
    return make_config(
        tmp_path / "run",
        tiny_models,
        [{"path": str(prompts_file)}],
        evaluate={"run_adapters": [], "models": {"smollm": {"path": str(smollm_dir)}}},
        arena={"prompts": {"path": str(arena_file)}, "max_new_tokens": 12, "engine": {"batch_size": 8}},
        judge=judge,
    )


def test_reward_judge_scores_one_battle_per_question_and_writes_the_tables(tmp_path, tiny_models, smollm_dir, prompts_file, arena_file):
    cfg = judge_config(tmp_path, tiny_models, smollm_dir, prompts_file, arena_file, {"kind": "reward", "engine": {"batch_size": 8}})
    manifest = run_pipeline(cfg, only=["arena", "judge"])[-1].manifest
    store = StageStore(cfg.run_dir, "judge")
    judgments = store.read(JUDGMENT).to_pylist()
    assert len(judgments) == 8 and {j["order"] for j in judgments} == {"none"}
    assert all(j["outcome"] in {"win", "loss", "tie"} for j in judgments)
    rewards = json.loads(judgments[0]["judgment"])
    assert {"model_reward", "baseline_reward"} == set(rewards)
    rows = json.loads((store.path / "results.json").read_text())
    overall = next(r for r in rows if (r["model"], r["language"], r["subcategory"]) == ("smollm", "all", "all"))
    assert overall["judgments"] == 8 and overall["wins"] + overall["losses"] + overall["ties"] == 8
    assert overall["ci_low"] <= overall["win_rate"] <= overall["ci_high"]
    assert (store.path / "win_rates.png").stat().st_size > 0
    assert "| smollm | en | all |" in (store.path / "results.md").read_text()
    assert manifest["judged_now"] == 8 and manifest["from_cache"] == 0


class CountingGenerator:
    """Wraps the real judge engine and counts the prompts it is asked to judge."""

    calls = 0

    def __init__(self, inner):
        self.inner = inner

    def generate(self, prompts, params, progress=None):
        CountingGenerator.calls += len(prompts)
        return self.inner.generate(prompts, params, progress)


def test_killed_judging_resumes_without_asking_again(tmp_path, tiny_models, smollm_dir, prompts_file, arena_file, monkeypatch):
    # The tiny random model is the judge: its verdicts are nonsense (mostly unparseable), but every call counts.
    llm_judge = {"kind": "llm", "model": {"path": tiny_models["policy"]}, "max_new_tokens": 150, "engine": {"batch_size": 1, "concurrency": 1}}
    cfg = judge_config(tmp_path, tiny_models, smollm_dir, prompts_file, arena_file, llm_judge)
    run_pipeline(cfg, only=["arena"])
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump()))
    cache = tmp_path / "run" / CACHE_FILE

    process = subprocess.Popen([sys.executable, "-m", "croco.cli", "judge", str(config_file)], stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while _cached(cache) < 4:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "judging never cached a judgment"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = _cached(cache)
    assert 4 <= done < 16  # 8 battles x 2 orders

    real_load = croco.judging.load_generator
    monkeypatch.setattr(croco.judging, "load_generator", lambda engine, model: CountingGenerator(real_load(engine, model)))
    manifest = run_pipeline(cfg, only=["judge"])[-1].manifest
    assert CountingGenerator.calls == 16 - done
    assert (manifest["from_cache"], manifest["judged_now"]) == (done, 16 - done)
    judgments = StageStore(cfg.run_dir, "judge").read(JUDGMENT).to_pylist()
    assert sorted(j["order"] for j in judgments) == ["baseline_first"] * 8 + ["model_first"] * 8

    # Counting ties another way changes the tables, not the judgments: no new judge calls.
    CountingGenerator.calls = 0
    retallied = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"ties": "loss"})})
    assert run_pipeline(retallied, only=["judge"])[-1].manifest["from_cache"] == 16
    assert CountingGenerator.calls == 0


def _cached(path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet, or the writer holds the lock
        return 0
