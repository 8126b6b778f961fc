"""The whole method as one flow: prompts, generate, score (per language), pair, SFT, DPO, and the evaluation."""

from __future__ import annotations

from typing import Any

from prefect import flow

from croco.flows.execute import execute, load_run_config
from croco.redaction import NoCredential


@flow(name="croco-pipeline", description="Every enabled stage of a croco config; finished units are cache hits.")
def pipeline(
    config: NoCredential,
    overrides: list[NoCredential] | None = None,
    languages: list[str] | None = None,
    stages: list[str] | None = None,
) -> dict[str, Any]:
    """Run the croco method for one config.

    Args:
        config: Path or URI (s3://...) of the YAML run config, e.g. configs/demo.yaml.
        overrides: Config overrides as key.path=value, e.g. generate.num_samples=8.
        languages: Run these language codes instead of the config's `languages`.
        stages: Run only these stages (and the finished work they read); default: every enabled stage.
    """
    return execute(load_run_config(config, overrides, languages), targets=stages)
