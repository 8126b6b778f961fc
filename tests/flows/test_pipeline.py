"""The pipeline flow on tiny models: cached reruns, new languages, lost or broken artifacts, run records."""

import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import make_config, prompt_record, read, run, version, write_jsonl
from croco import runs
from croco.plan import build_plan, describe
from croco.records import SAMPLE
from croco.storage import Storage, storage_of

NO_TRAINING = {"sft": {"enabled": False}, "dpo": {"enabled": False}}


@pytest.fixture
def three_languages(tmp_path):
    rows = [prompt_record(f"p{i}", lang, f"Question {i} in {lang}?") for lang in ("en", "da", "ga") for i in range(3)]
    return [{"path": str(write_jsonl(tmp_path / "prompts.jsonl", rows))}]


def ran(result) -> set[str]:
    return {unit for unit, cached in result["cached"].items() if not cached}


def test_a_rerun_of_a_finished_config_is_all_cache_hits(tmp_path, tiny_models, prompts_file):
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}])
    first = run(cfg)
    assert (
        ran(first)
        == set(first["cached"])
        == {
            "prompts/en",
            "prompts/da",
            "generate/en",
            "generate/da",
            "score/en",
            "score/da",
            "pair/all",
            "sft/all",
            "dpo/all",
        }
    )
    second = run(cfg)
    assert ran(second) == set() and second["versions"] == first["versions"]
    records = runs.records(Storage(cfg.storage.root))
    assert [r["status"] for r in records] == ["completed", "completed"] and records[0]["versions"][
        "generate/en"
    ] == version(cfg, "generate/en").relative


def test_every_cached_unit_has_a_line_naming_it(tmp_path, tiny_models, prompts_file, monkeypatch):
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}])
    run(cfg, ["prompts"])
    lines = logging.Handler()
    lines.emit, lines.seen = lambda record: lines.seen.append(record.getMessage()), []
    monkeypatch.setattr(logging.getLogger("croco"), "handlers", [*logging.getLogger("croco").handlers, lines])
    assert all(run(cfg, ["prompts"])["cached"].values())
    reused = [line for line in lines.seen if ": reused " in line]
    assert [line.split(": reused ")[0] for line in reused] == ["prompts/en", "prompts/da"]
    assert reused[0].startswith(f"prompts/en: reused {version(cfg, 'prompts/en').relative}, 3 records out of")


def test_a_new_language_costs_only_its_own_work(tmp_path, tiny_models, three_languages):
    two = make_config(tmp_path / "store", tiny_models, three_languages, languages=["en", "da"], **NO_TRAINING)
    run(two)
    before = {
        unit: version(two, unit).manifest()["committed_at"]
        for unit in ("generate/en", "generate/da", "score/en", "score/da")
    }
    three = make_config(tmp_path / "store", tiny_models, three_languages, languages=["en", "da", "ga"], **NO_TRAINING)
    result = run(three)
    assert ran(result) == {"prompts/ga", "generate/ga", "score/ga", "pair/all"}
    assert {
        unit: version(three, unit).manifest()["committed_at"] for unit in before
    } == before  # en and da keep their versions
    assert (
        version(three, "generate/ga").manifest()["samples_generated_now"] == 3 * 2
    )  # ga's prompts x num_samples, nothing else
    assert sorted(set(read(three, "generate", SAMPLE, ["language"])["language"].to_pylist())) == ["da", "en", "ga"]


def test_a_cache_hit_whose_artifact_is_gone_is_recomputed(tmp_path, tiny_models, prompts_file):
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], **NO_TRAINING)
    run(cfg)
    lost = version(cfg, "generate/da")
    before = lost.read(SAMPLE)
    shutil.rmtree(lost.path)
    result = run(cfg)
    assert ran(result) == {"generate/da"}  # score/da's key is unchanged and its version intact: still a hit
    assert lost.committed() and lost.read(SAMPLE).equals(before)  # seeded: the same samples again


def test_a_truncated_shard_is_redone_and_reported(tmp_path, tiny_models, prompts_file, caplog):
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], **NO_TRAINING)
    run(cfg)
    broken = version(cfg, "generate/en")
    before = broken.read(SAMPLE)
    shard = f"{broken.path}/data/part-00001.parquet"
    with open(shard, "r+b") as handle:
        handle.truncate(64)
    caplog.set_level("WARNING", logger="croco")
    result = run(cfg)
    assert ran(result) == {"generate/en"}
    assert (
        "data/part-00001.parquet has 64 bytes" in caplog.text and "shard 00001 does not match its index" in caplog.text
    )
    assert broken.read(SAMPLE).equals(before) and broken.manifest()["shards_resumed"] == 1


def test_one_stage_runs_with_the_finished_work_it_reads(tmp_path, tiny_models, prompts_file):
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], **NO_TRAINING)
    assert ran(run(cfg, stages=["generate"])) == {"prompts/en", "prompts/da", "generate/en", "generate/da"}
    assert ran(run(cfg, stages=["score"])) == {"score/en", "score/da"}


def test_units_made_from_data_that_was_recomputed_differently_are_redone(tmp_path, tiny_models, prompts_file, caplog):
    """Sampling on a GPU or a server is not bit-for-bit reproducible: a recomputed input under the same key
    may hold other samples, and what was scored from the old ones must not be handed on."""
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], **NO_TRAINING)
    run(cfg)
    redone = version(cfg, "generate/en")
    manifest = redone.manifest()
    shard = redone.read_shard("00000", SAMPLE)
    redone.write_shard(
        "00000",
        shard.set_column(shard.schema.get_field_index("response"), "response", pa.array(["other"] * shard.num_rows)),
        SAMPLE,
    )
    redone.commit(
        {k: v for k, v in manifest.items() if k not in ("shards", "files", "digest", "version", "uri", "committed_at")}
    )
    caplog.set_level("WARNING", logger="croco")
    assert ran(run(cfg)) == {"score/en", "pair/all"}
    assert (
        "score/en/" in caplog.text
        and "its input generate/en/" in caplog.text
        and "recomputed with other data" in caplog.text
    )


def test_a_flipped_byte_in_a_shard_or_an_adapter_is_caught_by_plan_and_its_unit_redone(
    tmp_path, tiny_models, prompts_file
):
    """Nothing reads a pair shard or an adapter again once its unit is cached: only the checksum check sees them change."""
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], sft={"enabled": False})
    run(cfg)
    pair = Path(version(cfg, "pair/all").path)
    flipped = {
        "generate/en": "data/part-00000.parquet",
        "pair/all": sorted(p.relative_to(pair).as_posix() for p in (pair / "data").iterdir())[0],
        "dpo/all": "files/adapter/adapter_model.safetensors",
    }
    intact = {unit: version(cfg, unit).manifest()["digest"] for unit in flipped}
    for unit, name in flipped.items():
        path = Path(version(cfg, unit).path) / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    states = {row["unit"]: row["state"] for row in describe(build_plan(cfg), storage_of(cfg))}
    assert {unit: states[unit] for unit in flipped} == {
        unit: f"redo ({name} has other bytes than its manifest says (sha256 differs))" for unit, name in flipped.items()
    }
    assert ran(run(cfg)) == set(
        flipped
    )  # seeded: generate and pair hold the same data again, so score and dpo's input stand
    assert {unit: version(cfg, unit).manifest()["digest"] for unit in ("generate/en", "pair/all")} == {
        u: intact[u] for u in ("generate/en", "pair/all")
    }
    assert all(version(cfg, unit).problems() == [] for unit in flipped)
