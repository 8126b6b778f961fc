"""The evaluated models and the names a server knows them by: one served name never stands for two models."""

import pytest

from conftest import make_config
from croco.contestants import arena_engine
from croco.errors import CrocoError
from croco.plan import build_plan

SERVER = "http://127.0.0.1:8000/v1"


def served_config(tmp_path, tiny_models, prompts_file, served_model=None, served_models=None, **sections):
    arena = {
        "prompts": {"path": "embedded:demo-arena"},
        "engine": {"name": "openai", "base_url": SERVER, "served_model": served_model},
    }
    sections = {"evaluate": {"served_models": served_models or {}}, "judge": {"enabled": False}, **sections}
    return make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], arena=arena, **sections)


def test_one_served_name_for_the_policy_and_its_adapters_is_refused(tmp_path, tiny_models, prompts_file):
    with pytest.raises(
        CrocoError,
        match=rf"^arena\.engine\.served_model \(for policy\) and arena\.engine\.served_model \(for sft\) both ask {SERVER} for served model 'eurollm', which cannot be two different models; give each model its own name in evaluate\.served_models",
    ):
        build_plan(served_config(tmp_path, tiny_models, prompts_file, served_model="eurollm"))
    # An adapter without a served name would be asked for by its base model's path, so it would be answered by the base.
    with pytest.raises(
        CrocoError, match=r"^evaluate\.served_models\.policy and models\.policy\.path \(for sft\) both ask"
    ):
        build_plan(
            served_config(
                tmp_path,
                tiny_models,
                prompts_file,
                served_models={"policy": tiny_models["policy"], "dpo": "eurollm-dpo"},
            )
        )
    with pytest.raises(CrocoError, match=r"^evaluate\.served_models\.sft and evaluate\.served_models\.dpo both ask"):
        build_plan(served_config(tmp_path, tiny_models, prompts_file, served_models={"sft": "tuned", "dpo": "tuned"}))


def test_another_stage_on_the_same_server_may_not_take_an_evaluated_models_name(tmp_path, tiny_models, prompts_file):
    judge = {
        "kind": "llm",
        "model": {"path": "judge-model"},
        "engine": {"name": "openai", "base_url": SERVER + "/", "served_model": "eurollm-dpo"},
    }
    names = {"policy": "eurollm", "sft": "eurollm-sft", "dpo": "eurollm-dpo"}
    with pytest.raises(CrocoError, match=r"^evaluate\.served_models\.dpo and judge\.engine\.served_model both ask"):
        build_plan(served_config(tmp_path, tiny_models, prompts_file, served_models=names, judge=judge))


def test_each_evaluated_model_is_asked_for_by_its_own_name(tmp_path, tiny_models, prompts_file):
    names = {"policy": "eurollm", "sft": "eurollm-sft", "dpo": "eurollm-dpo"}
    cfg = served_config(tmp_path, tiny_models, prompts_file, served_models=names)
    plan = build_plan(cfg)
    assert {name: arena_engine(cfg, name).served_model for name in names} == names
    assert plan.by_id["arena/en/dpo"].settings["model"]["engine"]["served_model"] == "eurollm-dpo"
    with pytest.raises(
        CrocoError,
        match=r"^evaluate\.served_models\.dpp: no evaluated model is called 'dpp' \(evaluated: policy, sft, dpo\)$",
    ):
        build_plan(served_config(tmp_path, tiny_models, prompts_file, served_models={**names, "dpp": "eurollm-dpo-2"}))
