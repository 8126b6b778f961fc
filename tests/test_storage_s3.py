"""The pipeline with its storage on a real S3-compatible server on 127.0.0.1 (moto's server mode, a versioned bucket)."""

import datasets
import pytest

from conftest import make_config, save_config, version
from croco import runs
from croco.caching import result_storage
from croco.records import SAMPLE
from croco.storage import Storage


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.mark.slow
def test_a_pipeline_on_s3_reruns_from_cache_and_reads_an_old_version_back(
    tmp_path, tiny_models, prompts_file, s3_env, caplog, monkeypatch
):
    root = f"s3://croco/{tmp_path.name}"
    cfg = make_config(root, tiny_models, [{"path": str(prompts_file)}], sft={"enabled": False})
    config = save_config(cfg, tmp_path / "s3.yaml")
    from croco.flows.pipeline import pipeline

    caplog.set_level("INFO")
    first = pipeline(config=str(config))
    assert not any(first["cached"].values()) and first["versions"]["generate/en"].startswith(f"{root}/generate/en/")
    assert all(pipeline(config=str(config))["cached"].values())
    gone = version(cfg, "generate/da")
    Storage(root).fs.rm(gone.path, recursive=True)  # the cache record is on this machine; the data is not
    assert [unit for unit, hit in pipeline(config=str(config))["cached"].items() if not hit] == ["generate/da"]
    assert gone.committed()

    old = version(cfg, "generate/en")
    old_samples = old.read(SAMPLE)
    entry = old.manifest()["shards"]["00000"]["data"]
    assert entry["version_id"]  # the bucket keeps object versions: recorded, never relied on
    changed = make_config(
        root, tiny_models, [{"path": str(prompts_file)}], sft={"enabled": False}, generate={"max_new_tokens": 3}
    )
    save_config(changed, config)
    assert not pipeline(config=str(config))["cached"]["generate/en"]
    assert version(changed, "generate/en").path != old.path and old.committed()

    options = {
        "endpoint_url": s3_env["AWS_ENDPOINT_URL"],
        "key": s3_env["AWS_ACCESS_KEY_ID"],
        "secret": s3_env["AWS_SECRET_ACCESS_KEY"],
    }
    monkeypatch.setattr(
        datasets.config, "HF_HUB_OFFLINE", False
    )  # the tests run offline; this URL is the local S3 server
    loaded = datasets.load_dataset(
        "parquet", data_files=f"{old.uri}/data/*.parquet", storage_options=options, split="train"
    )
    assert sorted(loaded["response"]) == sorted(old_samples["response"].to_pylist())

    storage = Storage(root)
    dpo = version(cfg, "dpo/all").manifest()
    assert "adapter/adapter_model.safetensors" in dpo["files"]
    assert set(dpo["file_version_ids"]) == set(dpo["files"]) and all(dpo["file_version_ids"].values())
    run = runs.records(storage)[0]
    assert run["manifest_version_ids"]["generate/en"] == version(changed, "generate/en").manifest_version_id()
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    for path in storage.fs.find(storage.root):
        assert secret.encode() not in storage.fs.cat_file(path), path
    records = result_storage(storage)  # Prefect's cache records of an S3 root stay on this machine
    assert sorted(p.name for p in records.iterdir()) and all(
        secret.encode() not in p.read_bytes() for p in records.iterdir()
    )
    assert secret not in caplog.text
    weights = f"{version(cfg, 'dpo/all').path}/files/adapter/adapter_model.safetensors"
    flipped = bytearray(storage.fs.cat_file(weights))
    flipped[len(flipped) // 2] ^= 0xFF
    storage.fs.pipe_file(weights, bytes(flipped))  # the same size: only the checksum check sees it
    assert version(cfg, "dpo/all").problems() == [
        "files/adapter/adapter_model.safetensors has other bytes than its manifest says (sha256 differs)"
    ]


def test_credentials_come_from_a_prefect_aws_credentials_block(s3_server, monkeypatch, tmp_path):
    from prefect_aws import AwsClientParameters, AwsCredentials

    from croco.errors import CrocoError

    for name in s3_server:  # nothing in the environment: only the block can open the bucket
        monkeypatch.delenv(name, raising=False)
    AwsCredentials(
        aws_access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=s3_server["AWS_ENDPOINT_URL"]),
    ).save("croco-test-s3", overwrite=True)
    storage = Storage(f"s3://croco/{tmp_path.name}", credentials_block="croco-test-s3")
    written = storage.version("generate", "en", "k")
    written.write_shard("00000", [{"prompt_id": "p", "language": "en", "sample_index": 0}], SAMPLE)
    written.commit({"records_out": 1})
    assert written.read(SAMPLE)["prompt_id"].to_pylist() == ["p"]
    assert s3_server["AWS_SECRET_ACCESS_KEY"].encode() not in written.storage.fs.cat_file(
        f"{written.path}/manifest.json"
    )
    with pytest.raises(CrocoError, match="no AwsCredentials block named 'missing'"):
        Storage(f"s3://croco/{tmp_path.name}", credentials_block="missing")
    with pytest.raises(CrocoError, match="for an s3:// root"):
        Storage(str(tmp_path), credentials_block="croco-test-s3")
