import json
from pathlib import Path

import pytest

from conftest import (
    DANISH_ANSWER,
    ENGLISH_ANSWER,
    make_config,
    read,
    run,
    scripted_choice,
    scripted_openai_server,
    version,
    write_jsonl,
)
from croco.errors import CrocoError
from croco.plan import build_plan
from croco.records import ARENA_ANSWER
from croco.tasks.arena import ANSWERS_FILE, load_questions, split_reasoning


def arena_question(qid: str, language: str, subcategory: str = "coding") -> dict:
    return {
        "question_id": qid,
        "prompt": f"Question {qid} in {language}?",
        "category": "hard_prompt",
        "subcategory": subcategory,
        "language": language,
    }


@pytest.fixture
def arena_file(tmp_path):
    rows = [
        arena_question(f"q{i}", lang, "coding" if i % 2 else "math") for lang in ("en", "da", "fr") for i in range(4)
    ]
    return write_jsonl(tmp_path / "arena.jsonl", rows)


def arena_config(tmp_path, tiny_models, prompts_file, arena_file, **sections):
    evaluate = {"run_adapters": [], "models": {"other": {"path": tiny_models["policy"], "dtype": "bfloat16"}}}
    sections = {"evaluate": evaluate, "judge": {"enabled": False}, **sections}  # answers only: no judge to name
    arena = {
        "prompts": {"path": str(arena_file)},
        "max_new_tokens": 5,
        "engine": {"batch_size": 4},
        **sections.pop("arena", {}),
    }
    return make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], arena=arena, **sections)


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


ARENA_UNITS = {"arena/en/policy", "arena/da/policy", "arena/en/other", "arena/da/other"}


def by_model_and_language(answers: list[dict]) -> dict[tuple[str, str], int]:
    found = {}
    for a in answers:
        found[a["model"], a["language"]] = found.get((a["model"], a["language"]), 0) + 1
    return found


def test_arena_answers_every_question_per_model_and_keeps_unchanged_models(
    tmp_path, tiny_models, prompts_file, arena_file
):
    cfg = arena_config(tmp_path, tiny_models, prompts_file, arena_file)
    result = run(cfg, stages=["arena"])
    assert set(result["versions"]) == ARENA_UNITS  # one unit per model and language; fr is not a run language
    answers = read(cfg, "arena", ARENA_ANSWER).to_pylist()
    assert by_model_and_language(answers) == {
        ("policy", "en"): 4,
        ("policy", "da"): 4,
        ("other", "en"): 4,
        ("other", "da"): 4,
    }
    assert all(a["finish_reason"] in {"stop", "length"} for a in answers)
    # The original code's answer format, in the unit's files.
    original = [
        json.loads(line)
        for line in (Path(version(cfg, "arena/da/other").path) / "files" / ANSWERS_FILE).read_text().splitlines()
    ]
    assert len(original) == 4 and {a["question_id"] for a in original} == {f"q{i}" for i in range(4)}
    policy_versions = {unit: result["versions"][unit] for unit in ("arena/en/policy", "arena/da/policy")}

    # Another "other" model: only its units are redone, the policy's answers stay as they are.
    changed = arena_config(
        tmp_path,
        tiny_models,
        prompts_file,
        arena_file,
        evaluate={"run_adapters": [], "models": {"other": {"path": tiny_models["policy"]}}},
    )
    again = run(changed, stages=["arena"])
    assert {unit: again["versions"][unit] for unit in policy_versions} == policy_versions
    # "other", now configured exactly like the policy, is still a unit of its own: its records carry its name.
    for language in ("en", "da"):
        assert again["versions"][f"arena/{language}/other"] != again["versions"][f"arena/{language}/policy"], (
            f"arena/{language}/other shares the policy's version {again['versions'][f'arena/{language}/policy']}"
        )
    assert again["cached"] == {
        "arena/en/policy": True,
        "arena/da/policy": True,
        "arena/en/other": False,
        "arena/da/other": False,
    }
    answers = read(changed, "arena", ARENA_ANSWER).to_pylist()
    assert by_model_and_language(answers) == {
        ("policy", "en"): 4,
        ("policy", "da"): 4,
        ("other", "en"): 4,
        ("other", "da"): 4,
    }


def served_arena_config(tmp_path, tiny_models, prompts_file, arena_file, url: str):
    """The policy and another model, served at `url` as `base` and `base-tuned`."""
    evaluate = {
        "run_adapters": [],
        "models": {"other": {"path": tiny_models["policy"]}},
        "served_models": {"policy": "base", "other": "base-tuned"},
    }
    arena = {"engine": {"name": "openai", "base_url": url}}
    return arena_config(tmp_path, tiny_models, prompts_file, arena_file, arena=arena, evaluate=evaluate)


