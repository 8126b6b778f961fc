"""The Prefect event croco emits when a config gains languages; the croco-languages deployment's trigger listens for it."""

from __future__ import annotations

import logging

from croco.config import CrocoConfig
from croco.errors import CrocoError

log = logging.getLogger("croco")

LANGUAGES_ADDED = "croco.config.languages-added"


def languages_added(cfg: CrocoConfig, config: str, new: list[str]) -> None:
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise CrocoError("--notify needs a Prefect server: set PREFECT_API_URL (see the README's deployment section)")
    emit_event(
        LANGUAGES_ADDED,
        resource={"prefect.resource.id": f"croco.config.{cfg.name}", "croco.config": config},
        payload={"languages": new, "config": config},
    )
    log.info("emitted %s for %s (%s)", LANGUAGES_ADDED, cfg.name, ", ".join(new))
