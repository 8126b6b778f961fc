"""Bring a run up to date with its config's languages: finished languages are cache hits, new ones run.

The `croco-languages` deployment runs this on a schedule and whenever croco emits the event
`croco.config.languages-added` (see `croco plan --notify`).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow

from croco.flows.execute import execute, load_run_config
from croco.redaction import NoCredential
from croco.runs import last_languages
from croco.storage import storage_of

log = logging.getLogger("croco")


@flow(
    name="croco-languages",
    description="Rerun the pipeline for the config's languages; only languages without finished work do any.",
)
def languages(config: NoCredential, overrides: list[NoCredential] | None = None) -> dict[str, Any]:
    """Run the pipeline for every language of a config; languages finished earlier are cache hits.

    Args:
        config: Path or URI (s3://...) of the YAML run config, e.g. configs/demo.yaml.
        overrides: Config overrides as key.path=value.
    """
    cfg = load_run_config(config, overrides, None)
    before = last_languages(storage_of(cfg), cfg.name)
    new = [code for code in cfg.languages if before is None or code not in before]
    log.info(
        "languages: %s new since the last run of %s (%s)",
        ", ".join(new) or "none",
        cfg.name,
        ", ".join(before or []) or "no earlier run",
    )
    return execute(cfg) | {"new_languages": new}
