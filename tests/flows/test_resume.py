"""A crash loses nothing, and two runs at once compute nothing twice: real subprocesses, SIGKILL, a shared storage root."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import make_config, prompt_record, read, save_config, version, write_jsonl
from croco.records import SAMPLE, SCORE

RUN_AND_PRINT = "import json, sys; from croco.flows.pipeline import pipeline; print(json.dumps(pipeline(config=sys.argv[1])['cached']))"


@pytest.fixture
def config_of(tmp_path, tiny_models):
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [prompt_record(f"p{i:02d}", lang, f"Prompt number {i}") for lang in ("en", "da") for i in range(20)],
    )

    def make(name):
        cfg = make_config(
            tmp_path / name,
            tiny_models,
            [{"path": str(prompts)}],
            generate={"num_samples": 3, "max_new_tokens": 60, "prompts_per_shard": 1, "engine": {"batch_size": 3}},
            sft={"enabled": False},
            dpo={"enabled": False},
        )
        return cfg, save_config(cfg, tmp_path / f"{name}.yaml")

    return make


class Run:
    """A subprocess whose output goes to files (an unread pipe fills up and blocks it), with its start and end times."""

    def __init__(self, script_args, prefect_server, folder):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_API_URL": prefect_server}
        self.out, self.err = (open(folder / f"{id(self)}.{part}", "w+") for part in ("out", "err"))
        self.started = time.time()
        self.process = subprocess.Popen(
            [sys.executable, *script_args], stdout=self.out, stderr=self.err, env=env, text=True
        )

    def finish(self, timeout=600) -> str:
        code = self.process.wait(
            timeout=timeout
        )  # a lock left by a killed run blocks a rerun only until its lease expires
        self.ended = time.time()
        self.err.seek(0)
        assert code == 0, self.err.read()[-3000:]
        self.out.seek(0)
        return self.out.read()


def sorted_rows(cfg, stage, schema, columns):
    key = ["prompt_id", "language", "sample_index"]
    return read(cfg, stage, schema, [*key, *columns]).sort_by([(k, "ascending") for k in key])


def test_sigkill_during_generate_then_rerun_matches_an_uninterrupted_run(
    config_of, prefect_server, tmp_path, monkeypatch
):
    monkeypatch.setenv("CROCO_HEARTBEAT_S", "1")  # the killed run's unit leases expire 3 s after its last heartbeat
    killed_cfg, killed_path = config_of("killed")
    generate_en = version(killed_cfg, "generate/en")
    killed = Run(["-m", "croco.cli", "run", str(killed_path)], prefect_server, tmp_path)
    deadline = time.monotonic() + 180
    while len(generate_en.finished_shards(verify=False)) < 3:
        assert killed.process.poll() is None, open(killed.err.name).read()
        assert time.monotonic() < deadline, "generate never wrote a shard"
        time.sleep(0.01)
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait()
    done_at_kill = len(generate_en.finished_shards(verify=False))
    assert not generate_en.committed() and done_at_kill < 20

    Run(["-m", "croco.cli", "run", str(killed_path)], prefect_server, tmp_path).finish()
    assert generate_en.manifest()["shards_resumed"] >= done_at_kill
    full_cfg, full_path = config_of("full")
    Run(["-m", "croco.cli", "run", str(full_path)], prefect_server, tmp_path).finish()

    for stage, schema, columns in (("generate", SAMPLE, ["response", "finish_reason"]), ("score", SCORE, ["reward"])):
        resumed, uninterrupted = (
            sorted_rows(killed_cfg, stage, schema, columns),
            sorted_rows(full_cfg, stage, schema, columns),
        )
        assert resumed.num_rows == 40 * 3  # nothing lost, nothing twice
        assert resumed.equals(uninterrupted), stage
    assert not list((killed_path.parent / "killed").rglob("*.tmp"))


def test_two_runs_of_one_config_at_once_compute_every_unit_once(config_of, prefect_server, tmp_path):
    cfg, path = config_of("shared")
    runs = [Run(["-c", RUN_AND_PRINT, str(path)], prefect_server, tmp_path) for _ in range(2)]
    results = [json.loads(run.finish().strip().splitlines()[-1]) for run in runs]
    assert runs[1].started < runs[0].ended and runs[0].started < runs[1].ended  # they did overlap
    assert set(results[0]) == set(results[1])
    for unit in results[0]:
        computed = [results[0][unit], results[1][unit]].count(False)
        assert computed == 1, f"{unit} was computed {computed} times"
    alone_cfg, alone_path = config_of("alone")
    Run(["-c", RUN_AND_PRINT, str(alone_path)], prefect_server, tmp_path).finish()
    assert sorted_rows(cfg, "generate", SAMPLE, ["response"]).equals(
        sorted_rows(alone_cfg, "generate", SAMPLE, ["response"])
    )
