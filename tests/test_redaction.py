"""Credentials are masked in log lines, errors and any JSON-like value croco writes."""

import asyncio
import json
import logging
import shutil

import pytest

from conftest import REPO
from croco.errors import CrocoError
from croco.redaction import api_key, redact, redact_value


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("http://user:hunter22@127.0.0.1:8000/v1", "http://***@127.0.0.1:8000/v1"),
        ("s3://AKIAEXAMPLE:wJalrXUt@bucket/prefix", "s3://***@bucket/prefix"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
        ("key sk-proj-0123456789abcdefghij", "key ***"),
        ("token hf_0123456789abcdefghijklmn", "token ***"),
        ("euroeval --api-key 0123abcd --model x", "euroeval --api-key *** --model x"),
        ("--hf-token=abc123", "--hf-token=***"),
        ("https://api.example.org/v1?api_key=abc&x=1", "https://api.example.org/v1?api_key=***&x=1"),
        ('{"password": "p4ss"}', '{"password": "***"}'),
    ],
)
def test_credentials_are_masked(text, masked):
    assert redact(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "api_key_env: CROCO_KEY",
        "max_new_tokens: 4096",
        "cache key 0123456789abcdef sha256 " + "ab" * 32,
        "a non-token answer",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == text


def test_a_command_line_as_a_list_masks_the_value_after_a_key_flag():
    assert redact_value({"extra_args": ["--api-key", "plain", "--num-iterations", "3"], "n": 3}) == {
        "extra_args": ["--api-key", "***", "--num-iterations", "3"],
        "n": 3,
    }


def test_a_key_from_its_variable_is_masked_in_log_lines_and_errors(monkeypatch, caplog):
    monkeypatch.setenv("CROCO_TEST_REDACTION_KEY", "no-pattern-would-catch-this")
    assert api_key("CROCO_TEST_REDACTION_KEY", "engine.api_key_env") == "no-pattern-would-catch-this"
    caplog.set_level(logging.INFO, logger="croco")
    logging.getLogger("croco").info(
        "sending %s to %s", "no-pattern-would-catch-this", "http://user:hunter22@127.0.0.1:8000/v1"
    )
    assert caplog.messages == ["sending *** to http://***@127.0.0.1:8000/v1"]
    assert str(CrocoError("request to http://user:hunter22@host/v1 failed")) == "request to http://***@host/v1 failed"
    with pytest.raises(
        CrocoError, match=r"^environment variable CROCO_TEST_UNSET_KEY \(euroeval.api_key_env\) is not set"
    ):
        api_key("CROCO_TEST_UNSET_KEY", "euroeval.api_key_env")


PLANTED = {
    "euroeval.extra_args=[--api-key, planted-api-key-1]": "planted-api-key-1",
    "generate.engine={name: openai, base_url: 'http://user:planted-url-password-2@127.0.0.1:8000/v1'}": "planted-url-password-2",
    "storage.root=s3://AKIAPLANTED3:planted-s3-secret-3@bucket/prefix": "planted-s3-secret-3",
}


def stored_flow_runs(api_url: str) -> list:
    """Every flow run the Prefect server at `api_url` keeps, as its API returns them."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs()

    with temporary_settings({PREFECT_API_URL: api_url}):
        return asyncio.run(read())


def test_a_deployment_refuses_a_run_whose_parameters_hold_a_credential(tmp_path, prefect_server):
    from prefect.deployments import run_deployment

    from croco.flows.pipeline import pipeline

    config = str(tmp_path / "deployed.yaml")
    pipeline.to_deployment(name="credentials").apply()
    for override in PLANTED:  # what the UI's Run button sends
        with pytest.raises(
            Exception, match=r"409 Conflict.*Validation failed for field .*overrides.*should not be valid under"
        ):
            run_deployment(
                "croco-pipeline/credentials", parameters={"config": config, "overrides": [override]}, timeout=0
            )
    stored = json.dumps([run.parameters for run in stored_flow_runs(prefect_server)])
    assert config not in stored and not [secret for secret in PLANTED.values() if secret in stored]


def test_a_flow_run_given_a_credential_fails_and_prefect_keeps_it_masked(tmp_path, prefect_server):
    from croco.flows.pipeline import pipeline

    config = tmp_path / "called.yaml"
    shutil.copy(REPO / "configs" / "demo.yaml", config)
    with pytest.raises(
        CrocoError, match=r"^override 'euroeval.extra_args=\[--api-key, \*\*\*' holds a credential, .* \(api_key_env\)"
    ):
        pipeline(
            config=str(config), overrides=list(PLANTED)
        )  # the Python API: Prefect creates the run before croco sees it
    [stored] = [run for run in stored_flow_runs(prefect_server) if run.parameters.get("config") == str(config)]
    assert stored.state.is_failed() and "holds a credential" in stored.state.message
    assert not [secret for secret in PLANTED.values() if secret in json.dumps(stored.parameters)]
