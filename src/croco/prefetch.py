"""`croco prefetch CONFIG`: download everything a run needs, on a machine with network, for an offline cluster.

Hub models (policy, reward, base, translator, judge, evaluated models) go to the Hugging Face cache, the
m-ArenaHard prompts to the datasets cache, and EuroEval's datasets to EuroEval's own cache
through its `--download-only` mode. Point HF_HOME at shared storage to reuse them offline.
"""

from __future__ import annotations

import logging
from pathlib import Path

from croco.config import CrocoConfig, ModelConfig
from croco.embedded import is_embedded
from croco.translation import translated_languages

log = logging.getLogger("croco")


def prefetch(cfg: CrocoConfig) -> None:
    from huggingface_hub import snapshot_download

    for model in _hub_models(cfg):
        log.info("prefetch: model %s", model.path)
        snapshot_download(model.path, revision=model.revision)
    if cfg.arena.enabled:
        from croco.tasks.arena import load_questions

        log.info("prefetch: arena prompts %s (%s questions)", cfg.arena.prompts.path, len(load_questions(cfg)))
    if cfg.euroeval.enabled:
        _prefetch_euroeval(cfg)


def _hub_models(cfg: CrocoConfig) -> list[ModelConfig]:
    models = [cfg.models.policy, cfg.models.reward, *([cfg.models.base] if cfg.models.base else [])]
    if cfg.judge.model is not None and cfg.judge.engine.name != "openai":  # a local engine loads its weights here
        models.append(cfg.judge.model)
    models += list(cfg.evaluate.models.values())
    if translated_languages(cfg):  # on any engine: its tokenizer measures the translation prompts
        models.append(cfg.translate.model)
    unique = {(m.path, m.revision): m for m in models}
    return [m for m in unique.values() if not is_embedded(m.path) and not Path(m.path).exists()]


def _prefetch_euroeval(cfg: CrocoConfig) -> None:
    from croco.languages import LANGUAGES
    from croco.tasks.euroeval import CLI_SCRIPT, check_datasets, dataset_table, run_in_euroeval

    table = dataset_table(cfg)
    check_datasets(cfg, table)
    for code, names in table.items():
        log.info("prefetch: EuroEval datasets for %s: %s", code, ", ".join(names))
        arguments = ["--model", cfg.models.policy.path, "--language", LANGUAGES[code].euroeval_code, "--download-only"]
        run_in_euroeval(
            cfg,
            CLI_SCRIPT,
            [*arguments, *[a for n in names for a in ("--dataset", n)]],
            purpose=f"download EuroEval's {code} datasets",
        )
