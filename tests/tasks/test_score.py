import math

from croco.records import SCORE, SKIPPED
from croco.pipeline import run_pipeline
from croco.store import StageStore

from conftest import make_config, prompt_record, write_jsonl


def test_every_sample_is_scored_or_skipped_with_a_reason(tmp_path, tiny_models):
    rows = [prompt_record("short", "en", "Hi"), prompt_record("long", "en", "Tell me everything. " * 40)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = make_config(tmp_path / "run", tiny_models, [{"path": str(path)}], languages=["en"], score={"max_len": 120})
    results = run_pipeline(cfg, only=["prompts", "generate", "score"])
    scored = StageStore(cfg.run_dir, "score").read(SCORE).to_pylist()
    skipped = StageStore(cfg.run_dir, "score").read_skipped(SKIPPED).to_pylist()
    assert {s["prompt_id"] for s in scored} == {"short"} and len(scored) == 2
    assert all(math.isfinite(s["reward"]) and s["reward_model"] == tiny_models["reward"] for s in scored)
    assert [(s["prompt_id"], s["reason"]) for s in skipped] == [("long", "too_long")] * 2
    manifest = results[-1].manifest
    assert manifest["records_in"] == 4 and manifest["records_out"] == 2 and manifest["skipped"] == {"too_long": 2}
