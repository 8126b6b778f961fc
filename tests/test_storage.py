"""Versioned storage on a local folder (tests/test_storage_s3.py runs a pipeline on a real S3 server)."""

import datasets
import pytest

from croco.errors import CrocoError
from croco.records import SAMPLE
from croco.storage import COMMIT_ONLY, CorruptShard, MissingVersion, ShardsMissing, Share, Storage


def sample(i: int) -> dict:
    return {
        "prompt_id": f"p{i}",
        "language": "en",
        "sample_index": 0,
        "prompt": "q",
        "prompt_sent": "q",
        "response": "a",
        "finish_reason": "stop",
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "policy": "m",
    }


def committed_version(tmp_path, key="k1", stage="generate", verify="checksum"):
    version = Storage(str(tmp_path / "store"), verify=verify).version(stage, "en", key, writing=True)
    version.write_shard("00000", [sample(0), sample(1)], SAMPLE)
    version.write_shard("00001", [sample(2)], SAMPLE)
    version.commit({"records_in": 3, "records_out": 3, "skipped": {}})
    return version


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_version_is_committed_by_its_manifest_written_last(tmp_path):
    storage = Storage(str(tmp_path / "store"))
    version = storage.version("generate", "en", "k1", writing=True)
    version.write_shard("00000", [sample(0)], SAMPLE)
    assert not version.committed() and version.problems() == ["not committed"]
    assert version.read(SAMPLE).num_rows == 1  # finished shards of an uncommitted version (what a resuming task reads)
    with pytest.raises(
        MissingVersion,
        match=r"^version .*/generate/en/k1 is not committed \(its unit has not finished, or the version was deleted",
    ):
        storage.version_at("generate/en/k1").read(
            SAMPLE
        )  # any other reader: committed data or a sentence, never a part
    manifest = version.commit({"records_in": 1, "records_out": 1, "skipped": {}})
    assert version.committed() and version.problems() == []
    assert manifest["version"] == "generate/en/k1" and manifest["shards"]["00000"]["data"]["rows"] == 1
    assert storage.version_at("generate/en/k1").read(SAMPLE).num_rows == 1


def test_a_failed_background_upload_stops_the_commit_and_leaves_its_shard_unfinished(tmp_path, monkeypatch):
    version = Storage(str(tmp_path / "store")).version("generate", "en", "k1")
    version.write_shard("00000", [sample(0)], SAMPLE)
    real_put = version.storage.put

    def put(path, data):
        if "part-00001" in path:
            raise OSError("connection reset")
        return real_put(path, data)

    monkeypatch.setattr(version.storage, "put", put)
    version.write_shard("00001", [sample(1)], SAMPLE)  # returns at once: the upload runs beside the next shard's work
    with pytest.raises(OSError, match="connection reset"):
        version.commit({"records_in": 2, "records_out": 2, "skipped": {}})
    assert not version.committed() and sorted(version.finished_shards()) == ["00000"]


def test_every_version_loads_with_datasets(tmp_path):
    version = committed_version(tmp_path)
    loaded = datasets.load_dataset("parquet", data_files=f"{version.path}/data/*.parquet", split="train")
    assert sorted(loaded["prompt_id"]) == ["p0", "p1", "p2"]


def test_a_truncated_shard_is_found_and_redone_never_trusted(tmp_path, caplog):
    version = committed_version(tmp_path)
    shard = tmp_path / "store/generate/en/k1/data/part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    assert version.problems() == [
        f"data/part-00001.parquet has 100 bytes, its manifest says {version.manifest()['shards']['00001']['data']['bytes']}"
    ]
    caplog.set_level("WARNING", logger="croco")
    assert sorted(version.finished_shards()) == ["00000"]  # the broken one is removed, so the task redoes it
    assert "shard 00001 does not match its index" in caplog.text and not shard.exists()


def test_a_corrupt_shard_of_the_same_size_fails_its_checksum_on_read(tmp_path):
    version = committed_version(tmp_path, verify="size")
    flip_a_byte(tmp_path / "store/generate/en/k1/data/part-00000.parquet")
    assert version.problems() == []  # a listing sees only sizes
    with pytest.raises(CorruptShard, match=r"part-00000.parquet is missing or corrupt .* rerun to redo it"):
        version.read(SAMPLE)
    assert not version.committed() and "00000" not in version.finished_shards()


@pytest.mark.parametrize("stage", ["generate", "pair"])
def test_a_flipped_byte_in_a_shard_or_an_adapter_file_is_caught_by_the_checksum_check(tmp_path, stage):
    version = committed_version(tmp_path, stage=stage)
    version.put_folder(adapter(tmp_path / "adapter"), "adapter")
    version.uncommit("files added")
    manifest = version.commit({"records_in": 3, "records_out": 3, "skipped": {}})
    weights = manifest["files"]["adapter/adapter_model.safetensors"]
    assert weights["bytes"] == 4096 and len(weights["sha256"]) == 64 and version.problems() == []
    folder = tmp_path / f"store/{stage}/en/k1"
    for changed in (folder / "data/part-00001.parquet", folder / "files/adapter/adapter_model.safetensors"):
        before = changed.read_bytes()
        flip_a_byte(changed)
        name = changed.relative_to(folder).as_posix()
        assert (
            Storage(str(tmp_path / "store"), verify="size").version_at(f"{stage}/en/k1").problems() == []
        )  # same size
        assert version.problems() == [f"{name} has other bytes than its manifest says (sha256 differs)"]
        changed.write_bytes(before)


