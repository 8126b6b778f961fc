"""The stage task wrapper: retries from the config, none for bad input, and locks of dead processes released."""

import json
import os
import subprocess
import sys

import pytest
from prefect import flow

from croco.caching import ReleasingLockManager, stage_task, with_execution
from croco.errors import CrocoError
from croco.plan import Unit
from croco.storage import Storage

from conftest import make_config

calls: list[str] = []


@stage_task
def flaky(cfg, unit, out, inputs):
    calls.append(unit.language)
    if unit.language == "en" and calls.count("en") < 3:
        raise RuntimeError("a flaky server")
    if unit.language == "da":
        raise CrocoError("data.sources: a bad record")
    return {"records_in": 0, "records_out": 0, "skipped": {}}


def test_failures_are_retried_as_configured_but_bad_input_is_not(tmp_path, tiny_models, prompts_file):
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], retries={"default": {"attempts": 2, "delay_s": 0.01}})
    task = with_execution(flaky, cfg, Storage(cfg.storage.root))

    @flow
    def attempt(language: str):
        return task(cfg, Unit("flaky", language, f"key-{language}"))

    calls.clear()
    assert attempt("en")["version"] == "flaky/en/key-en" and calls.count("en") == 3  # two retries, then success
    with pytest.raises(CrocoError, match="a bad record"):
        attempt("da")
    assert calls.count("da") == 1


def test_a_lock_whose_process_died_is_free_and_a_live_one_is_not(tmp_path):
    manager = ReleasingLockManager(tmp_path / "locks")
    assert manager.acquire_lock("generate-en-k", holder="me")
    assert manager.is_locked("generate-en-k") and json.loads((tmp_path / "locks" / "generate-en-k.lock").read_text())["pid"] == os.getpid()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    path = tmp_path / "locks" / "score-en-k.lock"
    path.write_text(json.dumps({"holder": "someone", "expiration": None, "host": os.uname().nodename, "pid": int(dead)}))
    other = ReleasingLockManager(tmp_path / "locks")
    assert not other.is_locked("score-en-k") and not path.exists()
    assert other.acquire_lock("score-en-k", holder="me-too", acquire_timeout=5)


def test_a_lock_never_tagged_with_its_holder_is_released_after_a_minute(tmp_path):
    path = tmp_path / "locks" / "generate-da-k.lock"
    path.parent.mkdir()
    path.write_text(json.dumps({"holder": "someone", "expiration": None}))
    manager = ReleasingLockManager(tmp_path / "locks")
    assert manager.is_locked("generate-da-k")  # just taken: its holder is about to tag it
    os.utime(path, (path.stat().st_atime - 120, path.stat().st_mtime - 120))
    assert not manager.is_locked("generate-da-k") and not path.exists()
