"""A crash loses nothing: SIGKILL `croco run` during generate, rerun it, and get what an uninterrupted run gets."""

import os
import signal
import subprocess
import sys
import time

import yaml

from croco.records import SAMPLE, SCORE
from croco.store import StageStore

from conftest import prompt_record, write_jsonl


def write_config(tmp_path, name, tiny_models, prompts_path):
    config = {
        "run_dir": str(tmp_path / name),
        "languages": ["en", "da"],
        "models": {"policy": {"path": tiny_models["policy"]}, "reward": {"path": tiny_models["reward"]}},
        "data": {"sources": [{"path": str(prompts_path)}]},
        "generate": {"num_samples": 3, "max_new_tokens": 60, "prompts_per_shard": 1, "engine": {"batch_size": 3}},
        "arena": {"enabled": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def croco(*args):
    return subprocess.Popen([sys.executable, "-m", "croco.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_sigkill_during_generate_then_rerun_matches_an_uninterrupted_run(tmp_path, tiny_models):
    prompts = write_jsonl(tmp_path / "p.jsonl", [prompt_record(f"p{i:02d}", lang, f"Prompt number {i}") for lang in ("en", "da") for i in range(20)])
    killed_cfg = write_config(tmp_path, "killed", tiny_models, prompts)
    generate_store = StageStore(tmp_path / "killed", "generate")

    process = croco("run", str(killed_cfg))
    deadline = time.monotonic() + 120
    while len(generate_store.shard_indices()) < 3:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "generate never wrote a shard"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_at_kill = len(generate_store.shard_indices())
    assert generate_store.manifest()["status"] == "running" and done_at_kill < 40

    rerun = croco("run", str(killed_cfg))
    assert rerun.wait() == 0, rerun.stderr.read().decode()
    assert generate_store.manifest()["shards_resumed"] >= done_at_kill
    full = croco("run", str(write_config(tmp_path, "full", tiny_models, prompts)))
    assert full.wait() == 0, full.stderr.read().decode()

    key = ["prompt_id", "language", "sample_index"]
    for stage, schema, columns in (("generate", SAMPLE, [*key, "response", "finish_reason"]), ("score", SCORE, [*key, "reward"])):
        resumed = StageStore(tmp_path / "killed", stage).read(schema).select(columns).sort_by([(k, "ascending") for k in key])
        uninterrupted = StageStore(tmp_path / "full", stage).read(schema).select(columns).sort_by([(k, "ascending") for k in key])
        assert resumed.num_rows == 40 * 3
        assert resumed.equals(uninterrupted), stage
    assert not list((tmp_path / "killed").rglob("*.tmp"))
