"""Which models the evaluation stages compare: the policy, this run's adapters, and any others.

Every evaluated model has a name (`policy`, `sft`, `dpo`, or a key of `evaluate.models`); one
of them is the baseline the others are judged against (`evaluate.baseline`). A run adapter is
read from its training stage's version, so its identity in a key is that version's key.
"""

from __future__ import annotations

import re
from typing import Any

from croco.config import CrocoConfig, EngineConfig, ModelConfig
from croco.embedded import cache_dir
from croco.engines import engine_identity
from croco.errors import CrocoError
from croco.models import model_identity
from croco.storage import ALL_LANGUAGES, Version
from croco.training import ADAPTER_DIR, base_model

RUN_ADAPTERS = ("sft", "dpo")
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def run_adapters(cfg: CrocoConfig) -> list[str]:
    """The training stages whose adapters are evaluated (they must finish first)."""
    if cfg.evaluate.run_adapters is not None:
        return list(cfg.evaluate.run_adapters)
    return [name for name in RUN_ADAPTERS if getattr(cfg, name).enabled]


def contestant_names(cfg: CrocoConfig) -> list[str]:
    names = ["policy", *run_adapters(cfg)]
    for name in cfg.evaluate.models:
        if name in names:
            raise CrocoError(f"evaluate.models.{name}: the name {name!r} is taken by the run's own models; choose another")
        if not SAFE_NAME.match(name) or name in (".", ".."):
            raise CrocoError(f"evaluate.models.{name}: a model name may hold only letters, digits, '_', '.' and '-'")
        names.append(name)
    if cfg.evaluate.baseline not in names:
        raise CrocoError(f"evaluate.baseline {cfg.evaluate.baseline!r} is none of the evaluated models ({', '.join(names)})")
    return names


def adapter_input(name: str) -> list[str]:
    """The training version a contestant reads its adapter from (none for other models)."""
    return [f"{name}/{ALL_LANGUAGES}"] if name in RUN_ADAPTERS else []


def identity(cfg: CrocoConfig, name: str, engine: EngineConfig) -> dict[str, Any]:
    """What makes a model's answers what they are, and the name they are stored under; a run adapter's
    training key comes in through the unit's inputs."""
    model = base_model(cfg) if name in RUN_ADAPTERS else cfg.models.policy if name == "policy" else cfg.evaluate.models[name]
    found = {"name": name, "model": model_identity(model), "engine": engine_identity(engine)}
    return found | ({"adapter_of": name} if name in RUN_ADAPTERS else {})


def resolve(cfg: CrocoConfig, name: str, inputs: dict[str, Version]) -> ModelConfig:
    """The model config to load for a contestant; a run adapter is fetched from its version if it is remote."""
    if name == "policy":
        return cfg.models.policy
    if name in RUN_ADAPTERS:
        adapter = inputs[adapter_input(name)[0]].local_folder(ADAPTER_DIR, cache_dir() / "artifacts")
        return base_model(cfg).model_copy(update={"adapter": str(adapter)})
    return cfg.evaluate.models[name]
