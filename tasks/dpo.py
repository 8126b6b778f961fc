"""Stage 4: DPO of a LoRA adapter on the chosen/rejected pairs (TRL's DPOTrainer).

The reference model is the base with the adapter switched off: TRL does this when it is
given a PEFT config and no reference model, so no second copy of the weights is loaded.
With `dpo.online`, TRL's OnlineDPOTrainer instead samples fresh answers to the same prompts
during training and lets the run's reward model pick the preferred one (the paper found
this no better than the offline variant).
"""

from __future__ import annotations

from typing import Any

from croco import training
from croco.caching import stage_task
from croco.config import CrocoConfig
from croco.models import load_reward_model, load_tokenizer, model_identity
from croco.plan import Unit
from croco.storage import ALL_LANGUAGES, Version
from croco.tasks import across_languages

NAME = "dpo"
CODE_VERSION = "1"
LOADS_MODEL = True
PAIRS = f"pair/{ALL_LANGUAGES}"

units = across_languages
PLOTS = {"loss": "DPO loss", "rewards/accuracies": "reward accuracy", "rewards/margins": "reward margin"}


def enabled(cfg: CrocoConfig) -> bool:
    return cfg.dpo.enabled


def inputs(cfg: CrocoConfig, language: str, model: None) -> list[str]:
    return [PAIRS]


def settings(cfg: CrocoConfig, language: str, model: None) -> dict[str, Any]:
    online = {
        "reward": model_identity(cfg.models.reward),
        "sampling": [cfg.generate.max_new_tokens, cfg.generate.temperature],
    }
    return {
        "dpo": cfg.dpo.model_dump(exclude=training.EXECUTION),
        "seed": cfg.seed,
        **training.provenance(cfg),
        **(online if cfg.dpo.online else {}),
    }


@stage_task
def dpo(cfg: CrocoConfig, unit: Unit, out: Version, inputs: dict[str, Version]) -> dict[str, Any]:
    make_trainer = _online_trainer(cfg) if cfg.dpo.online else _offline_trainer(cfg)
    columns = ["prompt"] if cfg.dpo.online else ["prompt", "chosen", "rejected"]
    return training.fit(
        cfg,
        cfg.dpo,
        out,
        inputs[PAIRS],
        f"dpo_{cfg.dpo.pairs}",
        lambda row: row["prompt"],
        columns,
        make_trainer,
        PLOTS,
    )


def _offline_trainer(cfg: CrocoConfig):
    from trl import DPOConfig, DPOTrainer

    def make_trainer(arguments: dict, **parts) -> DPOTrainer:
        return DPOTrainer(ref_model=None, args=DPOConfig(beta=cfg.dpo.beta, **arguments), **parts)

    return make_trainer


def _online_trainer(cfg: CrocoConfig):
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    def make_trainer(arguments: dict, model, eval_dataset, **parts) -> OnlineDPOTrainer:
        reward_tokenizer = load_tokenizer(cfg.models.reward)
        reward = load_reward_model(cfg.models.reward, model.device)
        reward.config.pad_token_id = reward.config.pad_token_id or reward_tokenizer.pad_token_id
        sampling = {"max_new_tokens": cfg.generate.max_new_tokens, "temperature": cfg.generate.temperature or 1.0}
        # OnlineDPOTrainer evaluates nothing on prompt-only data, so the held-out share stays unused.
        args = OnlineDPOConfig(beta=cfg.dpo.beta, **sampling, **{**arguments, "eval_strategy": "no"})
        return OnlineDPOTrainer(
            model=model, reward_funcs=reward, reward_processing_classes=reward_tokenizer, args=args, **parts
        )

    return make_trainer
