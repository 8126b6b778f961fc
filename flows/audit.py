"""The reward transfer audit as its own flow (croco.audit says what it measures): English preference pairs
translated into the config's languages and scored by its reward model; finished translations and scores are
cache hits, so auditing another reward model translates nothing again."""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow

from croco.flows.execute import execute, load_run_config
from croco.redaction import NoCredential
from croco.storage import storage_of

log = logging.getLogger("croco")


@flow(
    name="croco-audit-reward",
    description="How well the config's reward model ranks translated preference pairs in each language, against English.",
)
def audit_reward(
    config: NoCredential, overrides: list[NoCredential] | None = None, languages: list[str] | None = None
) -> dict[str, Any]:
    """Audit the reward model of one config on preference pairs in its languages.

    Args:
        config: Path or URI (s3://...) of the YAML run config, e.g. configs/demo.yaml.
        overrides: Config overrides as key.path=value, e.g. audit.pairs=my_pairs.jsonl or models.reward.path=org/rm.
        languages: Audit these language codes instead of the config's `languages` (English is always audited).
    """
    cfg = load_run_config(config, overrides, languages)
    result = execute(cfg, targets=["audit_score"])
    folder = result["report"].rsplit("/", 1)[0]
    log.info("reward audit:\n%s", storage_of(cfg).fs.cat_file(f"{folder}/reward_audit.md").decode())
    return result
