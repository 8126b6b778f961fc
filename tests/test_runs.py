"""Run records: their order, whether a run is alive, and gc (tests/flows/test_gc.py runs gc beside real runs)."""

import json
import time
from datetime import timedelta

import pytest
from test_storage import sample

from croco import runs
from croco.errors import CrocoError
from croco.records import SAMPLE
from croco.storage import Storage


def committed(storage: Storage, key: str):
    version = storage.version("generate", "en", key)
    version.write_shard("00000", [sample(0)], SAMPLE)
    version.commit({"records_in": 1, "records_out": 1, "skipped": {}})
    return version


def record(run_id, started, status="completed", name="x", versions=(), languages=("en",), **fields) -> dict:
    started = runs.timestamp(started) if not isinstance(started, str) else started
    return {
        "run_id": run_id,
        "name": name,
        "started_at": started,
        "status": status,
        "languages": list(languages),
        "versions": {f"unit{i}": v.relative for i, v in enumerate(versions)},
        **fields,
    }


def test_gc_keeps_the_newest_completed_runs_every_run_still_going_and_work_in_progress(tmp_path):
    storage = Storage(str(tmp_path / "store"))
    now = runs.utc_now()
    ago = lambda **delta: now - timedelta(**delta)  # noqa: E731
    v = {key: committed(storage, key) for key in ("old", "failed", "live", "last", "died", "theirs")}
    partial = storage.version("generate", "da", "partial")
    partial.write_shard("00000", [], SAMPLE)
    partial.flush()  # uploaded in the background: on disk before gc lists the root
    beat = {"status": "running", "lease_s": 180}
    for run in (
        record("r-old", ago(days=3), versions=[v["old"]]),
        record("r-failed", ago(days=2), "failed", versions=[v["failed"]]),
        record(
            "r-live", ago(days=4), versions=[v["live"]], **beat, heartbeat_at=runs.timestamp(ago(seconds=5))
        ),  # long, still going
        record("r-last", ago(days=1), versions=[v["last"]]),
        record(
            "r-died", ago(hours=1), versions=[v["died"]], **beat, heartbeat_at=runs.timestamp(ago(minutes=59))
        ),  # killed: says running
        record("o-1", ago(days=9), name="other", versions=[v["theirs"]]),
    ):
        runs.write(storage, run)
    assert [runs.state(run) for run in runs.records(storage)] == [
        "died",
        "completed",
        "failed",
        "completed",
        "running",
        "completed",
    ]

    would = runs.gc(storage, "x", keep=1, dry_run=True)
    assert would.versions == ["generate/en/failed", "generate/en/old"] and would.records == [
        "runs/r-failed.json",
        "runs/r-old.json",
    ]
    assert v["old"].committed() and len(runs.records(storage)) == 6
    done = runs.gc(storage, "x", keep=1)
    assert (done.versions, done.records) == (would.versions, would.records)
    assert sorted(done.kept) == [
        "generate/da/partial",
        *(f"generate/en/{key}" for key in ("died", "last", "live", "theirs")),
    ]
    assert not v["old"].committed() and not v["failed"].committed() and partial.finished_shards()
    # The run that died is newer than the last completed one: it counts for nothing, and its finished units stay for its rerun.
    assert [run["run_id"] for run in runs.records(storage)] == ["r-died", "r-last", "r-live", "o-1"]
    with pytest.raises(CrocoError, match="--keep must be at least 1"):
        runs.gc(storage, "x", keep=0)


def test_gc_without_enough_completed_runs_deletes_nothing(tmp_path):
    storage = Storage(str(tmp_path / "store"))
    failed = committed(storage, "failed")
    runs.write(storage, record("r-failed", runs.utc_now(), "failed", versions=[failed]))
    assert runs.gc(storage, "x", keep=1) == runs.Collected([], [], ["generate/en/failed"])


def test_runs_sort_by_the_moment_they_started_whatever_time_zone_wrote_it(tmp_path):
    storage = Storage(str(tmp_path / "store"))
    for run in (
        record("a", "2026-01-01T10:30:00+0100", languages=["da"]),  # 09:30 UTC, written by an older croco in Copenhagen
        record("b", "2026-01-01T10:00:00+00:00", languages=["en", "de"]),
        record("c", "2026-01-01T04:50:00-0500", languages=["ga"]),  # 09:50 UTC
    ):
        runs.write(storage, run)
    assert [run["run_id"] for run in runs.records(storage)] == ["b", "c", "a"]
    assert runs.last_languages(storage, "x") == ["en", "de"]


def test_a_live_run_keeps_its_heartbeat_fresh_and_an_interrupted_one_is_recorded_as_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("CROCO_HEARTBEAT_S", "0.2")
    storage = Storage(str(tmp_path / "store"))
    path = tmp_path / "store" / "runs" / "r1.json"
    with pytest.raises(KeyboardInterrupt):
        with runs.LiveRun(storage, record("r1", runs.utc_now(), status=None)) as live:
            first = json.loads(path.read_text())
            assert first["status"] == "running" and first["lease_s"] == pytest.approx(0.6)
            time.sleep(1.5)
            beats = json.loads(path.read_text())
            assert beats["heartbeat_at"] > first["heartbeat_at"] and runs.state(beats) == "running"
            raise KeyboardInterrupt
    assert not live._thread.is_alive()
    time.sleep(0.5)  # no heartbeat comes after the final record
    final = json.loads(path.read_text())
    assert final["status"] == "failed" and final["finished_at"].endswith("+00:00")
    assert (
        runs.state(beats, now=runs.parse_time(beats["heartbeat_at"]) + timedelta(seconds=1)) == "died"
    )  # past its lease of 0.6 s
