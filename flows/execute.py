"""What every croco flow does: load the config, plan its units, run each unit's task, report.

Each unit's task starts as soon as the units it reads have finished, so languages run side by
side: on a cluster each task is a SLURM job and every ready job is in the queue together; on one
machine two model-loading tasks at once only slow each other down, so in-process units share
`execution.local_parallel` threads (default 1). A unit whose version is committed and
intact is a cache hit and costs a storage listing; a unit left half done by a crash resumes from
its shards.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import fsspec
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner

from croco.caching import limit_local_models, local_models_tag, with_execution
from croco.config import CrocoConfig, load_config, read_yaml
from croco.errors import CrocoError
from croco.execution import runs_here
from croco.fileio import decode_text
from croco.plan import Plan, build_plan, describe, stage_modules
from croco.redaction import redact_value, refuse_credentials
from croco.report import run_folder, show_as_newest, write_report
from croco.runs import LiveRun, completed, timestamp, utc_now
from croco.storage import Storage, storage_of
from croco.summaries import publish_markdown, publish_summary, publish_table

log = logging.getLogger("croco")

# Threads that run or wait on units when some stage runs on a cluster: a thread waiting on a SLURM job costs nothing.
UNIT_THREADS = 64


def load_run_config(
    config: str, overrides: list[str] | None, languages: list[str] | None = None, models: dict[str, str] | None = None
) -> CrocoConfig:
    """The config at a local path or an fsspec URI (s3://...), with overrides, and the flow parameters that
    replace its languages or add models to evaluate (set as values, never re-read as YAML: `no` stays a string).
    A parameter holding a credential is refused, and masked where Prefect stored it (a deployment run's parameters
    are stored before any croco code runs; `croco run` refuses them before creating the run)."""
    try:
        refuse_credentials(
            {"config": [config], "override": list(overrides or []), "model": list((models or {}).values())}
        )
    except CrocoError:
        _mask_stored_parameters()
        raise
    if "://" in config:
        with fsspec.open(config, "rb") as handle:
            raw = read_yaml(decode_text(handle.read(), config))
    else:
        raw = None
    updates: dict = {}
    if languages:
        updates["languages"] = list(languages)
    if models:
        updates["evaluate"] = {"models": {name: {"path": path} for name, path in models.items()}}
    return load_config(config, list(overrides or []), raw=raw, updates=updates)


def _mask_stored_parameters() -> None:
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context and context.flow_run:
        with get_client(sync_client=True) as client:
            client.update_flow_run(context.flow_run.id, parameters=redact_value(context.flow_run.parameters))


def execute(cfg: CrocoConfig, targets: list[str] | None = None) -> dict[str, Any]:
    """Run the units of `targets` (every enabled stage by default) and those they read; write the run record and report."""
    storage = storage_of(cfg)
    plan = build_plan(cfg, targets)
    started = utc_now()
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{_flow_run_id()}"
    record = {
        "run_id": run_id,
        "name": cfg.name,
        "started_at": timestamp(started),
        "languages": cfg.languages,
        "config": redact_value(cfg.model_dump(mode="json")),
        "versions": {unit.id: unit.version_path for unit in plan.units},
        "skipped": plan.skipped,
    }
    with LiveRun(storage, record) as live:  # a failed or interrupted run is recorded as failed
        planned = describe(plan, storage)
        publish_table(planned, f"croco-plan-{cfg.name}", "What this run found cached and what it ran")
        log.info(
            "plan: %d units, %d cached, %d skipped",
            len(plan.units),
            sum(row["state"] == "cached" for row in planned),
            len(plan.skipped),
        )
        for unit_id, why in plan.skipped.items():
            log.warning("%s: skipped: %s", unit_id, why)
        states = run_units(cfg, plan, storage)
        cached = {unit_id: state.name == "Cached" for unit_id, state in states.items()}
        for unit in plan.units:
            if cached[unit.id]:  # a unit that ran has published its summary itself
                publish_summary(unit, storage.version_at(unit.version_path).manifest())
        manifests = {unit.id: storage.version_at(unit.version_path).manifest() for unit in plan.units}
        sections = _evaluation_sections(cfg, plan, storage, run_id)
        report_uri, report = write_report(cfg, plan, storage, manifests, sections, live.record)
        publish_markdown(report, f"croco-report-{cfg.name}", f"croco report for {cfg.name}")
        # Where the bucket keeps object versions, the exact manifest objects this run used (recorded, never relied on).
        object_versions = {unit.id: storage.version_at(unit.version_path).manifest_version_id() for unit in plan.units}
        object_versions = {"manifest_version_ids": object_versions} if any(object_versions.values()) else {}
        live.finish("completed", report=report_uri, **object_versions)
    # A newer run of this config that finished first keeps its report where a person looks first.
    if completed(storage, cfg.name)[0]["run_id"] == run_id:
        show_as_newest(storage, cfg, run_id, report)
    log.info(
        "run %s: %d units ran, %d were cached", run_id, sum(not hit for hit in cached.values()), sum(cached.values())
    )
    return {
        "run_id": run_id,
        "report": report_uri,
        "versions": {unit.id: storage.version_at(unit.version_path).uri for unit in plan.units},
        "cached": cached,
    }


def run_units(cfg: CrocoConfig, plan: Plan, storage: Storage) -> dict[str, State]:
    """Every unit as a task submitted to a Prefect thread-pool task runner, waiting only on the units it reads, so
    independent units (languages, evaluated models) run at the same time. Every unit that can run does; the first
    failure in plan order is raised after the rest have finished.

    In-process units share `execution.local_parallel` threads: the units are submitted in plan order and a pool
    takes them first in, first out, so a unit only ever waits on units already running or done. Where some stage
    runs on a cluster, every ready job is in the queue together (`UNIT_THREADS`), and in-process units that load a
    model share Prefect's tag concurrency limit for this host instead (slower to hand a slot on: a waiting task
    asks again after the server's Retry-After, seconds)."""
    stages = {module.NAME: module for module in stage_modules()}
    on_cluster = not all(runs_here(cfg, stage) for stage in plan.stages())
    if on_cluster:
        limit_local_models(cfg)
    futures: dict[str, PrefectFuture] = {}
    with ThreadPoolTaskRunner(max_workers=UNIT_THREADS if on_cluster else cfg.execution.local_parallel) as runner:
        for unit in plan.units:
            module = stages[unit.stage]
            task_ = with_execution(getattr(module, module.NAME), cfg, storage)
            if on_cluster and module.LOADS_MODEL and runs_here(cfg, unit.stage):
                task_ = task_.with_options(tags={local_models_tag()})
            upstream = [futures[unit_id] for unit_id, _ in unit.inputs]
            futures[unit.id] = runner.submit(task_, {"cfg": cfg, "unit": unit}, wait_for=upstream)
        try:
            wait(list(futures.values()))
        except BaseException:  # the flow run cancelled or stopped: its jobs must not go on (threads cannot see it)
            if on_cluster:
                from croco.execution.slurm_backend import cancel_waiting_jobs

                cancel_waiting_jobs()
            raise
    states = {unit_id: future.state for unit_id, future in futures.items()}
    failed = [unit_id for unit_id, state in states.items() if not state.is_completed()]
    if failed:
        log.error("%d of %d units did not finish: %s", len(failed), len(states), ", ".join(failed))
        states[failed[0]].result()  # raises that unit's error (the others waited on it or failed on their own)
    return states


def _evaluation_sections(cfg: CrocoConfig, plan: Plan, storage: Storage, run_id: str) -> dict[str, str]:
    """Tables computed across languages from the judge, EuroEval and reward audit versions, saved beside the run's
    report."""
    from croco.tasks import euroeval, judge

    folder = run_folder(storage, cfg, run_id)
    sections = {}
    judged = [storage.version_at(u.version_path) for u in plan.of("judge")]
    if judged:
        found = judge.results(cfg, judged)
        storage.put(f"{folder}/judge_results.json", json.dumps(found["rows"], indent=2).encode())
        storage.put(f"{folder}/judge_results.md", found["markdown"].encode())
        storage.put(f"{folder}/win_rates.png", found["plot"])
        publish_markdown(found["markdown"], f"croco-win-rates-{cfg.name}", "Arena win rates against the baseline")
        overall = found["markdown"].split("\n\nPer subcategory:")[0]
        sections["Arena win rates"] = (
            f"{overall}\n\nFull table: [judge_results.md](judge_results.md)\n\n![Arena win rates](win_rates.png)"
        )
    benchmarked = {u.id: storage.version_at(u.version_path) for u in plan.of("euroeval")}
    if benchmarked:
        markdown = "\n".join(euroeval.summarize(cfg, benchmarked)) + "\n"
        storage.put(f"{folder}/euroeval_results.md", markdown.encode())
        publish_markdown(markdown, f"croco-euroeval-{cfg.name}", "EuroEval scores against the baseline")
        sections["EuroEval"] = markdown
    audited = {u.language: storage.version_at(u.version_path) for u in plan.of("audit_score")}
    if audited:
        from croco.tasks import audit_score

        translated = {u.language: storage.version_at(u.version_path) for u in plan.of("audit_translate")}
        found = audit_score.results(cfg, audited, translated)
        storage.put(f"{folder}/reward_audit.json", json.dumps(found["rows"], indent=2).encode())
        storage.put(f"{folder}/reward_audit.md", found["markdown"].encode())
        storage.put(f"{folder}/reward_audit.png", found["plot"])
        publish_markdown(found["markdown"], f"croco-reward-audit-{cfg.name}", "Reward transfer audit per language")
        log.info("reward audit:\n%s", found["markdown"])
        sections["Reward transfer audit"] = f"{found['markdown']}\n![Reward transfer audit](reward_audit.png)"
    return sections


def _flow_run_id() -> str:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id)[:8] if context and context.flow_run else uuid.uuid4().hex[:8]
