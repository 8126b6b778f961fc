import datasets

from croco.records import SAMPLE, SKIPPED
from croco.fileio import stable_hash
from croco.store import StageStore


def sample(i: int) -> dict:
    return {
        "prompt_id": f"p{i}", "language": "en", "sample_index": 0, "prompt": "q", "prompt_sent": "q", "response": "a",
        "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 1, "policy": "m",
    }


def test_shards_are_loadable_with_datasets(tmp_path):
    store = StageStore(tmp_path, "generate")
    store.open("k1", {})
    store.write_shard(0, [sample(0), sample(1)], SAMPLE, [], SKIPPED)
    store.write_shard(1, [sample(2)], SAMPLE, [], SKIPPED)
    loaded = datasets.load_dataset("parquet", data_files=str(store.data_dir / "*.parquet"), split="train")
    assert sorted(loaded["prompt_id"]) == ["p0", "p1", "p2"]
    assert store.shard_indices() == [0, 1]


def test_partial_shard_is_never_taken_as_done(tmp_path):
    store = StageStore(tmp_path, "generate")
    store.open("k1", {})
    (store.data_dir / (store.shard_name(0) + ".tmp")).write_bytes(b"half a parquet file")
    assert not store.has_shard(0)
    store.open("k1", {})  # a restart clears leftovers
    assert not list(store.path.rglob("*.tmp"))


def test_finished_stage_is_complete_only_under_its_key(tmp_path):
    store = StageStore(tmp_path, "generate")
    store.open("k1", {"a": 1})
    assert not store.is_complete("k1")
    store.finish({"records_out": 0})
    assert store.is_complete("k1") and not store.is_complete("k2")
    assert store.manifest()["settings"] == {"a": 1}


def test_resuming_under_the_same_key_keeps_shards(tmp_path):
    store = StageStore(tmp_path, "generate")
    store.open("k1", {})
    store.write_shard(0, [sample(0)], SAMPLE, [], SKIPPED)
    store.open("k1", {})
    assert store.has_shard(0)


def test_a_new_key_wipes_old_output(tmp_path):
    store = StageStore(tmp_path, "generate")
    store.open("k1", {})
    store.write_shard(0, [sample(0)], SAMPLE, [], SKIPPED)
    store.finish({})
    store.open("k2", {})
    assert not store.has_shard(0) and store.manifest()["status"] == "running"


def test_empty_stage_reads_as_empty_table(tmp_path):
    assert StageStore(tmp_path, "score").read(SAMPLE).num_rows == 0


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
