import math

from conftest import make_config, prompt_record, read, run, version, write_jsonl
from croco.records import SCORE, SKIPPED


def test_every_sample_is_scored_or_skipped_with_a_reason(tmp_path, tiny_models):
    rows = [prompt_record("short", "en", "Hi"), prompt_record("long", "en", "Tell me everything. " * 40)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(path)}], languages=["en"], score={"max_len": 120})
    run(cfg, stages=["score"])
    scored = read(cfg, "score", SCORE).to_pylist()
    skipped = read(cfg, "score", SKIPPED, skipped=True).to_pylist()
    assert {s["prompt_id"] for s in scored} == {"short"} and len(scored) == 2
    assert all(math.isfinite(s["reward"]) and s["reward_model"] == tiny_models["reward"] for s in scored)
    assert [(s["prompt_id"], s["reason"]) for s in skipped] == [("long", "too_long")] * 2
    manifest = version(cfg, "score/en").manifest()
    assert manifest["records_in"] == 4 and manifest["records_out"] == 2 and manifest["skipped"] == {"too_long": 2}
