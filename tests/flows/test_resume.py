"""A crash loses nothing, and two runs at once compute nothing twice: real subprocesses, SIGKILL, a shared storage root."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from croco.records import SAMPLE, SCORE

from conftest import make_config, prompt_record, read, save_config, version, write_jsonl

RUN_AND_PRINT = "import json, sys; from croco.flows.pipeline import pipeline; print(json.dumps(pipeline(config=sys.argv[1])['cached']))"


@pytest.fixture
def config_of(tmp_path, tiny_models):
    prompts = write_jsonl(tmp_path / "p.jsonl", [prompt_record(f"p{i:02d}", lang, f"Prompt number {i}") for lang in ("en", "da") for i in range(20)])

    def make(name):
        cfg = make_config(
            tmp_path / name, tiny_models, [{"path": str(prompts)}],
            generate={"num_samples": 3, "max_new_tokens": 60, "prompts_per_shard": 1, "engine": {"batch_size": 3}},
            sft={"enabled": False}, dpo={"enabled": False},
        )
        return cfg, save_config(cfg, tmp_path / f"{name}.yaml")

    return make


def start(script_args, prefect_server):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_API_URL": prefect_server}
    return subprocess.Popen([sys.executable, *script_args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def sorted_rows(cfg, stage, schema, columns):
    key = ["prompt_id", "language", "sample_index"]
    return read(cfg, stage, schema, [*key, *columns]).sort_by([(k, "ascending") for k in key])


def test_sigkill_during_generate_then_rerun_matches_an_uninterrupted_run(config_of, prefect_server):
    killed_cfg, killed_path = config_of("killed")
    generate_en = version(killed_cfg, "generate/en")
    process = start(["-m", "croco.cli", "run", str(killed_path)], prefect_server)
    deadline = time.monotonic() + 180
    while len(generate_en.finished_shards(verify=False)) < 3:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "generate never wrote a shard"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_at_kill = len(generate_en.finished_shards(verify=False))
    assert not generate_en.committed() and done_at_kill < 20

    rerun = start(["-m", "croco.cli", "run", str(killed_path)], prefect_server)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()  # a lock left by the killed run must not block it
    assert generate_en.manifest()["shards_resumed"] >= done_at_kill
    full_cfg, full_path = config_of("full")
    full = start(["-m", "croco.cli", "run", str(full_path)], prefect_server)
    assert full.wait() == 0, full.stderr.read()

    for stage, schema, columns in (("generate", SAMPLE, ["response", "finish_reason"]), ("score", SCORE, ["reward"])):
        resumed, uninterrupted = sorted_rows(killed_cfg, stage, schema, columns), sorted_rows(full_cfg, stage, schema, columns)
        assert resumed.num_rows == 40 * 3  # nothing lost, nothing twice
        assert resumed.equals(uninterrupted), stage
    assert not list((killed_path.parent / "killed").rglob("*.tmp"))


def test_two_runs_of_one_config_at_once_compute_every_unit_once(config_of, prefect_server):
    cfg, path = config_of("shared")
    first, second = (start(["-c", RUN_AND_PRINT, str(path)], prefect_server) for _ in range(2))
    results = []
    for process in (first, second):
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert set(results[0]) == set(results[1])
    for unit in results[0]:
        assert [results[0][unit], results[1][unit]].count(False) == 1, f"{unit} was computed {[results[0][unit], results[1][unit]].count(False)} times"
    alone_cfg, alone_path = config_of("alone")
    alone = start(["-c", RUN_AND_PRINT, str(alone_path)], prefect_server)
    assert alone.wait() == 0, alone.stderr.read()
    assert sorted_rows(cfg, "generate", SAMPLE, ["response"]).equals(sorted_rows(alone_cfg, "generate", SAMPLE, ["response"]))