def test_on_a_server_each_model_is_asked_for_by_its_own_served_name(tmp_path, tiny_models, prompts_file, arena_file):
    def reply(request):
        return {
            "choices": [scripted_choice(0, f"answer of {request['model']}")],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }

    with scripted_openai_server(reply) as (url, _):
        cfg = served_arena_config(tmp_path, tiny_models, prompts_file, arena_file, url)
        run(cfg, stages=["arena"])
    answers = read(cfg, "arena", ARENA_ANSWER).to_pylist()
    assert {(a["model"], a["output"]) for a in answers} == {
        ("policy", "answer of base"),
        ("other", "answer of base-tuned"),
    }


def test_a_named_dataset_configuration_gives_only_its_own_language_questions(tmp_path, tiny_models, prompts_file):
    """A hub dataset in m-ArenaHard's layout (one configuration per language, here a local dataset folder); naming one
    configuration must not hand its questions to every run language."""
    folder = tmp_path / "m-arena"
    (folder / "data").mkdir(parents=True)
    for language in ("en", "da"):
        write_jsonl(folder / "data" / f"{language}.jsonl", [arena_question(f"q{i}", language) for i in range(2)])
    configs = "".join(
        f"- config_name: {code}\n  data_files:\n  - split: test\n    path: data/{code}.jsonl\n" for code in ("en", "da")
    )
    (folder / "README.md").write_text(f"---\nconfigs:\n{configs}---\n")
    questions_only = {"judge": {"enabled": False}}
    per_language = arena_config(
        tmp_path,
        tiny_models,
        prompts_file,
        folder,
        arena={"prompts": {"path": str(folder), "split": "test"}},
        **questions_only,
    )
    assert {(q["language"], q["prompt"]) for q in load_questions(per_language)} == {
        (lang, f"Question q{i} in {lang}?") for lang in ("en", "da") for i in range(2)
    }

    named = arena_config(
        tmp_path,
        tiny_models,
        prompts_file,
        folder,
        arena={"prompts": {"path": str(folder), "split": "test", "name": "da"}},
        **questions_only,
    )
    assert {q["language"] for q in load_questions(named)} == {"da"}
    plan = build_plan(named, ["arena"])
    assert {u.language for u in plan.units} == {"da"}
    assert plan.skipped == {"arena/en": f"{folder} holds no questions in English (en)"}


def test_a_language_planned_without_reading_the_dataset_but_absent_from_it_fails_by_name(
    tmp_path, tiny_models, prompts_file
):
    """A dataset configuration not named after a language may hold any: planning cannot tell without loading it, so
    each run language gets units, and one the data holds no questions in fails with a sentence."""
    from croco.tasks.arena import arena

    folder = tmp_path / "arena-set"
    (folder / "data").mkdir(parents=True)
    write_jsonl(folder / "data" / "all.jsonl", [arena_question("q1", "en")])
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: mixed\n  data_files:\n  - split: test\n    path: data/all.jsonl\n---\n"
    )
    cfg = arena_config(
        tmp_path,
        tiny_models,
        prompts_file,
        folder,
        arena={"prompts": {"path": str(folder), "split": "test", "name": "mixed"}},
    )
    plan = build_plan(cfg, ["arena"])
    assert {u.language for u in plan.units} == {"en", "da"}
    with pytest.raises(CrocoError, match=rf"^arena prompts {folder} hold no questions in Danish \(da\); set arena"):
        arena.work(cfg, plan.by_id["arena/da/policy"], None, {})


def test_every_answer_records_its_language_and_the_report_gives_the_pass_rate_per_model_and_language(
    tmp_path, tiny_models, prompts_file, arena_file
):
    def reply(request):  # the base model answers Danish questions in Danish, the tuned one always in English
        in_danish = request["model"] == "base" and " in da?" in request["messages"][0]["content"]
        return {
            "choices": [scripted_choice(0, DANISH_ANSWER if in_danish else ENGLISH_ANSWER)],
            "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25},
        }

    with scripted_openai_server(reply) as (url, _):
        cfg = served_arena_config(tmp_path, tiny_models, prompts_file, arena_file, url)
        result = run(cfg, stages=["arena"])
    answers = read(cfg, "arena", ARENA_ANSWER).to_pylist()
    assert {(a["model"], a["language"], a["detected_language"]) for a in answers} == {
        ("policy", "da", "da"),
        ("policy", "en", "en"),
        ("other", "da", "en"),
        ("other", "en", "en"),
    }
    assert version(cfg, "arena/da/other").manifest()["fidelity"] == {
        "answers": 4,
        "on_target": 0.0,
        "line_pass_rate": 0.0,
        "with_long_lines": 4,
    }
    report = Path(result["report"]).read_text()
    assert "| policy | da | 4 | 100% | 100% | 4 |" in report and "| other | da | 4 | 0% | 0% | 4 |" in report
