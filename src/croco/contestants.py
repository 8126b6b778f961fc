"""Which models the evaluation stages compare: the policy, this run's adapters, and any others.

Every evaluated model has a name (`policy`, `sft`, `dpo`, or a key of `evaluate.models`); one
of them is the baseline the others are judged against (`evaluate.baseline`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from croco.config import CrocoConfig, EngineConfig, ModelConfig
from croco.errors import CrocoError
from croco.models import model_identity
from croco.store import StageStore
from croco.training import ADAPTER_DIR, base_model


def run_adapters(cfg: CrocoConfig) -> list[str]:
    """The training stages whose adapters are evaluated (they must finish first)."""
    if cfg.evaluate.run_adapters is not None:
        return list(cfg.evaluate.run_adapters)
    return [name for name in ("sft", "dpo") if getattr(cfg, name).enabled]


def contestants(cfg: CrocoConfig) -> dict[str, ModelConfig]:
    models = {"policy": cfg.models.policy}
    for stage in run_adapters(cfg):
        models[stage] = base_model(cfg).model_copy(update={"adapter": str(Path(cfg.run_dir) / stage / ADAPTER_DIR)})
    for name, model in cfg.evaluate.models.items():
        if name in models:
            raise CrocoError(f"evaluate.models.{name}: the name {name!r} is taken by the run's own models; choose another")
        models[name] = model
    if cfg.evaluate.baseline not in models:
        raise CrocoError(f"evaluate.baseline {cfg.evaluate.baseline!r} is none of the evaluated models ({', '.join(models)})")
    return models


def identity(cfg: CrocoConfig, name: str, model: ModelConfig, engine: EngineConfig) -> dict[str, Any]:
    """What makes a model's answers what they are; a run adapter is identified by its training stage's key."""
    if engine.name == "openai":
        found: dict[str, Any] = {"served_model": engine.served_model or model.path, "base_url": engine.base_url, **model.model_dump()}
    else:
        found = model_identity(model)
    if name in run_adapters(cfg):
        manifest = StageStore(Path(cfg.run_dir), name).manifest() or {}
        found["trained_by"] = {"stage": name, "key": manifest.get("key")}
    return found
