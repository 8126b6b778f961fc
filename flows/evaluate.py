"""Evaluation as its own flow: every evaluated model answers the arena, is judged, and is benchmarked."""

from __future__ import annotations

from typing import Any

from prefect import flow

from croco.flows.execute import execute, load_run_config
from croco.redaction import NoCredential


@flow(
    name="croco-evaluate",
    description="Arena answers, judge and EuroEval for the evaluated models (training runs first if it must).",
)
def evaluate(
    config: NoCredential,
    overrides: list[NoCredential] | None = None,
    languages: list[str] | None = None,
    models: dict[str, NoCredential] | None = None,
) -> dict[str, Any]:
    """Evaluate the models of one config.

    Args:
        config: Path or URI (s3://...) of the YAML run config, e.g. configs/demo.yaml.
        overrides: Config overrides as key.path=value, e.g. judge.ties=win.
        languages: Evaluate these language codes instead of the config's `languages`.
        models: More models to evaluate, name -> model folder or hub id (added to evaluate.models).
    """
    return execute(load_run_config(config, overrides, languages, models), targets=["arena", "judge", "euroeval"])
