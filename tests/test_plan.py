"""Unit keys: what shapes a unit's output and nothing else."""

from croco.plan import build_plan

from conftest import make_config


def keys(cfg) -> dict[str, str]:
    return {unit.id: unit.key for unit in build_plan(cfg).units}


def test_a_language_keeps_its_keys_whichever_other_languages_run(tmp_path, tiny_models, prompts_file):
    two = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], languages=["en", "da"]))
    three = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], languages=["en", "da", "ga"]))
    for stage in ("prompts", "generate", "score"):
        assert two[f"{stage}/en"] == three[f"{stage}/en"] and two[f"{stage}/da"] == three[f"{stage}/da"]
        assert f"{stage}/ga" in three and f"{stage}/ga" not in two
    assert two["pair/all"] != three["pair/all"]  # pairing takes every language


def test_execution_settings_never_change_a_key(tmp_path, tiny_models, prompts_file):
    base = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}]))
    faster = make_config(
        tmp_path, tiny_models, [{"path": str(prompts_file)}],
        generate={"engine": {"batch_size": 1, "device": "cpu"}}, score={"engine": {"batch_size": 2}},
        retries={"default": {"attempts": 5, "delay_s": 1}}, sft={"save_steps": 7}, name="another-name",
    )
    assert keys(faster) == base


def test_a_setting_changes_its_stage_and_every_stage_after_it(tmp_path, tiny_models, prompts_file):
    base = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}]))
    changed = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], generate={"max_new_tokens": 3}))
    assert {u for u in base if base[u] != changed[u]} == {"generate/en", "generate/da", "score/en", "score/da", "pair/all", "sft/all", "dpo/all"}
    rescored = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], score={"max_len": 99}))
    assert {u for u in base if base[u] != rescored[u]} == {"score/en", "score/da", "pair/all", "sft/all", "dpo/all"}
    sft_only = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], sft={"learning_rate": 1e-3}))
    assert {u for u in base if base[u] != sft_only[u]} == {"sft/all"}


def test_the_content_of_an_input_file_is_in_the_key(tmp_path, tiny_models, prompts_file):
    before = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}]))
    prompts_file.write_text(prompts_file.read_text().replace("Question 0 in en", "Question zero in en"))
    after = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}]))
    assert {u for u in before if before[u] != after[u]} == set(before)  # the file holds both languages


def test_a_disabled_stage_has_no_units_and_evaluation_reads_the_adapters(tmp_path, tiny_models, prompts_file):
    plan = build_plan(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], sft={"enabled": False}))
    assert plan.stages() == ["prompts", "generate", "score", "pair", "dpo"]
    arena = build_plan(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], arena={"prompts": {"path": "embedded:demo-arena"}}))
    assert dict(arena.by_id["arena/da/dpo"].inputs) == {"dpo/all": arena.by_id["dpo/all"].version_path}
    assert [u.id for u in arena.of("judge")] == ["judge/en", "judge/da"]
