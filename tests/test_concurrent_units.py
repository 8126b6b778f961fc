"""What units running at the same time in one process share: the embedded models' cache entries, the file-hash
memo, torch's random state, adapter downloads. Each test races threads on it."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from croco.embedded import materialize
from croco.fileio import folder_sha256


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CROCO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_cache_entry_built_by_several_threads_at_once_is_whole_for_every_reader(own_cache):
    def build(out):
        (out / "weights.bin").write_bytes(b"w" * 1000)
        time.sleep(0.05)  # the other builders are at work meanwhile
        (out / "config.json").write_text("{}")

    (own_cache / "model").mkdir(parents=True)  # an entry an older build left incomplete
    with ThreadPoolExecutor(4) as pool:
        built = list(pool.map(lambda _: materialize("model", build), range(4)))
    assert all((path / "weights.bin").read_bytes() == b"w" * 1000 for path in built)
    assert sorted(p.name for p in own_cache.iterdir()) == ["model"]  # no temporary folder left behind


def test_the_file_hash_memo_survives_threads_hashing_at_once(own_cache, tmp_path):
    folders = []
    for number in range(8):
        folder = tmp_path / f"adapter-{number}"
        folder.mkdir()
        for part in range(20):
            (folder / f"part-{part}").write_text(f"{number}-{part}")
        folders.append(folder)
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(folder_sha256, folders))
    assert len(set(digests)) == 8
    assert [folder_sha256(folder) for folder in folders] == digests
    import json

    assert len(json.loads((own_cache / "file-hashes.json").read_text())) == 8 * 20  # no thread's hashes lost


def test_two_units_sampling_at_once_each_get_what_they_get_alone(tiny_models):
    from croco.config import EngineConfig, ModelConfig
    from croco.engines import SamplingParams
    from croco.engines.transformers_engine import TransformersGenerator

    generator = TransformersGenerator(EngineConfig(device="cpu", batch_size=2), ModelConfig(path=tiny_models["policy"]))
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(3)]
    params = SamplingParams(num_samples=2, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=7)
    alone = generator.generate(prompts, params)
    done = threading.Event()

    def other_unit():  # another unit seeding and drawing from torch's global generator all the while
        import torch

        while not done.is_set():
            torch.manual_seed(123)
            torch.rand(1000)

    disturber = threading.Thread(target=other_unit)
    disturber.start()
    try:
        together = [generator.generate(prompts, params) for _ in range(3)]
    finally:
        done.set()
        disturber.join()
    assert all(run == alone for run in together)


def test_threads_downloading_one_adapter_at_once_each_get_it_whole(s3_server, monkeypatch, tmp_path):
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    from croco.storage import Storage

    version = Storage(f"s3://croco/{tmp_path.name}").version("sft", "en", "k", writing=True)
    for part in range(30):
        version.put_file(f"adapter/part-{part}", b"x" * 5000)
    version.commit({})
    with ThreadPoolExecutor(4) as pool:
        copies = list(pool.map(lambda _: version.local_folder("adapter", tmp_path / "artifacts"), range(4)))
    assert all(len(list(copy.iterdir())) == 30 for copy in copies)
    assert [p.name for p in (tmp_path / "artifacts").rglob("*partial*")] == []
