"""The judge stage: battles in both orders, the reward judge, and resuming from the finished judgment shards."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import croco.judging
from croco.records import JUDGMENT
from croco.storage import Storage
from croco.tasks.judge import JUDGMENTS_PER_SHARD

from conftest import make_config, read, run, save_config, version, write_jsonl
from test_arena import arena_question


@pytest.fixture
def arena_file(tmp_path):
    rows = [arena_question(f"q{i}", lang, "coding" if i % 2 else "math") for lang in ("en", "da") for i in range(4)]
    return write_jsonl(tmp_path / "arena.jsonl", rows)


def judge_config(tmp_path, tiny_models, other_model, prompts_file, arena_file, judge, name="smollm", arena_tokens=12, **sections):
    return make_config(
        tmp_path / "store",
        tiny_models,
        [{"path": str(prompts_file)}],
        evaluate={"run_adapters": [], "models": {name: {"path": str(other_model)}}},
        arena={"prompts": {"path": str(arena_file)}, "max_new_tokens": arena_tokens, "engine": {"batch_size": 8}},
        judge=judge,
        **sections,
    )


def results_folder(cfg) -> Path:
    return Path(Storage(cfg.storage.root).root) / "runs" / cfg.name


def test_reward_judge_scores_one_battle_per_question_and_writes_the_tables(tmp_path, tiny_models, smollm_dir, prompts_file, arena_file):
    cfg = judge_config(tmp_path, tiny_models, smollm_dir, prompts_file, arena_file, {"kind": "reward", "engine": {"batch_size": 8}})
    result = run(cfg, stages=["judge"])
    assert {"judge/en", "judge/da"} <= set(result["versions"]) and not any(result["cached"].values())
    judgments = read(cfg, "judge", JUDGMENT).to_pylist()
    assert len(judgments) == 8 and {j["order"] for j in judgments} == {"none"}
    assert all(j["outcome"] in {"win", "loss", "tie"} for j in judgments)
    rewards = json.loads(judgments[0]["judgment"])
    assert {"model_reward", "baseline_reward"} == set(rewards)
    folder = results_folder(cfg)
    rows = json.loads((folder / "judge_results.json").read_text())
    overall = next(r for r in rows if (r["model"], r["language"], r["subcategory"]) == ("smollm", "all", "all"))
    assert overall["judgments"] == 8 and overall["wins"] + overall["losses"] + overall["ties"] == 8
    assert overall["ci_low"] <= overall["win_rate"] <= overall["ci_high"]
    assert (folder / "win_rates.png").stat().st_size > 0
    assert "| smollm | en | all |" in (folder / "judge_results.md").read_text()
    assert "## Arena win rates" in (folder / "report.md").read_text()
    for language in ("en", "da"):
        manifest = version(cfg, f"judge/{language}").manifest()
        assert manifest["judged_now"] == 4 and manifest["records_out"] == 4 and manifest["models"] == ["smollm"]


class CountingGenerator:
    """Wraps the real judge engine and counts the prompts it is asked to judge."""

    calls = 0

    def __init__(self, inner):
        self.inner = inner

    def generate(self, prompts, params, progress=None):
        CountingGenerator.calls += len(prompts)
        return self.inner.generate(prompts, params, progress)


QUESTIONS = 60  # x 2 orders = 120 judgments: a full shard of 64 and one of 56


def test_killed_judging_resumes_without_asking_again(tmp_path, tiny_models, prompts_file, prefect_server, monkeypatch):
    # The tiny random model is the judge: its verdicts are nonsense (unparseable), but every call counts. Short answers
    # and judgments keep the 120 judgments fast on a CPU (the tiny model still needs about 0.1 s a judgment).
    questions = write_jsonl(tmp_path / "arena.jsonl", [arena_question(f"q{i}", "en", "coding" if i % 2 else "math") for i in range(QUESTIONS)])
    llm_judge = {"kind": "llm", "model": {"path": tiny_models["policy"]}, "max_new_tokens": 8, "engine": {"batch_size": 8}}
    # The evaluated model is a copy of the tiny policy in another folder (SmolLM2 would take a minute for 60 answers).
    other = shutil.copytree(tiny_models["policy"], tmp_path / "other-model")
    cfg = judge_config(tmp_path, tiny_models, other, prompts_file, questions, llm_judge, name="other", arena_tokens=6,
                       languages=["en"], retries={"default": {"attempts": 0}})
    run(cfg, stages=["arena"])
    total = 2 * QUESTIONS
    assert JUDGMENTS_PER_SHARD < total < 2 * JUDGMENTS_PER_SHARD
    out = version(cfg, "judge/en")
    first_shard = Path(out.path) / "index" / "part-00000.json"

    config_file = save_config(cfg, tmp_path / "judge.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_API_URL": prefect_server}
    process = subprocess.Popen([sys.executable, "-m", "croco.cli", "judge", str(config_file)], stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 300
    while not first_shard.exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "judging never finished a shard"
        time.sleep(0.01)
    assert process.poll() is None, "the judge finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert not out.committed()
    finished = out.finished_shards()
    assert set(finished) == {"00000"} and finished["00000"]["data"]["rows"] == JUDGMENTS_PER_SHARD

    real_load = croco.judging.load_generator
    monkeypatch.setattr(croco.judging, "load_generator", lambda engine, model: CountingGenerator(real_load(engine, model)))
    CountingGenerator.calls = 0
    result = run(cfg, stages=["judge"])
    assert result["cached"]["judge/en"] is False and result["cached"]["arena/en/other"] is True
    missing = total - JUDGMENTS_PER_SHARD
    assert CountingGenerator.calls == missing  # only the shard the killed run had not finished
    manifest = out.manifest()
    assert (manifest["judged_now"], manifest["records_in"], manifest["records_out"]) == (missing, total, total)
    assert manifest["shards"]["00000"] == finished["00000"]  # the finished shard was kept as it was, not redone
    judgments = out.read(JUDGMENT).to_pylist()
    assert sorted(j["order"] for j in judgments) == ["baseline_first"] * QUESTIONS + ["model_first"] * QUESTIONS
    assert len({(j["question_id"], j["order"]) for j in judgments}) == total

    # Counting ties another way changes the tables, not the judgments: no new judge calls.
    CountingGenerator.calls = 0
    retallied = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"ties": "loss"})})
    result = run(retallied, stages=["judge"])
    assert result["cached"]["judge/en"] is True and result["versions"]["judge/en"] == out.uri
    assert CountingGenerator.calls == 0
    assert "ties count as loss" in (results_folder(cfg) / "judge_results.md").read_text()
