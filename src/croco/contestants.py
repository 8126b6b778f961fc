"""Which models the evaluation stages compare: the policy, this run's adapters, and any others.

Every evaluated model has a name (`policy`, `sft`, `dpo`, or a key of `evaluate.models`); one
of them is the baseline the others are judged against (`evaluate.baseline`). A run adapter is
read from its training stage's version, so its identity in a key is that version's key. On an
OpenAI-compatible server each model is asked for by its own served name; a name that would
stand for two models is refused (the server would answer for both, and the win rate would
drift to 50% without a sign).
"""

from __future__ import annotations

from typing import Any

from croco.config import CrocoConfig, EngineConfig, ModelConfig
from croco.embedded import cache_dir
from croco.engines import engine_identity
from croco.errors import CrocoError
from croco.models import model_identity
from croco.storage import ALL_LANGUAGES, Version
from croco.training import ADAPTER_DIR, base_model

RUN_ADAPTERS = ("sft", "dpo")


def run_adapters(cfg: CrocoConfig) -> list[str]:
    """The training stages whose adapters are evaluated (they must finish first)."""
    if cfg.evaluate.run_adapters is not None:
        return list(cfg.evaluate.run_adapters)
    return [name for name in RUN_ADAPTERS if getattr(cfg, name).enabled]


def contestant_names(cfg: CrocoConfig) -> list[str]:
    names = ["policy", *run_adapters(cfg)]
    for name in cfg.evaluate.models:
        if name in names:
            raise CrocoError(
                f"evaluate.models.{name}: the name {name!r} is taken by the run's own models; choose another"
            )
        names.append(name)
    if cfg.evaluate.baseline not in names:
        raise CrocoError(
            f"evaluate.baseline {cfg.evaluate.baseline!r} is none of the evaluated models ({', '.join(names)})"
        )
    return names


def check_served_names(cfg: CrocoConfig) -> None:
    """Refuse a configuration in which one served name on one server would stand for two different models."""
    names = contestant_names(cfg)
    for name in cfg.evaluate.served_models:
        if name not in names:
            raise CrocoError(
                f"evaluate.served_models.{name}: no evaluated model is called {name!r} (evaluated: {', '.join(names)})"
            )
    claimed: dict[tuple[str, str], tuple[tuple, str]] = {}
    for server, served_as, what, named_by in _served(cfg, names):
        first, first_named_by = claimed.setdefault((server, served_as), (what, named_by))
        if first != what:
            raise CrocoError(
                f"{first_named_by} and {named_by} both ask {server} for served model {served_as!r}, which cannot be two different "
                "models; give each model its own name in evaluate.served_models (vLLM serves each LoRA adapter under its own name "
                "with --lora-modules)"
            )


def _served(cfg: CrocoConfig, names: list[str]) -> list[tuple[str, str, tuple, str]]:
    """(server, served name, which model that must be, the config key that names it) for each model asked of a server."""
    found = []

    def add(engine: EngineConfig, served_key: str, model: ModelConfig, path_key: str, what: tuple) -> None:
        if engine.name == "openai":
            named_by = served_key if engine.served_model else path_key
            found.append((engine.base_url.rstrip("/"), engine.served_model or model.path, what, named_by))

    def plain(model: ModelConfig) -> tuple:
        return (model.path, model.revision, model.adapter)

    add(
        cfg.generate.engine,
        "generate.engine.served_model",
        cfg.models.policy,
        "models.policy.path (generate)",
        plain(cfg.models.policy),
    )
    for name in names:
        model = _configured(cfg, name)
        what = ("adapter", name) if name in RUN_ADAPTERS else plain(model)
        served_key = (
            f"evaluate.served_models.{name}"
            if name in cfg.evaluate.served_models
            else f"arena.engine.served_model (for {name})"
        )
        add(arena_engine(cfg, name), served_key, model, f"{_path_key(cfg, name)} (for {name})", what)
    if cfg.judge.enabled and cfg.judge.kind == "llm":
        add(cfg.judge.engine, "judge.engine.served_model", cfg.judge.model, "judge.model.path", plain(cfg.judge.model))
    return found


def _path_key(cfg: CrocoConfig, name: str) -> str:
    if name in RUN_ADAPTERS:
        return "models.base.path" if cfg.models.base else "models.policy.path"
    return "models.policy.path" if name == "policy" else f"evaluate.models.{name}.path"


def arena_engine(cfg: CrocoConfig, name: str) -> EngineConfig:
    """The arena engine as evaluated model `name` uses it: on a server, asking for the model by its own served name."""
    served = cfg.evaluate.served_models.get(name)
    return cfg.arena.engine.model_copy(update={"served_model": served}) if served else cfg.arena.engine


def adapter_input(name: str) -> list[str]:
    """The training version a contestant reads its adapter from (none for other models)."""
    return [f"{name}/{ALL_LANGUAGES}"] if name in RUN_ADAPTERS else []


def identity(cfg: CrocoConfig, name: str, engine: EngineConfig) -> dict[str, Any]:
    """What makes a model's answers what they are, and the name they are stored under; a run adapter's
    training key comes in through the unit's inputs."""
    model = _configured(cfg, name)
    found = {"name": name, "model": model_identity(model), "engine": engine_identity(engine, model)}
    return found | ({"adapter_of": name} if name in RUN_ADAPTERS else {})


def _configured(cfg: CrocoConfig, name: str) -> ModelConfig:
    """A contestant's model as the config names it (a run adapter's: the base it is trained from)."""
    return (
        base_model(cfg)
        if name in RUN_ADAPTERS
        else cfg.models.policy
        if name == "policy"
        else cfg.evaluate.models[name]
    )


def resolve(cfg: CrocoConfig, name: str, inputs: dict[str, Version]) -> ModelConfig:
    """The model config to load for a contestant; a run adapter is fetched from its version if it is remote."""
    if name == "policy":
        return cfg.models.policy
    if name in RUN_ADAPTERS:
        adapter = inputs[adapter_input(name)[0]].local_folder(ADAPTER_DIR, cache_dir() / "artifacts")
        return base_model(cfg).model_copy(update={"adapter": str(adapter)})
    return cfg.evaluate.models[name]
