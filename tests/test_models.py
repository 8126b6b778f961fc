"""Loading models: the chat template read from files for keys, and hub models loaded at the commit their key holds."""

import shutil

import pytest
from transformers import AutoTokenizer

from croco.config import ModelConfig
from croco.embedded import POLICY, PREFIX
from croco.models import chat_template, load_tokenizer, model_identity
from croco.sources import hub_commit


def test_the_chat_template_read_from_files_is_the_one_transformers_loads(tiny_models, tmp_path):
    for path in (tiny_models["policy"], PREFIX + POLICY):
        assert chat_template(ModelConfig(path=path)) == load_tokenizer(ModelConfig(path=path)).chat_template
    in_config = shutil.copytree(tiny_models["policy"], tmp_path / "in-config")  # older models keep it in their config
    (in_config / "chat_template.jinja").unlink()
    AutoTokenizer.from_pretrained(tiny_models["policy"]).save_pretrained(in_config, save_jinja_files=False)
    assert not (in_config / "chat_template.jinja").exists()
    assert chat_template(ModelConfig(path=str(in_config))) == chat_template(ModelConfig(path=tiny_models["policy"]))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_models):
    """An offline Hugging Face cache holding `acme/policy` at two commits that differ in their chat template; `main`
    names the first. Returns a function that moves `main`."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--acme--policy"
    for commit, template in (("a" * 40, "{{ 'first' }}"), ("b" * 40, "{{ 'second' }}")):
        snapshot = shutil.copytree(tiny_models["policy"], repo / "snapshots" / commit)
        (snapshot / "chat_template.jinja").write_text(template)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (repo / "refs").mkdir()

    def point_main_at(commit: str) -> None:
        (repo / "refs" / "main").write_text(commit)

    point_main_at("a" * 40)
    hub_commit.cache_clear()
    yield point_main_at
    hub_commit.cache_clear()


def test_a_hub_model_is_keyed_and_loaded_at_the_commit_its_revision_stood_for_when_planned(hub_cache, monkeypatch):
    model = ModelConfig(path="acme/policy")
    identity = model_identity(model)
    assert identity["commit"] == "a" * 40 and identity["chat_template_sha256"]
    hub_cache("b" * 40)  # `main` moves after the plan: the units still load what their keys hold
    assert load_tokenizer(model).chat_template == "{{ 'first' }}"
    hub_commit.cache_clear()  # a new plan asks again, and keys the new commit and its template
    moved = model_identity(model)
    assert moved["commit"] == "b" * 40 and moved["chat_template_sha256"] != identity["chat_template_sha256"]
    assert load_tokenizer(model).chat_template == "{{ 'second' }}"


def test_a_hub_model_whose_files_are_out_of_reach_is_named(hub_cache):
    with pytest.raises(
        Exception, match=r"^cannot read chat_template.jinja of model acme/other \(its chat template is in every key"
    ):
        chat_template(ModelConfig(path="acme/other"))
