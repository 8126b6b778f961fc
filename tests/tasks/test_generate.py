import re
from pathlib import Path

import pytest

from conftest import (
    DANISH_ANSWER,
    make_config,
    prompt_record,
    read,
    run,
    run_answering_in_danish_and_english,
    version,
    write_jsonl,
)
from croco.errors import CrocoError
from croco.plan import build_plan
from croco.records import SAMPLE, SKIPPED
from croco.summaries import summary_line
from croco.tasks import generate as generate_stage
from croco.tasks.generate import prompt_to_send, prompt_token_limit, shard_seed


def test_language_instruction_is_appended_only_when_asked():
    assert prompt_to_send("Hvad er 2+2?", "da", False) == "Hvad er 2+2?"
    assert prompt_to_send("Hvad er 2+2?", "da", True) == "Hvad er 2+2?\n\nPlease respond in Danish and nothing else."


def test_each_shard_has_its_own_seed():
    assert shard_seed(42, "en", 0) != shard_seed(42, "en", 1)
    assert shard_seed(42, "en", 3) == shard_seed(42, "en", 3)
    assert shard_seed(42, "en", 3) != shard_seed(42, "da", 3)  # each language draws its own


def test_one_record_per_sample_with_original_and_sent_prompt(tmp_path, tiny_models, prompts_file):
    cfg = make_config(
        tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], generate={"respond_in_language": True}
    )
    result = run(cfg, stages=["generate"])
    assert set(result["versions"]) == {"prompts/en", "prompts/da", "generate/en", "generate/da"}
    assert not any(result["cached"].values())  # a fresh storage root: every unit ran
    samples = read(cfg, "generate", SAMPLE).to_pylist()
    keys = {(s["prompt_id"], s["language"], s["sample_index"]) for s in samples}
    assert len(samples) == len(keys) == 6 * 2
    assert keys == {(f"p{i}", lang, k) for i in range(3) for lang in ("en", "da") for k in range(2)}
    danish = next(s for s in samples if s["language"] == "da")
    assert danish["prompt"] == f"Question {danish['prompt_id'][1]} in da?"
    assert danish["prompt_sent"] == danish["prompt"] + "\n\nPlease respond in Danish and nothing else."
    assert all(s["policy"] == tiny_models["policy"] and s["completion_tokens"] >= 1 for s in samples)


LONG = " ".join(["word"] * 1100)  # about 1,100 tokens: more than the tiny policy's 1,024-token context


def test_a_prompt_longer_than_the_policy_context_is_skipped_and_counted_before_generation(tmp_path, tiny_models):
    rows = [
        prompt_record("long1", "en", LONG),
        prompt_record("long2", "en", "Hi " + LONG),
        prompt_record("short", "en"),
    ]
    cfg = make_config(
        tmp_path / "store", tiny_models, [{"path": str(write_jsonl(tmp_path / "p.jsonl", rows))}], languages=["en"]
    )
    assert prompt_token_limit(cfg) == 1024 - 6  # the context less max_new_tokens
    result = run(cfg, stages=["score"])  # the first shard holds only the long prompts: score reads it empty
    assert {s["prompt_id"] for s in read(cfg, "generate", SAMPLE).to_pylist()} == {"short"}
    skipped = read(cfg, "generate", SKIPPED, skipped=True).to_pylist()
    assert [(s["prompt_id"], s["reason"]) for s in skipped] == [
        ("long1", "prompt_too_long"),
        ("long2", "prompt_too_long"),
    ]
    assert re.fullmatch(r"1\d{3} tokens; at most 1018 fit", skipped[0]["detail"])
    manifest = version(cfg, "generate/en").manifest()
    assert (
        manifest["skipped"] == {"prompt_too_long": 2} and manifest["records_in"] == 3 and manifest["records_out"] == 2
    )
    assert "generate/en: 2 records out of 3 in, 2 skipped (prompt_too_long: 2)" in Path(result["report"]).read_text()
    assert version(cfg, "score/en").manifest()["records_out"] == 2


def test_the_prompt_limit_is_in_the_key_and_a_setting_overrides_the_context(tmp_path, tiny_models, prompts_file):
    def key(**generate):
        return (
            build_plan(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], generate=generate))
            .by_id["generate/en"]
            .key
        )

    assert len({key(), key(max_prompt_tokens=100), key(max_prompt_tokens=2000)}) == 3
    roomy = make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], generate={"max_prompt_tokens": 2000})
    assert prompt_token_limit(roomy) == 2000
    with pytest.raises(
        CrocoError,
        match=r"generate.max_new_tokens \(1024\) leaves no room for a prompt in the 1024-token context of models.policy",
    ):
        build_plan(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], generate={"max_new_tokens": 1024}))


def test_when_no_prompt_fits_the_run_stops_and_the_model_is_never_loaded(tmp_path, tiny_models, monkeypatch):
    def no_model(*args):
        raise AssertionError("the policy was loaded")

    monkeypatch.setattr(generate_stage, "load_generator", no_model)
    path = write_jsonl(tmp_path / "p.jsonl", [prompt_record("long", "en", LONG)])
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(path)}], languages=["en"])
    with pytest.raises(CrocoError, match=r"no prompt in language 'en' fits: all 1 are longer than 1018 tokens"):
        run(cfg, stages=["generate"])


def test_every_sample_records_its_language_and_the_unit_summary_and_report_show_the_fidelity(
    tmp_path, tiny_models, prompts_file
):
    cfg, result = run_answering_in_danish_and_english(tmp_path, tiny_models, prompts_file, ["generate"])
    samples = read(cfg, "generate", SAMPLE).to_pylist()
    assert {(s["response"] == DANISH_ANSWER, s["detected_language"]) for s in samples} == {(True, "da"), (False, "en")}
    assert all(s["detected_confidence"] >= 0.5 for s in samples)
    manifest = version(cfg, "generate/da").manifest()
    assert manifest["fidelity"] == {"answers": 6, "on_target": 0.5, "line_pass_rate": 0.5, "with_long_lines": 6}
    line = summary_line(build_plan(cfg, ["generate"]).by_id["generate/da"], manifest)
    assert "50% in da, line pass rate 50% (6 of 6 with a line of 5+ words)" in line
    report = Path(result["report"]).read_text()
    assert "## Language fidelity" in report and "| da | 6 | 50% | 50% | 6 |" in report
