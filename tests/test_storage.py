"""Versioned storage on a local folder (tests/test_storage_s3.py runs a pipeline on a real S3 server)."""

import datasets
import pytest

from croco.errors import CrocoError
from croco.records import SAMPLE
from croco.storage import CorruptShard, Storage


def sample(i: int) -> dict:
    return {
        "prompt_id": f"p{i}", "language": "en", "sample_index": 0, "prompt": "q", "prompt_sent": "q", "response": "a",
        "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 1, "policy": "m",
    }


def committed_version(tmp_path, key="k1"):
    version = Storage(str(tmp_path / "store")).version("generate", "en", key)
    version.write_shard("00000", [sample(0), sample(1)], SAMPLE)
    version.write_shard("00001", [sample(2)], SAMPLE)
    version.commit({"records_in": 3, "records_out": 3, "skipped": {}})
    return version


def test_a_version_is_committed_by_its_manifest_written_last(tmp_path):
    version = Storage(str(tmp_path / "store")).version("generate", "en", "k1")
    version.write_shard("00000", [sample(0)], SAMPLE)
    assert not version.committed() and version.problems() == ["not committed"]
    assert version.read(SAMPLE).num_rows == 1  # finished shards of an uncommitted version (what a resuming task reads)
    manifest = version.commit({"records_in": 1, "records_out": 1, "skipped": {}})
    assert version.committed() and version.problems() == []
    assert manifest["version"] == "generate/en/k1" and manifest["shards"]["00000"]["data"]["rows"] == 1


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
    assert version.problems() == [f"data/part-00001.parquet has 100 bytes, its index says {version.manifest()['shards']['00001']['data']['bytes']}"]
    caplog.set_level("WARNING", logger="croco")
    assert sorted(version.finished_shards()) == ["00000"]  # the broken one is removed, so the task redoes it
    assert "shard 00001 does not match its index" in caplog.text and not shard.exists()


def test_a_corrupt_shard_of_the_same_size_fails_its_checksum_on_read(tmp_path):
    version = committed_version(tmp_path)
    shard = tmp_path / "store/generate/en/k1/data/part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert version.problems() == []  # a listing sees only sizes
    with pytest.raises(CorruptShard, match=r"part-00000.parquet is missing or corrupt .* rerun to redo it"):
        version.read(SAMPLE)
    assert not version.committed() and "00000" not in version.finished_shards()


def test_credentials_in_the_root_are_refused():
    with pytest.raises(CrocoError, match="must not hold credentials"):
        Storage("s3://key:secret@bucket/prefix")