def test_the_digest_is_made_of_checksums_so_a_retrained_adapter_of_the_same_size_is_new_data(tmp_path):
    version = committed_version(tmp_path)
    version.put_folder(adapter(tmp_path / "adapter"), "adapter")
    version.uncommit("files added")
    before = version.commit({})["digest"]
    flip_a_byte(tmp_path / "store/generate/en/k1/files/adapter/adapter_model.safetensors")
    version.uncommit("retrained")
    assert version.commit({})["digest"] != before


def adapter(folder):
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 16)
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_removal_takes_the_manifest_first_so_a_delete_stopped_halfway_leaves_no_commit(tmp_path, monkeypatch):
    version = committed_version(tmp_path)
    fs = version.storage.fs
    real_rm = fs.rm

    def stopped_halfway(path, recursive=False, **kwargs):
        if recursive:  # one batch of a recursive delete goes through, then the connection drops
            real_rm(f"{version.path}/data/part-00000.parquet")
            raise OSError("connection reset")
        return real_rm(path, recursive=recursive, **kwargs)

    monkeypatch.setattr(fs, "rm", stopped_halfway)
    with pytest.raises(OSError, match="connection reset"):
        version.discard("its input is gone")
    assert not version.committed() and version.problems() == ["not committed"]


def test_a_resume_keeps_only_the_work_made_from_the_same_inputs(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("CROCO_CACHE", str(tmp_path / "cache"))
    storage = Storage(str(tmp_path / "store"))
    started = {"generate/en": {"version": "generate/en/k", "uri": "u", "digest": "old"}}
    killed = storage.version("score", "en", "k1", writing=True)
    killed.start(started)
    killed.write_shard("00000", [sample(0)], SAMPLE)
    killed.flush()
    (killed.work_folder() / "checkpoint").write_text("made from the old samples")
    resumed = storage.version("score", "en", "k1", writing=True)
    resumed.start(started)  # the same input: the finished shard and the work folder stay
    assert sorted(resumed.finished_shards()) == ["00000"] and (resumed.work_folder() / "checkpoint").exists()
    caplog.set_level("WARNING", logger="croco")
    recomputed = storage.version("score", "en", "k1", writing=True)
    recomputed.start({"generate/en": {**started["generate/en"], "digest": "new"}})
    assert recomputed.finished_shards() == {} and not (recomputed.work_folder() / "checkpoint").exists()
    assert (
        "score/en/k1: its finished work was made from other data than its inputs (generate/en) hold now; discarding it"
        in caplog.text
    )
    assert "the local work folder" in caplog.text


def test_a_remote_adapter_is_copied_once_per_content_and_a_concurrent_copy_is_used(tmp_path, monkeypatch):
    storage = Storage(f"memory://{tmp_path.name}")  # not a local folder: copied like one on S3
    version = storage.version("dpo", "all", "k", writing=True)
    version.put_folder(adapter(tmp_path / "adapter"), "adapter")
    digest = version.commit({})["digest"]
    reader = storage.version_at("dpo/all/k")
    real_get = storage.fs.get

    def another_process_finishes_first(source, target, **kwargs):
        real_get(source, str(tmp_path / "cache" / digest / "adapter") + "/", **kwargs)
        real_get(source, target, **kwargs)

    monkeypatch.setattr(storage.fs, "get", another_process_finishes_first)
    copy = reader.local_folder("adapter", tmp_path / "cache")
    assert (
        copy == tmp_path / "cache" / digest / "adapter"
        and (copy / "adapter_model.safetensors").read_bytes() == bytes(range(256)) * 16
    )
    assert sorted(p.name for p in copy.parent.iterdir()) == ["adapter"]  # the loser's partial copy is gone
    monkeypatch.setattr(storage.fs, "get", real_get)
    assert reader.local_folder("adapter", tmp_path / "cache") == copy
    with pytest.raises(MissingVersion, match="dpo/all/gone is not committed"):
        storage.version_at("dpo/all/gone").local_folder("adapter", tmp_path / "cache")


def test_credentials_in_the_root_are_refused():
    with pytest.raises(CrocoError, match="must not hold credentials"):
        Storage("s3://key:secret@bucket/prefix")


def test_an_array_task_does_its_share_of_the_unfinished_shards_and_the_commit_only_step_none(tmp_path):
    version = Storage(str(tmp_path / "store")).version("generate", "en", "k1", writing=True)
    names = [f"{i:05d}" for i in range(7)]
    version.write_shard("00003", [sample(3)], SAMPLE)
    version.share = Share(0, 3)
    assert version.todo(names) == ["00000", "00006"]  # positions 0, 3, 6; 3 is finished
    version.share = Share(1, 3)
    assert version.todo(names) == ["00001", "00004"]
    version.share = COMMIT_ONLY
    with pytest.raises(ShardsMissing) as missing:
        version.todo(names)
    assert (missing.value.missing, missing.value.total) == ([0, 1, 2, 4, 5, 6], 7)
    assert version.todo(["00003"]) == []
    version.share = None
    assert version.todo(names) == ["00000", "00001", "00002", "00004", "00005", "00006"]
