import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from croco.config import CrocoConfig, config_reference, load_config, parse_config
from croco.errors import CrocoError

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def minimal(**extra) -> dict:
    return {
        "storage": {"root": "runs/x"},
        "languages": ["en"],
        "models": {"policy": {"path": "a"}, "reward": {"path": "b"}},
        "data": {"sources": [{"path": "p.jsonl"}]},
        "judge": {"model": {"path": "j"}},
        **extra,
    }


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_validates(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, CrocoConfig)


def test_shipped_configs_include_demo_and_paper_recipes():
    assert {"demo.yaml", "eurollm-9b.yaml", "tiny-aya.yaml"} <= {p.name for p in SHIPPED}


def test_paper_recipes_keep_paper_defaults():
    cfg = load_config(REPO / "configs" / "eurollm-9b.yaml")
    assert (cfg.generate.num_samples, cfg.generate.max_new_tokens, cfg.score.max_len, cfg.seed) == (64, 4096, 32768, 42)
    assert cfg.models.reward.path == "Skywork/Skywork-Reward-V2-Qwen3-8B"


def test_defaults_are_the_papers():
    cfg = parse_config(minimal())
    assert cfg.generate.num_samples == 64 and cfg.generate.temperature == 1.0 and cfg.generate.top_p == 1.0
    assert cfg.score.max_len == 32768
    assert cfg.models.policy.trust_remote_code is False


def test_the_judge_is_an_llm_unless_a_reward_judge_is_asked_for():
    assert parse_config(minimal()).judge.kind == "llm"
    unnamed = minimal()
    del unnamed["judge"]
    with pytest.raises(
        CrocoError,
        match=r"^config: judge\.kind is llm \(the default\), which needs judge\.model, .* judge\.kind: reward",
    ):
        parse_config(unnamed)
    assert (
        parse_config({**unnamed, "arena": {"enabled": False}}).judge.model is None
    )  # a judge that never runs needs no model
    assert parse_config({**unnamed, "judge": {"kind": "reward"}}).judge.kind == "reward"
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert demo["judge"]["kind"] == "reward"  # the demo's reward judge is asked for, not a default


def test_misspelt_key_names_the_key_and_the_fix():
    with pytest.raises(CrocoError, match=r"unknown key generate\.num_sample; did you mean generate\.num_samples\?"):
        parse_config(minimal(generate={"num_sample": 3}))


def test_unknown_top_level_key():
    with pytest.raises(CrocoError, match=r"unknown key lanugages; did you mean languages\?"):
        parse_config(minimal(lanugages=["en"]))


def test_unknown_key_inside_a_list_item():
    raw = minimal()
    raw["data"]["sources"][0]["langauge"] = "da"
    with pytest.raises(
        CrocoError, match=r"unknown key data\.sources\.0\.langauge; did you mean data\.sources\.0\.language\?"
    ):
        parse_config(raw)


def test_wrong_type_is_not_coerced():
    with pytest.raises(CrocoError, match=r"key generate\.num_samples: input should be a valid integer \(got '8'\)"):
        parse_config(minimal(generate={"num_samples": "8"}))


def test_unknown_language_code():
    with pytest.raises(CrocoError, match=r"key languages: unknown language code 'xx'; use one of .*da"):
        parse_config(minimal(languages=["en", "xx"]))


def test_missing_required_key():
    raw = minimal()
    del raw["models"]["reward"]
    with pytest.raises(CrocoError, match=r"missing required key models\.reward"):
        parse_config(raw)


def test_overrides_reach_any_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "languages: [en]\nmodels: {policy: {path: a}, reward: {path: b}}\ndata: {sources: [{path: p.jsonl}]}\njudge: {model: {path: j}}\n"
    )
    cfg = load_config(
        path, ["generate.num_samples=8", "languages=[en,da]", "score.engine.batch_size=2", "models.policy.adapter=ad"]
    )
    assert cfg.generate.num_samples == 8 and cfg.languages == ["en", "da"]
    assert cfg.score.engine.batch_size == 2 and cfg.models.policy.adapter == "ad"


