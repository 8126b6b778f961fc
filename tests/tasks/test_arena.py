import pytest

from croco.errors import CrocoError
from croco.pipeline import run_pipeline
from croco.records import ARENA_ANSWER
from croco.stages.arena import load_questions, split_reasoning
from croco.store import StageStore
from conftest import make_config, write_jsonl


def arena_question(qid: str, language: str, subcategory: str = "coding") -> dict:
    return {"question_id": qid, "prompt": f"Question {qid} in {language}?", "category": "hard_prompt", "subcategory": subcategory, "language": language}


@pytest.fixture
def arena_file(tmp_path):
    rows = [arena_question(f"q{i}", lang, "coding" if i % 2 else "math") for lang in ("en", "da", "fr") for i in range(4)]
    return write_jsonl(tmp_path / "arena.jsonl", rows)


def arena_config(tmp_path, tiny_models, prompts_file, arena_file, **sections):
    sections = {"evaluate": {"run_adapters": [], "models": {"other": {"path": tiny_models["policy"], "dtype": "bfloat16"}}}, **sections}
    arena = {"prompts": {"path": str(arena_file)}, "max_new_tokens": 5, "engine": {"batch_size": 4}, **sections.pop("arena", {})}
    return make_config(tmp_path / "run", tiny_models, [{"path": str(prompts_file)}], arena=arena, **sections)


def test_questions_keep_the_run_languages_and_subsample_the_same_ids(tmp_path, tiny_models, prompts_file, arena_file):
    cfg = arena_config(tmp_path, tiny_models, prompts_file, arena_file, arena={"per_language": 2})
    questions = load_questions(cfg)
    assert {q["language"] for q in questions} == {"en", "da"}
    ids = {lang: {q["question_id"] for q in questions if q["language"] == lang} for lang in ("en", "da")}
    assert len(ids["en"]) == 2 and ids["en"] == ids["da"]


def test_a_question_without_a_prompt_is_named(tmp_path, tiny_models, prompts_file):
    bad = write_jsonl(tmp_path / "bad.jsonl", [arena_question("q1", "en"), {"question_id": "q2", "language": "en"}])
    cfg = arena_config(tmp_path, tiny_models, prompts_file, bad)
    with pytest.raises(CrocoError, match=r"bad.jsonl line 2: missing or empty field 'prompt'"):
        load_questions(cfg)


def test_reasoning_is_kept_apart_from_the_answer():
    assert split_reasoning("<think>plan it</think>\nThe answer.") == ("plan it", "The answer.")
    assert split_reasoning("<think>never finished") == ("never finished", "")
    assert split_reasoning("Just an answer.") == ("", "Just an answer.")


def test_arena_answers_every_question_per_model_and_keeps_unchanged_models(tmp_path, tiny_models, prompts_file, arena_file):
    cfg = arena_config(tmp_path, tiny_models, prompts_file, arena_file)
    run_pipeline(cfg, only=["arena"])
    store = StageStore(cfg.run_dir, "arena")
    answers = store.read(ARENA_ANSWER).to_pylist()
    assert sorted({(a["model"], a["language"]) for a in answers}) == [("other", "da"), ("other", "en"), ("policy", "da"), ("policy", "en")]
    assert len(answers) == 16 and all(a["finish_reason"] in {"stop", "length"} for a in answers)
    assert (store.path / "answers" / "other" / "da.jsonl").read_text().count("\n") == 4
    policy_shards = {s for s in store.shard_names() if s.startswith("policy-")}

    # Another "other" model: only its shards are redone, the policy's answers stay as they are.
    changed = arena_config(tmp_path, tiny_models, prompts_file, arena_file, evaluate={"run_adapters": [], "models": {"other": {"path": tiny_models["policy"]}}})
    manifest = run_pipeline(changed, only=["arena"])[-1].manifest
    assert manifest["units_resumed"] == 2
    assert policy_shards <= set(store.shard_names()) and len(store.shard_names()) == 4
