"""Unit locks as leases in the storage root, with real processes, on a local root and on a real S3 server:
roots apart, exclusion between processes, a SIGKILLed holder taken over after its expiry, one winner per race."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from croco.leases import Lease, LeaseLockManager
from croco.storage import Storage

WORKER = str(Path(__file__).with_name("lease_worker.py"))


@pytest.fixture(params=["local", "s3"])
def roots(request, tmp_path):
    """A function giving storage roots of one kind, and the environment their processes need."""
    if request.param == "local":
        return (lambda name: str(tmp_path / name)), {}
    env = request.getfixturevalue("s3_server")
    monkeypatch = request.getfixturevalue("monkeypatch")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return (lambda name: f"s3://croco/{tmp_path.name}-{name}"), env


def worker(env: dict, heartbeat_s: float, *arguments: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, WORKER, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env, "CROCO_HEARTBEAT_S": str(heartbeat_s)},
    )


def holding(env: dict, heartbeat_s: float, root: str, key: str) -> subprocess.Popen:
    holder = worker(env, heartbeat_s, "hold", root, key)
    assert holder.stdout.readline().strip() == "held", holder.stderr.read()
    return holder


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    process.stdout.close()
    process.stderr.close()


def test_two_roots_never_wait_on_each_other(roots, monkeypatch):
    root, env = roots
    monkeypatch.setenv("CROCO_HEARTBEAT_S", "1")
    holder = holding(env, 1, root("a"), "generate-en-k")
    try:
        assert LeaseLockManager(Storage(root("b"))).acquire_lock("generate-en-k", "me", acquire_timeout=0)
        assert not LeaseLockManager(Storage(root("a"))).acquire_lock("generate-en-k", "me", acquire_timeout=1)
    finally:
        stop(holder)


def test_processes_on_one_root_take_the_lock_one_at_a_time(roots, tmp_path):
    root, env = roots
    counter = tmp_path / "counter"
    counter.write_text("0")
    counting = [worker(env, 1, "count", root("shared"), "score-en-k", str(counter), "10") for _ in range(3)]
    for process in counting:
        assert process.wait(timeout=300) == 0, process.stderr.read()
        stop(process)
    assert counter.read_text() == "30"  # no update lost: never two holders at once


def test_a_holder_killed_with_sigkill_keeps_the_lock_until_its_lease_expires_then_loses_it(roots, monkeypatch):
    root, env = roots
    monkeypatch.setenv("CROCO_HEARTBEAT_S", "0.5")  # a lease of 1.5 s
    holder = holding(env, 0.5, root("killed"), "dpo-en-k")
    time.sleep(1.6)  # longer than a lease: the holder's heartbeat has renewed it
    locks = LeaseLockManager(Storage(root("killed")))
    assert locks.is_locked("dpo-en-k") and not locks.acquire_lock("dpo-en-k", "me", acquire_timeout=0)
    record = Lease(Storage(root("killed")), "dpo-en-k").current()
    assert record["pid"] == holder.pid and record["host"] == os.uname().nodename
    os.kill(holder.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    stop(holder)
    assert not locks.acquire_lock("dpo-en-k", "me", acquire_timeout=0)  # dead, but its lease still runs
    assert locks.acquire_lock("dpo-en-k", "me", acquire_timeout=10)
    assert 0.1 < time.monotonic() - killed_at < 3.5 and locks.is_lock_holder("dpo-en-k", "me")
    locks.release_lock("dpo-en-k", "me")
    assert not locks.is_locked("dpo-en-k")


def test_waiters_racing_for_one_expired_lease_exactly_one_wins(roots):
    root, env = roots
    storage = Storage(root("race"))
    keys = [f"generate-da-{turn}" for turn in range(5)]
    for key in keys:  # a holder that died: its lease expires 10 ms from now
        assert Lease(storage, key, length_s=0.01).acquire(0)
    start = time.time() + 12  # the waiters start up (imports) in a few seconds, then try at the same moment
    racers = [worker(env, 60, "race", root("race"), str(start), *keys) for _ in range(4)]
    outcomes = []
    for racer in racers:
        assert racer.wait(timeout=120) == 0, racer.stderr.read()
        outcomes += racer.stdout.read().split("\n")
        stop(racer)
    for key in keys:
        assert outcomes.count(f"won {key}") == 1, (key, sorted(outcomes))