def test_malformed_override(tmp_path):
    with pytest.raises(CrocoError, match="must look like key.path=value"):
        load_config(REPO / "configs" / "demo.yaml", ["generate.num_samples"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(CrocoError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(CrocoError, match="not valid YAML"):
        load_config(bad)


def test_reference_documents_every_leaf_key():
    reference = config_reference()
    for key in (
        "generate.num_samples",
        "score.max_len",
        "models.policy.trust_remote_code",
        "data.sources[].path",
        "generate.engine.batch_size",
    ):
        assert f"`{key}`" in reference


def test_training_prompt_limit_must_leave_room_for_an_answer():
    with pytest.raises(CrocoError, match=r"key dpo: max_prompt_length \(2048\) must be below max_length \(1000\)"):
        parse_config(minimal(dpo={"max_length": 1000}))


def test_training_defaults_are_the_papers():
    cfg = parse_config(minimal())
    assert (cfg.sft.learning_rate, cfg.dpo.learning_rate, cfg.dpo.beta) == (2e-4, 5e-6, 0.1)
    for train in (cfg.sft, cfg.dpo):
        assert (train.lr_scheduler, train.max_length, train.batch_size, train.gradient_accumulation) == (
            "cosine",
            4096,
            1,
            8,
        )
        assert (train.warmup_ratio, train.weight_decay, train.epochs, train.eval_fraction) == (0.05, 0.01, 1.0, 0.01)
        assert (train.lora.r, train.lora.alpha, train.lora.dropout) == (16, 32, 0.05)
        assert train.lora.target_modules == [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]


def test_a_config_saved_by_a_windows_editor_loads_and_one_not_in_utf8_is_named(tmp_path):
    windows = tmp_path / "windows.yaml"
    text = yaml.safe_dump(
        minimal(data={"sources": [{"path": "sm\u00f8rrebr\u00f8d.jsonl"}]}, judge={"enabled": False}),
        allow_unicode=True,
    )
    windows.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert load_config(windows).data.sources[0].path == "sm\u00f8rrebr\u00f8d.jsonl"
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("languages: [da]\nname: sm\u00f8rrebr\u00f8d\n".encode("latin-1"))
    with pytest.raises(CrocoError, match=rf"^{latin1} line 2 is not UTF-8 \(byte offset 24\); save the file as UTF-8$"):
        load_config(latin1)


def test_a_model_is_a_folder_here_an_embedded_model_or_a_hub_id(tmp_path):
    for key in ("path", "adapter"):
        with pytest.raises(
            CrocoError,
            match=rf"^config: key models\.policy\.{key}: names neither a folder that exists here nor a Hugging Face id such as org/name \(got '\.\./escape'\)$",
        ):
            parse_config(minimal(models={"policy": {"path": "a", key: "../escape"}, "reward": {"path": "b"}}))
    with pytest.raises(
        CrocoError,
        match=r"^config: key evaluate\.models\.mine\.path: unknown embedded model; use embedded:smollm2-135m-instruct or embedded:croco-demo-reward",
    ):
        parse_config(minimal(evaluate={"models": {"mine": {"path": "embedded:smollm3"}}}))
    folder = tmp_path / "merged..model"  # not a hub id, but a folder that exists
    folder.mkdir()
    for fine in (str(folder), "Org/model-1.5B", "gpt2", "embedded:croco-demo-reward"):
        assert parse_config(minimal(judge={"model": {"path": fine}})).judge.model.path == fine


@pytest.mark.parametrize("name", ["../escape", "..", ".", "a b"])
def test_an_evaluated_model_name_is_a_plain_folder_name(name):
    with pytest.raises(
        CrocoError,
        match=rf"^config: key evaluate\.models\.{re.escape(name)}: a model name may hold only letters, digits, '_', '\.' and '-' \(got {re.escape(repr(name))}\)$",
    ):
        parse_config(minimal(evaluate={"models": {name: {"path": "org/model"}}}))
    assert list(
        parse_config(minimal(evaluate={"models": {"merged-1.5B_v2": {"path": "org/model"}}})).evaluate.models
    ) == ["merged-1.5B_v2"]


def test_an_override_that_is_not_yaml_is_named():
    with pytest.raises(
        CrocoError,
        match=r"^override 'languages=\[en, da' is not valid YAML \(expected ',' or '\]', but got '<stream end>'\); write the value as",
    ):
        load_config(REPO / "configs" / "demo.yaml", ["languages=[en, da"])


def test_a_number_written_with_an_exponent_is_a_number(tmp_path):
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        ["sft.learning_rate=1e-4", "dpo={learning_rate: 5E-7, beta: 2e0}", "languages=[en, da]", "name=1e4x"],
    )
    assert (cfg.sft.learning_rate, cfg.dpo.learning_rate, cfg.dpo.beta, cfg.languages, cfg.name) == (
        1e-4,
        5e-7,
        2.0,
        ["en", "da"],
        "1e4x",
    )
    written = tmp_path / "c.yaml"
    written.write_text(yaml.safe_dump(minimal()) + "sft: {learning_rate: 3e-5}\n")
    assert load_config(written).sft.learning_rate == 3e-5


CLUSTERS = sorted((REPO / "configs" / "clusters").glob("*.yaml"))


@pytest.mark.parametrize("path", CLUSTERS, ids=[p.name for p in CLUSTERS])
def test_every_cluster_profile_validates_by_name(path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert parse_config(minimal(execution={"cluster": path.stem})).execution.kind == "slurm"


def test_the_run_config_and_its_stages_override_the_cluster_profile(monkeypatch):
    monkeypatch.chdir(REPO)
    execution = {
        "cluster": "lumi",
        "slurm": {"account": "project_1", "env": {"HF_HOME": "/scratch/project_1/hf"}},
        "stages": {"prompts": {"kind": "local"}, "sft": {"slurm": {"time": "2-00:00:00"}}},
    }
    cfg = parse_config(minimal(execution=execution))
    sft = cfg.execution.for_stage("sft").slurm
    assert (sft.partition, sft.account, sft.time) == ("standard-g", "project_1", "2-00:00:00")
    assert sft.env["HF_HOME"] == "/scratch/project_1/hf" and sft.env["TORCH_COMPILE_DISABLE"] == "1"
    assert cfg.execution.for_stage("generate").slurm.time == "12:00:00"
    assert cfg.execution.for_stage("prompts").kind == "local" and cfg.execution.for_stage("score").kind == "slurm"


def test_a_missing_cluster_profile_and_an_unknown_stage_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CrocoError, match="configs/clusters/lumi.yaml does not exist"):
        parse_config(minimal(execution={"cluster": "lumi"}))
    with pytest.raises(CrocoError, match="execution.stages.generat"):
        parse_config(minimal(execution={"stages": {"generat": {"kind": "slurm"}}}))
