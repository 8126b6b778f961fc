"""Prefect tasks keyed on croco's own unit keys, with the artifact checked before a cache hit is trusted.

Prefect's default cache policy includes the flow run id, so nothing would carry across runs;
here a task's cache key is the unit's key (see croco.plan). Prefect alone would also hand on a
cached reference to data that is gone, so the policy first checks the unit's version, reading
only: a version that is missing, truncated or corrupt (`storage.verify`) drops its cache record
and the task runs again. The task, holding the unit's lock, takes back what is broken and resumes
from the shards that are still good. The cache records live beside the versions
(`<root>/_prefect/`) for a local root, so every storage root has its own.

Two flow runs of one config never compute one key twice: the policy is SERIALIZABLE, so the
second waits on the first's lock and then finds its record. The locks are leases in the storage root
(croco.leases): a lock left by a killed process is free once its lease expires, on any machine.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from croco.config import CrocoConfig
from croco.embedded import cache_dir
from croco.errors import CrocoError
from croco.fileio import remembered_sha256, stable_hash
from croco.leases import LeaseLockManager
from croco.plan import Unit, library_versions
from croco.storage import Share, Storage, Version, storage_of
from croco.summaries import summary_line

log = logging.getLogger("croco")

RECORDS = "_prefect"  # cache records under the storage root


def record_key(unit: Unit) -> str:
    return f"{unit.stage}-{unit.language}-{unit.key}"


class InputChanged(Exception):
    """An input was recomputed with other data while a unit read it; a retry starts the unit over from the new data."""


@dataclass
class UnitCachePolicy(CachePolicy):
    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str:
        """The unit's key. Prefect takes the unit's lock only after this returns, so nothing here changes a version:
        a version that cannot be trusted only drops its cache record, and the task repairs it under the lock."""
        cfg: CrocoConfig = inputs["cfg"]
        unit: Unit = inputs["unit"]
        storage = storage_of(cfg)
        if storage.version(unit.stage, unit.language, unit.key).problems():
            (result_storage(storage) / record_key(unit)).unlink(missing_ok=True)  # points at data that is gone: no hit
        return record_key(unit)


# The lock manager is per storage root: `with_execution` adds it.
UNIT_CACHE = UnitCachePolicy().configure(isolation_level="SERIALIZABLE")


def result_storage(storage: Storage) -> Path:
    """Where Prefect keeps the cache records: beside the versions for a local root; for a remote root, in
    the local cache (Prefect 3 takes only a saved block for remote result storage, and a saved block
    would put the credentials on the server). A machine without a record finds the committed version
    and hands it on without redoing it."""
    if storage.local:
        return Path(storage.root) / RECORDS
    return cache_dir() / "prefect-records" / stable_hash(storage.uri)


def _retry_unless_bad_input(task, task_run, state) -> bool:
    """A CrocoError is the user's input or config: retrying cannot fix it."""
    return not isinstance(state.result(raise_on_failure=False), CrocoError)


Work = Callable[[CrocoConfig, Unit, Version, dict[str, Version]], dict[str, Any]]


def stage_task(work: Work):
    """The Prefect task of one stage: brings one unit's version to committed where the config's `execution` says
    (this process, or a SLURM job running `croco unit`), publishes its summary, and returns a small reference
    (never the data). The stage's `work` stays reachable as the task's `.work`, for `croco unit`."""
    name = work.__module__.rsplit(".", 1)[-1]

    # Not functools.wraps: Prefect reads the signature, and it must be (cfg, unit), not the work's.
    @task(
        name=name,
        description=work.__doc__,
        task_run_name="{unit.run_name}",
        cache_policy=UNIT_CACHE,
        persist_result=True,
        result_serializer="json",
        retry_condition_fn=_retry_unless_bad_input,
    )
    def run_unit(cfg: CrocoConfig, unit: Unit) -> dict[str, Any]:
        from croco.execution import backend_for
        from croco.summaries import publish_summary

        manifest = backend_for(cfg, unit.stage).run(cfg, unit, work)
        publish_summary(unit, manifest, cfg.name)
        return reference(manifest)

    run_unit.work = work
    return run_unit


