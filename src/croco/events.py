"""The Prefect event croco emits when a config gains languages; a config's croco-languages deployment listens for it.

The event carries what the triggered run needs to do exactly the announced work: the config as an absolute path or
URI, and the overrides given. Something a worker elsewhere would read differently is refused before anything is sent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from croco.config import read_yaml
from croco.errors import CrocoError

LANGUAGES_ADDED = "croco.config.languages-added"


def resource_id(name: str) -> str:
    """The event resource of the config named `name`: its languages deployment's trigger matches exactly this."""
    return f"croco.config.{name}"


def needs_a_server(command: str) -> None:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise CrocoError(f"{command} needs a Prefect server: set PREFECT_API_URL (see the README's deployment section)")


def carried(config: str, overrides: list[str]) -> dict[str, Any]:
    """The payload that lets a worker in another folder do the announced work, or a sentence saying why not."""
    needs_a_server("--notify")
    if "://" not in config and not Path(config).is_absolute():
        raise CrocoError(
            f"--notify: the config {config} is a relative path, which the worker would look for in its own folder; "
            f"give it as an absolute path ({Path(config).resolve()}) or a URI"
        )
    for override in overrides:
        for value in _strings(read_yaml(override.partition("=")[2])):
            if "://" not in value and not Path(value).expanduser().is_absolute() and Path(value).exists():
                raise CrocoError(
                    f"--notify: the override {override} names {value}, a relative path the worker would look for in "
                    f"its own folder; give it as an absolute path ({Path(value).resolve()})"
                )
    return {"config": config, "overrides": list(overrides)}


def languages_added(name: str, payload: dict[str, Any], new: list[str]) -> None:
    """Send the event and wait until the server has it (a process that ends first would lose it)."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    event = Event(
        event=LANGUAGES_ADDED,
        resource={"prefect.resource.id": resource_id(name), "croco.config": payload["config"]},
        payload={**payload, "languages": new},
    )

    async def send() -> None:
        async with get_events_client() as events:
            await events.emit(event)

    asyncio.run(send())


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [s for item in value for s in _strings(item)] if isinstance(value, list) else []
