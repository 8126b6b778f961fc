"""Runs stages in order over the run store, skipping what is finished and redoing what changed.

A stage's key hashes its settings (see each stage's `settings`) with the key of the stage
before it, so changing a setting invalidates that stage and every stage after it.
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
from croco.stages import generate, pair, prompts, score
from croco.fileio import stable_hash
from croco.store import StageStore

log = logging.getLogger("croco")

STAGES: list[ModuleType] = [prompts, generate, score, pair]
STAGE_NAMES = [stage.NAME for stage in STAGES]


@dataclass
class StageResult:
    name: str
    manifest: dict[str, Any]
    ran: bool


def run_pipeline(cfg: CrocoConfig, only: list[str] | None = None, force: bool = False) -> list[StageResult]:
    """Run the named stages (all by default); stages before them must already be complete."""
    wanted = set(only or STAGE_NAMES)
    last = max(STAGE_NAMES.index(name) for name in wanted)
    run_dir = Path(cfg.run_dir)
    results: list[StageResult] = []
    upstream_key, upstream_store = "", None
    for stage in STAGES[: last + 1]:
        store = StageStore(run_dir, stage.NAME)
        stage_settings = stage.settings(cfg)
        key = stable_hash({"settings": stage_settings, "upstream": upstream_key})
        if stage.NAME not in wanted:
            if not store.is_complete(key):
                raise CrocoError(
                    f"stage {stage.NAME} has not finished in {run_dir} for this config; run `croco {stage.NAME}` or `croco run` first"
                )
        elif force:
            for later in STAGE_NAMES[STAGE_NAMES.index(stage.NAME) :]:
                StageStore(run_dir, later).wipe()
        if store.is_complete(key):
            manifest = store.manifest()
            if stage.NAME in wanted:
                log.info("%s: already complete in %s (%s records); nothing to do", stage.NAME, store.path, manifest["records_out"])
            results.append(StageResult(stage.NAME, manifest, ran=False))
        else:
            results.append(StageResult(stage.NAME, _run_stage(stage, cfg, store, upstream_store, key, stage_settings, upstream_key), ran=True))
        upstream_key, upstream_store = key, store
    return results


def _run_stage(stage: ModuleType, cfg: CrocoConfig, store: StageStore, upstream: StageStore | None, key: str, settings: dict, upstream_key: str) -> dict:
    store.open(key, settings)
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
    for package in ("croco", "torch", "transformers", "datasets", "pyarrow", "peft", "trl"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions
