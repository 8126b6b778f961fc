"""gc beside real runs: a run still going keeps every version it uses, and a run killed with SIGKILL counts as dead
once its heartbeat is past its lease (a second process, a shared storage root, heartbeats every second)."""

import signal
import time

import pytest
from test_resume import Run

from conftest import make_config, prompt_record, run, save_config, version, write_jsonl
from croco import runs
from croco.cli import main
from croco.storage import Storage


@pytest.fixture
def config_of(tmp_path, tiny_models, monkeypatch):
    """Configs of one name and root that differ in max_new_tokens: 60 is slow enough to catch a run mid-way."""
    monkeypatch.setenv("CROCO_HEARTBEAT_S", "1")  # for the runs started here and in subprocesses: a lease of 3 s
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [prompt_record(f"p{i:02d}", lang, f"Prompt number {i}") for lang in ("en", "da") for i in range(20)],
    )

    def make(max_new_tokens):
        cfg = make_config(
            tmp_path / "store",
            tiny_models,
            [{"path": str(prompts)}],
            generate={
                "num_samples": 3,
                "max_new_tokens": max_new_tokens,
                "prompts_per_shard": 1,
                "engine": {"batch_size": 3},
            },
            sft={"enabled": False},
            dpo={"enabled": False},
        )
        return cfg, save_config(cfg, tmp_path / f"tokens-{max_new_tokens}.yaml")

    return make


def wait_for(condition, process: Run, what: str, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.process.poll() is None, open(process.err.name).read()[-3000:]
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout} s"
        time.sleep(0.2)


def test_gc_keeps_every_version_of_a_run_still_going_and_the_run_completes(config_of, prefect_server, tmp_path):
    slow, slow_path = config_of(60)
    going = Run(["-m", "croco.cli", "run", str(slow_path)], prefect_server, tmp_path)
    wait_for(lambda: version(slow, "generate/en").committed(), going, "the slow run's generate/en")
    quick, quick_path = config_of(2)
    run(quick, stages=["generate"], languages=["en"])  # a newer run of the config completes while the older one goes on
    assert main(["gc", str(quick_path), "--keep", "1"]) == 0
    assert going.process.poll() is None, "the slow run finished before gc: make it slower"
    going.finish()
    storage = Storage(slow.storage.root)
    [record] = [
        r for r in runs.records(storage) if r["versions"]["generate/en"] == version(slow, "generate/en").relative
    ]
    assert record["status"] == "completed"
    assert [unit for unit, path in record["versions"].items() if not storage.version_at(path).committed()] == []


def test_a_killed_run_is_dead_after_its_lease_and_gc_keeps_the_last_completed_run(
    config_of, prefect_server, tmp_path, capsys
):
    done, done_path = config_of(2)
    run(done)
    killed_cfg, killed_path = config_of(60)  # a newer run with other settings, killed mid-way: its record says running
    killed = Run(["-m", "croco.cli", "run", str(killed_path)], prefect_server, tmp_path)
    wait_for(
        lambda: version(killed_cfg, "generate/en").finished_shards(verify=False), killed, "a shard of the killed run"
    )
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait()
    storage = Storage(done.storage.root)
    newest, completed = runs.records(storage)
    assert newest["status"] == "running" and completed["status"] == "completed"
    deadline = time.monotonic() + 30
    while runs.state(runs.records(storage)[0]) != "died":
        assert time.monotonic() < deadline, "the killed run still counts as running"
        time.sleep(0.5)
    capsys.readouterr()
    assert main(["runs", str(done_path)]) == 0
    assert [line.split()[2] for line in capsys.readouterr().out.splitlines()] == ["died", "completed"]

    assert main(["gc", str(done_path), "--keep", "1"]) == 0
    assert [r["run_id"] for r in runs.records(storage)] == [newest["run_id"], completed["run_id"]]
    assert [unit for unit, path in completed["versions"].items() if not storage.version_at(path).committed()] == []
    capsys.readouterr()
    assert main(["plan", str(done_path)]) == 0
    assert {line.split()[1] for line in capsys.readouterr().out.splitlines()} == {"cached"}
