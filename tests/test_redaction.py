"""Credentials are masked in log lines, errors and any JSON-like value croco writes."""

import logging

import pytest

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


@pytest.mark.parametrize("text", ["api_key_env: CROCO_KEY", "max_new_tokens: 4096", "cache key 0123456789abcdef sha256 " + "ab" * 32, "a non-token answer"])
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == text


def test_a_command_line_as_a_list_masks_the_value_after_a_key_flag():
    assert redact_value({"extra_args": ["--api-key", "plain", "--num-iterations", "3"], "n": 3}) == {"extra_args": ["--api-key", "***", "--num-iterations", "3"], "n": 3}


def test_a_key_from_its_variable_is_masked_in_log_lines_and_errors(monkeypatch, caplog):
    monkeypatch.setenv("CROCO_TEST_REDACTION_KEY", "no-pattern-would-catch-this")
    assert api_key("CROCO_TEST_REDACTION_KEY", "engine.api_key_env") == "no-pattern-would-catch-this"
    caplog.set_level(logging.INFO, logger="croco")
    logging.getLogger("croco").info("sending %s to %s", "no-pattern-would-catch-this", "http://user:hunter22@127.0.0.1:8000/v1")
    assert caplog.messages == ["sending *** to http://***@127.0.0.1:8000/v1"]
    assert str(CrocoError("request to http://user:hunter22@host/v1 failed")) == "request to http://***@host/v1 failed"
    with pytest.raises(CrocoError, match=r"^environment variable CROCO_TEST_UNSET_KEY \(euroeval.api_key_env\) is not set"):
        api_key("CROCO_TEST_UNSET_KEY", "euroeval.api_key_env")
