"""The stage task wrapper: retries from the config, none for bad input, repairs
under the lock, and inputs that must stay what they were while a unit reads them."""

import pyarrow as pa
import pytest
from prefect import flow

from conftest import make_config
from croco.caching import (
    UNIT_CACHE,
    InputChanged,
    record_key,
    result_storage,
    stage_task,
    with_execution,
)
from croco.errors import CrocoError
from croco.plan import Unit
from croco.records import SAMPLE
from croco.storage import MissingVersion, Storage, Version

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
    cfg = make_config(
        tmp_path / "store",
        tiny_models,
        [{"path": str(prompts_file)}],
        retries={"default": {"attempts": 2, "delay_s": 0.01}},
    )
    task = with_execution(flaky, cfg, Storage(cfg.storage.root))

    @flow
    def attempt(language: str):
        return task(cfg, Unit("flaky", language, f"key-{language}"))

    calls.clear()
    assert attempt("en")["version"] == "flaky/en/key-en" and calls.count("en") == 3  # two retries, then success
    with pytest.raises(CrocoError, match="a bad record"):
        attempt("da")
    assert calls.count("da") == 1


def samples(response: str, *ids: int) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "prompt_id": f"p{i}",
                "language": "en",
                "sample_index": 0,
                "prompt": "q",
                "prompt_sent": "q",
                "response": response,
                "finish_reason": "stop",
                "prompt_tokens": 1,
                "completion_tokens": 1,
                "policy": "m",
            }
            for i in ids
        ],
        schema=SAMPLE,
    )


def generated(storage: Storage, response: str) -> Version:
    """A committed generate version of two shards; written again, it is an input recomputed with other data."""
    version = storage.version("generate", "en", "in", writing=True)
    if version.committed():
        version.uncommit("recomputed")
    for name, ids in (("00000", (0, 1)), ("00001", (2,))):
        version.write_shard(name, samples(response, *ids), SAMPLE)
    version.commit({"records_out": 3})
    return version


INPUT = (("generate/en", "generate/en/in"),)
during_work: list = []


@stage_task
def copy(cfg, unit, out, inputs):
    """Copies its input shard by shard, resuming over the shards it finished; `during_work` runs after each shard."""
    source = inputs["generate/en"]
    finished = out.finished_shards()
    for name in source.shard_names():
        if name not in finished:
            out.write_shard(name, source.read_shard(name, SAMPLE), SAMPLE)
            for step in during_work:
                step(out)
    return {"records_in": 3, "records_out": out.read(SAMPLE).num_rows, "skipped": {}}


@pytest.fixture
def copying(tmp_path, tiny_models, prompts_file):
    cfg = make_config(
        tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], retries={"default": {"attempts": 0}}
    )
    storage = Storage(cfg.storage.root)
    generated(storage, "old")
    during_work.clear()
    yield cfg, storage, Unit("copy", "en", "k", inputs=INPUT)
    during_work.clear()


def copy_flow(cfg, storage, unit):
    """The copy task of this storage, and a flow that runs it on `unit` and returns its state."""
    task = with_execution(copy, cfg, storage)

    @flow
    def attempt():
        return task(cfg, unit, return_state=True)

    return task, attempt


def test_the_cache_key_changes_no_version_and_the_repair_happens_under_the_units_lock(copying, monkeypatch):
    cfg, storage, unit = copying
    task, attempt = copy_flow(cfg, storage, unit)
    assert attempt().name == "Completed"
    out = storage.version("copy", "en", "k")
    generated(storage, "new")  # the input is recomputed: the copy is stale and must be redone, but not before the lock
    record = result_storage(storage) / record_key(unit)
    assert record.exists()
    assert UNIT_CACHE.compute_key(None, {"cfg": cfg, "unit": unit}, {}) == record_key(unit)
    assert out.committed() and out.read(SAMPLE)["response"].to_pylist() == ["old"] * 3 and not record.exists()
    locked_while = []
    real_discard = Version.discard
    monkeypatch.setattr(
        Version,
        "discard",
        lambda self, reason: (
            locked_while.append(task.cache_policy.lock_manager.is_locked(record_key(unit))),
            real_discard(self, reason),
        ),
    )
    assert attempt().name == "Completed" and locked_while == [True]
    assert out.read(SAMPLE)["response"].to_pylist() == ["new"] * 3


def test_a_unit_whose_version_another_run_committed_says_which_unit_it_reused(copying, caplog):
    cfg, storage, unit = copying
    _, attempt = copy_flow(cfg, storage, unit)
    assert attempt().name == "Completed"
    (result_storage(storage) / record_key(unit)).unlink()  # committed where this machine has no cache record
    caplog.clear()
    assert attempt().name == "Completed"
    lines = [r.getMessage() for r in caplog.records if r.name == "croco"]
    assert lines == ["copy/en: reused copy/en/k, 3 records out of 3 in, 0 skipped, " + lines[0].split(" skipped, ")[1]]


def test_an_input_deleted_before_or_while_a_unit_reads_it_is_named_in_one_sentence(copying):
    cfg, storage, unit = copying
    during_work.append(lambda out: storage.version_at("generate/en/in").remove())  # e.g. `croco gc` from another run
    missing = r"^version .*/generate/en/in is not committed \(its unit has not finished, or the version was deleted, e\.g\. by `croco gc`\); rerun"
    with pytest.raises(MissingVersion, match=missing):
        copy.fn(cfg, unit)
    with pytest.raises(MissingVersion, match=missing):  # gone before the unit starts
        copy.fn(cfg, Unit("copy", "en", "k2", inputs=INPUT))


def test_an_input_recomputed_while_a_unit_reads_it_fails_the_unit_rather_than_mix_old_and_new(copying):
    cfg, storage, unit = copying
    during_work.append(lambda out: during_work.clear() or generated(storage, "new"))
    with pytest.raises(
        InputChanged, match=r"generate/en/in was recomputed with other data while copy/en read it; run again"
    ):
        copy.fn(cfg, unit)
    assert not storage.version("copy", "en", "k").committed()
    copy.fn(cfg, unit)  # the retry starts over from the new data
    assert storage.version("copy", "en", "k").read(SAMPLE)["response"].to_pylist() == ["new"] * 3


def test_a_resume_after_its_input_was_recomputed_discards_the_shards_made_from_the_old_input(copying, caplog):
    cfg, storage, unit = copying

    def killed(out):
        out.flush()  # the shard is stored and indexed: finished
        raise RuntimeError("killed")

    during_work.append(killed)
    with pytest.raises(RuntimeError, match="killed"):
        copy.fn(cfg, unit)
    out = storage.version("copy", "en", "k", writing=True)
    assert sorted(out.finished_shards()) == ["00000"]  # one shard made from the old samples
    generated(storage, "new")
    during_work.clear()
    caplog.set_level("WARNING", logger="croco")
    copy.fn(cfg, unit)
    assert out.read(SAMPLE)["response"].to_pylist() == ["new"] * 3
    assert (
        "copy/en/k: its finished work was made from other data than its inputs (generate/en) hold now; discarding it and starting over"
        in caplog.text
    )
