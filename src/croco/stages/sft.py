"""Stage 3: supervised fine-tuning of a LoRA adapter on the chosen answers (TRL's SFTTrainer)."""

from __future__ import annotations

from typing import Any

from croco import training
from croco.config import CrocoConfig
from croco.store import StageStore

NAME = "sft"
INPUT = "pair"
PLOTS = {"loss": "SFT loss", "grad_norm": "gradient norm", "mean_token_accuracy": "mean token accuracy"}


def enabled(cfg: CrocoConfig) -> bool:
    return cfg.sft.enabled


def settings(cfg: CrocoConfig) -> dict[str, Any]:
    return {"sft": cfg.sft.model_dump(), "seed": cfg.seed, **training.provenance(cfg)}


def run(cfg: CrocoConfig, out: StageStore, upstream: StageStore | None) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    def make_trainer(arguments: dict, **parts) -> SFTTrainer:
        return SFTTrainer(args=SFTConfig(**arguments), **parts)

    return training.fit(
        cfg, cfg.sft, out, upstream, f"sft_{cfg.sft.pairs}", lambda row: row["messages"][:1], ["messages"], make_trainer, PLOTS
    )
