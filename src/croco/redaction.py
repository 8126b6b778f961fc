"""Keeping credentials out of everything croco writes, hashes or prints.

A key reaches croco through an environment variable the config names (`api_key_env`); its value
is remembered here and masked wherever it appears. Anything else that looks like a credential is
masked too, for keys pasted where they do not belong: the user:password of a URL, sk-/hf_-style
tokens, `Bearer ...`, and the value after a key, token, secret or password flag or field. Log
lines, errors, config dumps, manifests (and so cache keys) and run records all pass through here;
flow parameters, which Prefect stores as they are, are refused if they hold one.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Annotated, Any

from pydantic import Field

MASK = "***"
_MIN_REMEMBERED = 8  # a shorter value would mask ordinary words
_remembered: set[str] = set()

# A flag whose value is a credential (`--api-key`, `--hf-token`, `-password`), as one item of a command line.
_SECRET_FLAG = re.compile(r"--?[\w-]*(?:key|token|secret|password)", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"(?<=://)[^/\s:@]+(?::[^/\s@]*)?@")  # user:password@host
_PATTERNS = [
    (URL_CREDENTIALS, MASK + "@"),
    (re.compile(r"\b(bearer\s+)[^\s'\",]+", re.IGNORECASE), r"\1" + MASK),
    (
        re.compile(r"\b(?:sk|hf|ghp|gho|github_pat|xox[abp])[-_][A-Za-z0-9_-]{16,}"),
        MASK,
    ),  # OpenAI/Anthropic, Hugging Face, GitHub, Slack
    (
        re.compile(
            r"((?<![\w-])--?[\w-]*(?:key|token|secret|password)['\"]?(?:\s*[=:,]\s*|\s+)['\"]?)(?!\*\*\*)[^\s'\",&]+",
            re.IGNORECASE,
        ),
        r"\1" + MASK,
    ),
    (
        re.compile(
            r"(\b\w*(?:api[_-]?key|token|secret|password)['\"]?\s*[=:]\s*['\"]?)(?!\*\*\*)[^\s'\",&]+", re.IGNORECASE
        ),
        r"\1" + MASK,
    ),
]
# The same patterns as one regex, for a flow parameter's JSON schema: a Prefect server refuses to create a deployment
# run whose parameter matches it (deployments enforce their parameter schema by default), so the value is never stored.
_ONE_PATTERN = "|".join(f"(?i:{p.pattern})" if p.flags & re.IGNORECASE else f"(?:{p.pattern})" for p, _ in _PATTERNS)
NoCredential = Annotated[str, Field(json_schema_extra={"not": {"pattern": _ONE_PATTERN}})]


def remember(secret: str) -> None:
    """Mask this exact value from now on, wherever it turns up."""
    if len(secret) >= _MIN_REMEMBERED:
        _remembered.add(secret)


def api_key(variable: str | None, config_key: str) -> str | None:
    """The key held by the environment variable a config names (remembered, so it is masked), or None if none is named."""
    from croco.errors import CrocoError  # here: croco.errors masks its messages with this module

    if not variable:
        return None
    value = os.environ.get(variable)
    if not value:
        raise CrocoError(f"environment variable {variable} ({config_key}) is not set; export the API key in it")
    remember(value)
    return value


def refuse_credentials(parameters: dict[str, list[str]]) -> None:
    """Refuse flow parameters (by the name a user knows them: override, config, ...) that hold a credential:
    Prefect keeps a flow run's parameters as they are, for anyone who can open its UI."""
    from croco.errors import CrocoError

    for name, values in parameters.items():
        for value in values:
            if redact(value) != value:
                raise CrocoError(
                    f"{name} {value!r} holds a credential, which Prefect would store with the flow run; put the key in the "
                    "environment variable the config names (api_key_env), or S3 keys in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                )


def redact(text: str) -> str:
    for secret in _remembered:
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_value(value: Any) -> Any:
    """A config dump, settings or any JSON-like value with every credential masked."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        # A command line as a list (`euroeval.extra_args`): the item after a key flag is the key.
        items = [
            MASK if i and isinstance(item, str) and _SECRET_FLAG.fullmatch(str(value[i - 1])) else redact_value(item)
            for i, item in enumerate(value)
        ]
        return type(value)(items)
    return value


class RedactSecrets(logging.Filter):
    """On the `croco` logger: every line is masked before any handler (terminal, Prefect's run logs) sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True
