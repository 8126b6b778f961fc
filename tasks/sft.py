"""Stage 3: supervised fine-tuning of a LoRA adapter on the chosen answers (TRL's SFTTrainer)."""

from __future__ import annotations

from typing import Any

from croco import training
from croco.caching import stage_task
from croco.config import CrocoConfig
from croco.plan import Unit
from croco.storage import ALL_LANGUAGES, Version
from croco.tasks import across_languages

NAME = "sft"
CODE_VERSION = "1"
LOADS_MODEL = True
PAIRS = f"pair/{ALL_LANGUAGES}"

units = across_languages
PLOTS = {"loss": "SFT loss", "grad_norm": "gradient norm", "mean_token_accuracy": "mean token accuracy"}


def enabled(cfg: CrocoConfig) -> bool:
    return cfg.sft.enabled


def inputs(cfg: CrocoConfig, language: str, model: None) -> list[str]:
    return [PAIRS]


def settings(cfg: CrocoConfig, language: str, model: None) -> dict[str, Any]:
    return {"sft": cfg.sft.model_dump(exclude=training.EXECUTION), "seed": cfg.seed, **training.provenance(cfg)}


@stage_task
def sft(cfg: CrocoConfig, unit: Unit, out: Version, inputs: dict[str, Version]) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    def make_trainer(arguments: dict, **parts) -> SFTTrainer:
        return SFTTrainer(args=SFTConfig(**arguments), **parts)

    return training.fit(
        cfg,
        cfg.sft,
        out,
        inputs[PAIRS],
        f"sft_{cfg.sft.pairs}",
        lambda row: row["messages"][:1],
        ["messages"],
        make_trainer,
        PLOTS,
    )
