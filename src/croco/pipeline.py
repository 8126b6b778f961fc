"""Runs stages in order over the run store, skipping what is finished and redoing what changed.

A stage's key hashes its settings (see each stage's `settings`) with the keys of the stages it
reads from (its INPUT, plus any its optional `requires(cfg)` names, such as the adapters an
evaluation stage loads), so changing a setting invalidates that stage and every stage that
reads from it, directly or not.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from croco.config import CrocoConfig
from croco.errors import CrocoError
from croco.fileio import stable_hash
from croco.stages import arena, dpo, euroeval, generate, judge, pair, prompts, score, sft
from croco.store import StageStore

log = logging.getLogger("croco")

STAGES: list[ModuleType] = [prompts, generate, score, pair, sft, dpo, arena, judge, euroeval]
STAGE_NAMES = [stage.NAME for stage in STAGES]
_BY_NAME = {stage.NAME: stage for stage in STAGES}


@dataclass
class StageResult:
    name: str
    manifest: dict[str, Any]
    ran: bool


def _direct_inputs(stage: ModuleType, cfg: CrocoConfig) -> list[str]:
    return ([stage.INPUT] if stage.INPUT else []) + list(getattr(stage, "requires", lambda _: [])(cfg))


def _inputs(name: str, cfg: CrocoConfig) -> list[str]:
    """The stage and every stage it reads from, directly or not."""
    chain, todo = [], [name]
    while todo:
        current = todo.pop()
        if current not in chain:
            chain.append(current)
            todo.extend(_direct_inputs(_BY_NAME[current], cfg))
    return chain


def _enabled(stage: ModuleType, cfg: CrocoConfig) -> bool:
    return getattr(stage, "enabled", lambda _: True)(cfg)


def run_pipeline(cfg: CrocoConfig, only: list[str] | None = None, force: bool = False) -> list[StageResult]:
    """Run the named stages (all enabled ones by default); the stages they read from must already be complete."""
    wanted = set(only or [s.NAME for s in STAGES if _enabled(s, cfg)])
    needed = {name for w in wanted for name in _inputs(w, cfg)}
    run_dir = Path(cfg.run_dir)
    results: list[StageResult] = []
    keys: dict[str, str] = {}
    for stage in STAGES:
        if stage.NAME not in needed:
            continue
        if not _enabled(stage, cfg):
            raise CrocoError(f"stage {stage.NAME} is disabled in the config ({stage.NAME}.enabled: false); enable it to run it")
        store = StageStore(run_dir, stage.NAME)
        stage_settings = stage.settings(cfg)
        upstream_keys = [keys[name] for name in _direct_inputs(stage, cfg)]
        upstream_key = upstream_keys[0] if len(upstream_keys) == 1 else stable_hash(upstream_keys) if upstream_keys else ""
        key = keys[stage.NAME] = stable_hash({"settings": stage_settings, "upstream": upstream_key})
        if stage.NAME not in wanted:
            if not store.is_complete(key):
                raise CrocoError(
                    f"stage {stage.NAME} has not finished in {run_dir} for this config; run `croco {stage.NAME}` or `croco run` first"
                )
        elif force:
            for later in STAGE_NAMES:
                if stage.NAME in _inputs(later, cfg):
                    StageStore(run_dir, later).wipe()
        if store.is_complete(key):
            manifest = store.manifest()
            if stage.NAME in wanted:
                log.info("%s: already complete in %s (%s records); nothing to do", stage.NAME, store.path, manifest["records_out"])
            results.append(StageResult(stage.NAME, manifest, ran=False))
        else:
            upstream = StageStore(run_dir, stage.INPUT) if stage.INPUT else None
            results.append(StageResult(stage.NAME, _run_stage(stage, cfg, store, upstream, key, stage_settings, upstream_key), ran=True))
    return results


def _run_stage(stage: ModuleType, cfg: CrocoConfig, store: StageStore, upstream: StageStore | None, key: str, settings: dict, upstream_key: str) -> dict:
    # Stages whose shards are named by their own content (arena answers) keep them across key changes.
    store.open(key, settings, keep_data=getattr(stage, "KEEPS_SHARDS", False))
    started = time.perf_counter()
    report = stage.run(cfg, store, upstream)
    manifest = store.finish({**report, "upstream_key": upstream_key, "wall_s": round(time.perf_counter() - started, 2), "versions": _versions()})
    log.info(summary_line(stage.NAME, manifest))
    return manifest


def summary_line(name: str, manifest: dict[str, Any]) -> str:
    skipped = manifest.get("skipped") or {}
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
    line = f"{name}: {manifest['records_out']} records out of {manifest['records_in']} in, {sum(skipped.values())} skipped"
    line += f" ({reasons})" if reasons else ""
    line += f", {manifest['wall_s']:.1f} s"
    rates = manifest.get("throughput") or {}
    if rates:
        line += f", {rates['samples_per_s']:.2f} samples/s, {rates['tokens_per_s']:.1f} tokens/s"
    return line


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("croco", "torch", "transformers", "datasets", "pyarrow", "peft", "trl", "openai"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions
