"""The judge stage: battles in both orders, the reward judge, skips, and resuming from the finished judgment shards."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from test_arena import arena_question

import croco.judging
import croco.tasks.arena
from conftest import make_config, read, run, save_config, version, write_jsonl
from croco.arena_stats import summarize
from croco.config import EngineConfig, ModelConfig
from croco.engines import load_scorer
from croco.plan import build_plan
from croco.records import ARENA_ANSWER, BATTLE_SKIPPED, JUDGMENT
from croco.summaries import summary_line
from croco.tasks.judge import JUDGMENTS_PER_SHARD, results, results_table


@pytest.fixture
def arena_file(tmp_path):
    rows = [arena_question(f"q{i}", lang, "coding" if i % 2 else "math") for lang in ("en", "da") for i in range(4)]
    return write_jsonl(tmp_path / "arena.jsonl", rows)


def judge_config(
    tmp_path, tiny_models, other_model, prompts_file, arena_file, judge, name="smollm", arena_tokens=12, **sections
):
    return make_config(
        tmp_path / "store",
        tiny_models,
        [{"path": str(prompts_file)}],
        evaluate={"run_adapters": [], "models": {name: {"path": str(other_model)}}},
        arena={"prompts": {"path": str(arena_file)}, "max_new_tokens": arena_tokens, "engine": {"batch_size": 8}},
        judge=judge,
        **sections,
    )


def results_folder(result: dict) -> Path:
    """The run's own folder: its report and the judge's tables."""
    return Path(result["report"]).parent


def test_reward_judge_verdicts_follow_each_answers_own_reward_and_a_circular_judge_is_flagged(
    tmp_path, tiny_models, smollm_dir, prompts_file, arena_file, caplog
):
    # No judge.model: the reward judge is the training reward model (models.reward), asked for explicitly.
    cfg = judge_config(
        tmp_path, tiny_models, smollm_dir, prompts_file, arena_file, {"kind": "reward", "engine": {"batch_size": 8}}
    )
    caplog.set_level(logging.WARNING, logger="croco")
    result = run(cfg, stages=["judge"])
    assert {"judge/en/smollm", "judge/da/smollm"} <= set(result["versions"]) and not any(result["cached"].values())
    judgments = read(cfg, "judge", JUDGMENT).to_pylist()
    assert len(judgments) == 8 and {j["order"] for j in judgments} == {"none"}
    # Every answer scored on its own by the reward model: the stored rewards must be the model's and the baseline's
    # own (not swapped), and the verdict must follow them (not inverted).
    answers = {(a["model"], a["language"], a["question_id"]): a for a in read(cfg, "arena", ARENA_ANSWER).to_pylist()}
    scorer = load_scorer(EngineConfig(device="cpu", batch_size=1), cfg.models.reward)
    for j in judgments:
        mine, theirs = (answers[(name, j["language"], j["question_id"])] for name in ("smollm", "policy"))
        alone = scorer.score(
            [
                [{"role": "user", "content": a["prompt"]}, {"role": "assistant", "content": a["output"]}]
                for a in (mine, theirs)
            ],
            cfg.judge.max_len,
        )
        stored = json.loads(j["judgment"])
        assert (stored["model_reward"], stored["baseline_reward"]) == pytest.approx(
            (alone[0].reward, alone[1].reward), abs=1e-4
        )
        assert stored["model_reward"] != stored["baseline_reward"]
        assert j["outcome"] == ("win" if stored["model_reward"] > stored["baseline_reward"] else "loss")
    folder = results_folder(result)
    rows = json.loads((folder / "judge_results.json").read_text())
    overall = next(r for r in rows if (r["model"], r["language"], r["subcategory"]) == ("smollm", "all", "all"))
    assert (
        overall["judgments"] == 8
        and overall["wins"] == sum(j["outcome"] == "win" for j in judgments)
        and overall["ties"] == 0
    )
    assert overall["ci_low"] <= overall["win_rate"] <= overall["ci_high"]
    assert (folder / "win_rates.png").stat().st_size > 0
    assert "| smollm | en | all |" in (folder / "judge_results.md").read_text()
    circular = "Warning: the judge is the reward model the training pairs were chosen with (models.reward)"
    assert circular in (folder / "judge_results.md").read_text() and circular in (folder / "report.md").read_text()
    assert any(r.levelno == logging.WARNING and circular in r.getMessage() for r in caplog.records)
    for language in ("en", "da"):
        manifest = version(cfg, f"judge/{language}/smollm").manifest()
        assert manifest["judged_now"] == 4 and manifest["records_out"] == 4 and manifest["models"] == ["smollm"]


def test_an_answer_without_a_baseline_answer_is_a_counted_skip(
    tmp_path, tiny_models, prompts_file, arena_file, monkeypatch
):
    real_answer = croco.tasks.arena._answer

    def baseline_misses_q1(generator, questions, name, *rest):
        records = real_answer(generator, questions, name, *rest)
        return [r for r in records if not (name == "policy" and r["question_id"] == "q1")]

    monkeypatch.setattr(croco.tasks.arena, "_answer", baseline_misses_q1)
    other = shutil.copytree(tiny_models["policy"], tmp_path / "other-model")
    cfg = judge_config(
        tmp_path,
        tiny_models,
        other,
        prompts_file,
        arena_file,
        {"kind": "reward"},
        name="other",
        arena_tokens=4,
        languages=["en"],
    )
    run(cfg, stages=["judge"])
    out = version(cfg, "judge/en/other")
    manifest = out.manifest()
    assert (manifest["records_in"], manifest["records_out"], manifest["skipped"]) == (4, 3, {"no_baseline_answer": 1})
    (skipped,) = out.read(BATTLE_SKIPPED, skipped=True).to_pylist()
    assert (skipped["model"], skipped["question_id"], skipped["reason"]) == ("other", "q1", "no_baseline_answer")
    assert "1 skipped (no_baseline_answer: 1)" in summary_line(build_plan(cfg).by_id["judge/en/other"], manifest)


def test_results_table_names_the_unit_and_gives_no_length_controlled_rate_to_tiny_groups(tmp_path):
    cfg = make_config(tmp_path, {"policy": "policy-model", "reward": "reward-model"}, [{"path": "prompts.jsonl"}])
    judgments = [
        {
            "model": "dpo",
            "baseline": "policy",
            "language": "da",
            "question_id": q,
            "subcategory": "coding",
            "order": "none",
            "outcome": outcome,
            "unparseable": None,
            "model_length": 400,
            "baseline_length": 100,
        }
        for q, outcome in (("q1", "win"), ("q2", "tie"))
    ]
    table = results_table(summarize(judgments, rounds=10), cfg)
    assert "is the question: its judgments in both orders and, in the `all` rows, in every language" in table[0]
    row = next(line for line in table if line.startswith("| dpo | da | coding |"))
    assert "| 75.0 | 25.0 |" in row and "| n/a (too few questions) | 1/0/1 |" in row


class RecordingVersion:
    """A judge version in memory that notes which columns are read."""

    def __init__(self, records: list[dict]):
        self.records, self.columns_read = records, []

    def read(self, schema, columns=None, skipped=False):
        self.columns_read.append(columns)
        table = pa.Table.from_pylist(self.records, schema)
        return table.select(columns) if columns else table


def test_win_rate_tables_never_read_the_judges_texts(tmp_path):
    cfg = make_config(tmp_path, {"policy": "policy-model", "reward": "reward-model"}, [{"path": "prompts.jsonl"}])
    judged = RecordingVersion(
        [
            {
                "model": "dpo",
                "baseline": "policy",
                "language": "da",
                "question_id": f"q{i}",
                "subcategory": "coding",
                "order": "none",
                "outcome": "win" if i % 2 else "loss",
                "unparseable": None,
                "judgment": "a long judge's reasoning " * 100,
                "model_length": 100,
                "baseline_length": 90,
            }
            for i in range(6)
        ]
    )
    found = results(cfg, [judged])
    assert judged.columns_read and all(
        columns is not None and "judgment" not in columns for columns in judged.columns_read
    )
    assert found["rows"][0]["judgments"] == 6 and found["rows"][0]["win_rate"] == 0.5


class CountingGenerator:
    """Wraps the real judge engine and counts the prompts it is asked to judge."""

    calls = 0

    def __init__(self, inner):
        self.inner = inner

    def generate(self, prompts, params, progress=None, seeds=None):
        CountingGenerator.calls += len(prompts)
        return self.inner.generate(prompts, params, progress, seeds)


QUESTIONS = 60  # x 2 orders = 120 judgments: a full shard of 64 and one of 56


def test_killed_judging_resumes_without_asking_again(tmp_path, tiny_models, prompts_file, prefect_server, monkeypatch):
    # The tiny random model is the judge: its verdicts are nonsense (unparseable), but every call counts. Short answers
    # and judgments keep the 120 judgments fast on a CPU (the tiny model still needs about 0.1 s a judgment).
    questions = write_jsonl(
        tmp_path / "arena.jsonl",
        [arena_question(f"q{i}", "en", "coding" if i % 2 else "math") for i in range(QUESTIONS)],
    )
    llm_judge = {
        "kind": "llm",
        "model": {"path": tiny_models["policy"]},
        "max_new_tokens": 8,
        "engine": {"batch_size": 8},
    }
    # The evaluated model is a copy of the tiny policy in another folder (SmolLM2 would take a minute for 60 answers).
    other = shutil.copytree(tiny_models["policy"], tmp_path / "other-model")
    cfg = judge_config(
        tmp_path,
        tiny_models,
        other,
        prompts_file,
        questions,
        llm_judge,
        name="other",
        arena_tokens=6,
        languages=["en"],
        retries={"default": {"attempts": 0}},
    )
    run(cfg, stages=["arena"])
    total = 2 * QUESTIONS
    assert JUDGMENTS_PER_SHARD < total < 2 * JUDGMENTS_PER_SHARD
    out = version(cfg, "judge/en/other")
    first_shard = Path(out.path) / "index" / "part-00000.json"

    config_file = save_config(cfg, tmp_path / "judge.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_API_URL": prefect_server}
    process = subprocess.Popen(
        [sys.executable, "-m", "croco.cli", "judge", str(config_file)], stderr=subprocess.PIPE, env=env
    )
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
    monkeypatch.setattr(
        croco.judging, "load_generator", lambda engine, model: CountingGenerator(real_load(engine, model))
    )
    CountingGenerator.calls = 0
    result = run(cfg, stages=["judge"])
    assert result["cached"]["judge/en/other"] is False and result["cached"]["arena/en/other"] is True
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
    assert result["cached"]["judge/en/other"] is True and result["versions"]["judge/en/other"] == out.uri
    assert CountingGenerator.calls == 0
    assert "ties count as loss" in (results_folder(result) / "judge_results.md").read_text()


def test_adding_a_model_judges_only_that_model_and_the_tables_read_every_model(
    tmp_path, tiny_models, prompts_file, arena_file
):
    import transformers

    first = shutil.copytree(tiny_models["policy"], tmp_path / "first-model")
    cfg = judge_config(
        tmp_path, tiny_models, first, prompts_file, arena_file, {"kind": "reward"}, name="first", arena_tokens=4
    )
    run(cfg, stages=["judge"])
    manifest = version(cfg, "judge/en/first").manifest()
    assert manifest["libraries"]["transformers"] == transformers.__version__ and "trl" in manifest["libraries"]

    second = shutil.copytree(tiny_models["policy"], tmp_path / "second-model")
    models = {**cfg.evaluate.models, "second": ModelConfig(path=str(second))}
    result = run(
        cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"models": models})}), stages=["judge"]
    )
    judged = {unit: cached for unit, cached in result["cached"].items() if unit.startswith("judge/")}
    assert judged == {
        "judge/en/first": True,
        "judge/da/first": True,
        "judge/en/second": False,
        "judge/da/second": False,
    }
    rows = json.loads((results_folder(result) / "judge_results.json").read_text())
    assert {(r["model"], r["language"]) for r in rows if r["subcategory"] == "all"} >= {
        (m, lang) for m in ("first", "second") for lang in ("en", "da")
    }