def run_here(cfg: CrocoConfig, unit: Unit, work: Work, share: Share | None = None) -> dict[str, Any]:
    """Do one unit's work in this process and commit its version; returns its manifest. Resumes from the shards
    a killed attempt finished; reads nothing from Prefect, so a SLURM job runs exactly this (`croco unit`). With a
    `share` (one task of a job array), only its shards and no commit ({} returned); with COMMIT_ONLY, no shard."""
    storage = storage_of(cfg)
    out = storage.version(unit.stage, unit.language, unit.key, writing=True)
    out.share = share
    done = intact(out)
    # Committed and intact: another machine's cache record, or a run that finished while this one waited.
    if done is not None:
        log.info(summary_line(unit, done, reused=True))
        return done
    inputs = {unit_id: storage.version_at(path) for unit_id, path in unit.inputs}
    # Read before the work: an input recomputed while this unit reads it is caught below.
    lineage = {
        unit_id: {"version": v.relative, "uri": v.uri, "digest": v.committed_manifest()["digest"]}
        for unit_id, v in inputs.items()
    }
    out.start(lineage)
    started = time.perf_counter()
    report = work(cfg, unit, out, inputs)
    for unit_id, version in inputs.items():
        if version.committed_manifest()["digest"] != lineage[unit_id]["digest"]:
            raise InputChanged(
                f"{version.uri} was recomputed with other data while {unit.id} read it; run again to redo {unit.id} from the new data"
            )
    if out.array_task:
        out.flush()
        return {}
    manifest = out.commit(
        {
            "stage": unit.stage,
            "language": unit.language,
            "model": unit.model,
            "key": unit.key,
            "settings": unit.settings,
            "libraries": library_versions(),  # in no key: see plan.library_versions
            **container_image(),
            "lineage": lineage,
            "wall_s": round(time.perf_counter() - started, 2),
            **report,
        }
    )
    log.info(summary_line(unit, manifest))
    return manifest


def container_image() -> dict[str, Any]:
    """The Apptainer/Singularity image this process runs in (path and sha256), for the manifest; nothing outside one."""
    path = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    if not path or not Path(path).is_file():  # a sandbox folder, or no container
        return {"image": {"path": path}} if path else {}
    return {"image": {"path": path, "sha256": remembered_sha256([Path(path)])[Path(path)]}}


def intact(version: Version) -> dict[str, Any] | None:
    """Under the unit's lock: the manifest of a committed version that can be trusted; otherwise None, after
    removing a version made from inputs that changed since, or taking back the commit of a broken one."""
    problems = version.problems()
    if not problems:
        return version.manifest()
    stale = version.stale_inputs()
    if stale:
        version.discard("; ".join(stale[:3]))
    elif problems != ["not committed"]:
        version.uncommit("; ".join(problems[:3]))
    return None


def reference(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a task hands on: where its version is and how big it is."""
    return {
        "uri": manifest["uri"],
        "version": manifest["version"],
        "key": manifest["key"],
        "records_out": manifest.get("records_out"),
        "skipped": sum((manifest.get("skipped") or {}).values()),
    }


def with_execution(task_, cfg: CrocoConfig, storage: Storage):
    """The task with this config's retries, and this storage root's cache records and unit leases."""
    retry = cfg.retries.get(task_.name, cfg.retries.get("default"))
    delays = exponential_backoff(backoff_factor=retry.delay_s)(retry.attempts) if retry and retry.attempts else 0
    return task_.with_options(
        retries=retry.attempts if retry else 0,
        retry_delay_seconds=delays,
        result_storage=result_storage(storage),
        cache_policy=UNIT_CACHE.configure(lock_manager=LeaseLockManager(storage)),
    )


def local_models_tag() -> str:
    """Per host: a team's Prefect server serves many machines, and only units on one machine compete for it."""
    return f"croco-local-models-{socket.gethostname()}"


def limit_local_models(cfg: CrocoConfig) -> None:
    """How many model-loading units run at once in this process while others run as cluster jobs: Prefect's tag
    concurrency limit for this host."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(f"tag:{local_models_tag()}", cfg.execution.local_parallel)
