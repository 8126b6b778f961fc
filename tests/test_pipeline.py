import pytest

from croco.errors import CrocoError
from croco.pipeline import run_pipeline
from croco.records import SAMPLE
from croco.store import StageStore

from conftest import make_config


def ran(results):
    return {r.name: r.ran for r in results}


def test_rerun_of_a_finished_run_does_nothing(tmp_path, tiny_models, prompts_file, caplog):
    cfg = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts_file)}])
    assert ran(run_pipeline(cfg)) == {"prompts": True, "generate": True, "score": True, "pair": True, "sft": True, "dpo": True}
    caplog.set_level("INFO", logger="croco")
    assert ran(run_pipeline(cfg)) == {"prompts": False, "generate": False, "score": False, "pair": False, "sft": False, "dpo": False}
    assert "generate: already complete" in caplog.text


def test_changing_a_setting_redoes_that_stage_and_the_ones_after(tmp_path, tiny_models, prompts_file):
    cfg = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts_file)}])
    run_pipeline(cfg)
    changed = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts_file)}], generate={"max_new_tokens": 3})
    assert ran(run_pipeline(changed)) == {"prompts": False, "generate": True, "score": True, "pair": True, "sft": True, "dpo": True}
    assert max(StageStore(cfg.run_dir, "generate").read(SAMPLE)["completion_tokens"].to_pylist()) <= 3
    rescored = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts_file)}], generate={"max_new_tokens": 3}, score={"max_len": 999})
    assert ran(run_pipeline(rescored)) == {"prompts": False, "generate": False, "score": True, "pair": True, "sft": True, "dpo": True}


def test_editing_the_input_file_invalidates_everything(tmp_path, tiny_models, prompts_file):
    cfg = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts_file)}])
    run_pipeline(cfg)
    prompts_file.write_text(prompts_file.read_text().replace("Question 0 in en", "Question zero in en"))
    assert ran(run_pipeline(cfg)) == {"prompts": True, "generate": True, "score": True, "pair": True, "sft": True, "dpo": True}


def test_force_redoes_a_finished_stage(tmp_path, tiny_models, prompts_file):
    cfg = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts_file)}])
    run_pipeline(cfg, only=["prompts", "generate", "score"])
    before = StageStore(cfg.run_dir, "generate").read(SAMPLE)
    assert ran(run_pipeline(cfg, only=["generate"], force=True)) == {"prompts": False, "generate": True}
    assert not StageStore(cfg.run_dir, "score").manifest_path.exists()  # a stage reading generate's output is redone too
    assert StageStore(cfg.run_dir, "generate").read(SAMPLE).equals(before)  # seeded: the same samples again


def test_a_stage_needs_the_ones_before_it(tmp_path, tiny_models, prompts_file):
    cfg = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts_file)}])
    with pytest.raises(CrocoError, match="stage prompts has not finished .* run `croco prompts` or `croco run` first"):
        run_pipeline(cfg, only=["score"])


def test_training_does_not_depend_on_the_other_training_stage(tmp_path, tiny_models, prompts_file):
    cfg = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts_file)}])
    run_pipeline(cfg)
    changed = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts_file)}], sft={"learning_rate": 1e-3})
    assert ran(run_pipeline(changed)) == {"prompts": False, "generate": False, "score": False, "pair": False, "sft": True, "dpo": False}


def test_a_disabled_stage_is_left_out(tmp_path, tiny_models, prompts_file):
    cfg = make_config(tmp_path / "run", tiny_models, [{"path": str(prompts_file)}], sft={"enabled": False})
    assert "sft" not in ran(run_pipeline(cfg))
    with pytest.raises(CrocoError, match=r"stage sft is disabled in the config \(sft.enabled: false\)"):
        run_pipeline(cfg, only=["sft"])
