"""A unit as a SLURM job: the flow renders `infra/slurm/unit.sbatch`, submits it, records the job id in the unit's
version folder, and waits; the job runs `croco unit` against the same storage root and commits the version.

The job id is written before the wait, so a flow restarted after a crash finds the job still pending or running and
waits on it instead of submitting a second one. A job that ended without a commit (its flow was gone meanwhile) is
followed by a new job, which resumes from the shards the first one finished.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shlex
import threading
import time
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from croco.caching import Work, intact, run_here
from croco.config import CrocoConfig, SlurmConfig
from croco.errors import CrocoError
from croco.execution import slurm
from croco.plan import Unit
from croco.storage import COMMIT_ONLY, ShardsMissing, Storage, Version, storage_of

log = logging.getLogger("croco")

JOB_RECORD = "job.json"  # in the unit's version folder: which job is computing it
JOBS = "_jobs"  # default job folder under a local storage root (`_` keeps it out of the versions)
BASIC_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")  # what any program expects to find
LOG_TAIL_LINES = 40
USER_ERROR_EXIT = "2"  # `croco unit`'s exit status for a CrocoError: the config or the inputs, not the node


class JobFailed(Exception):
    """A job ended without committing for a reason a new job may not meet (time limit, node failure, preemption,
    out of memory, a crash): Prefect retries the task, and the new job resumes from the finished shards."""


TRAINING_STAGES = ("sft", "dpo")
SHARDED_STAGES = ("generate", "score", "arena")  # the stages that can run as job arrays (execution.slurm.array_tasks)


@dataclass(frozen=True)
class Array:
    """A unit as a job array: `shares` tasks in all, of which `tasks` (those with unfinished shards) are submitted."""

    shares: int
    tasks: list[int]
    throttle: int | None = None

    @property
    def spec(self) -> str:
        """sbatch's `--array` value, runs of task indices as ranges: [0, 1, 2, 5] with throttle 2 -> `0-2,5%2`."""
        runs: list[list[int]] = []
        for task in self.tasks:
            if runs and task == runs[-1][-1] + 1:
                runs[-1].append(task)
            else:
                runs.append([task])
        ranges = ",".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)
        return ranges + (f"%{self.throttle}" if self.throttle else "")


def render_script(cfg: CrocoConfig, unit: Unit, config_path: Path, array: Array | None = None) -> str:
    """The job script of one unit: the `#SBATCH` lines from the stage's settings, then `croco unit` (under the
    container prefix, if any) with every value shell-quoted; for an array, each task does its share of the shards."""
    settings = cfg.execution.for_stage(unit.stage).slurm
    argv = [*settings.container, *_croco(cfg, unit.stage, settings), "unit", unit.stage, unit.language, unit.key]
    argv += ["--model", unit.model] if unit.model else []
    argv += ["--config", str(config_path)]
    argv += ["--shares", str(array.shares)] if array else []
    return _template().render(
        slurm=settings,
        job_name=re.sub(r"[^A-Za-z0-9._-]", "_", f"croco-{unit.run_name}"),
        unit_id=unit.id,
        array=array.spec if array else None,
        argv=argv,
    )


def _croco(cfg: CrocoConfig, stage: str, settings: SlurmConfig) -> list[str]:
    """How the job starts croco: a training unit on several GPUs under `accelerate launch` (one process per GPU, the
    config `sft.distributed` / `dpo.distributed` names), everything else as `execution.slurm.croco` says."""
    if stage in TRAINING_STAGES and settings.gpus_per_node > 1:
        from croco.distributed import launcher  # here: it loads torch

        return [*launcher(cfg, stage, settings.gpus_per_node), "-m", "croco.cli"]
    return settings.croco


@functools.cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    environment.filters["q"] = lambda value: shlex.quote(str(value))
    return environment.from_string(resources.files("croco.infra").joinpath("slurm/unit.sbatch").read_text())


def job_environment(cfg: CrocoConfig, settings: SlurmConfig) -> dict[str, str]:
    """What the job gets (`sbatch --export`): the basics, croco's own CROCO_* settings, the API keys the config names,
    the S3 credentials for an s3:// root, and the configured variables. No PREFECT_* variable: a job never talks to
    the Prefect API."""
    storage = storage_of(cfg)
    keys = [e.api_key_env for e in (cfg.generate.engine, cfg.score.engine, cfg.arena.engine, cfg.judge.engine)]
    keys.append(cfg.euroeval.api_key_env)
    wanted = {*BASIC_ENV, *(k for k in keys if k)}
    env = {
        name: value
        for name, value in os.environ.items()
        if name in wanted or name.startswith("CROCO_") or (not storage.local and name.startswith("AWS_"))
    }
    return {**env, **settings.env}


class SlurmBackend:
    def run(self, cfg: CrocoConfig, unit: Unit, work: Work) -> dict[str, Any]:
        storage = storage_of(cfg)
        version = storage.version(unit.stage, unit.language, unit.key, writing=True)
        done = intact(version)
        if done is not None:
            return done
        recorded = _recorded_job(version)
        if recorded:
            log.info("%s: waiting on its SLURM job %s, submitted by an earlier flow run", unit.id, recorded["job_id"])
            try:
                statuses = _wait(cfg, recorded["job_id"])
            except slurm.UnknownJob as unknown:
                raise CrocoError(
                    f"{unit.id}: {unknown} It is named in {version.uri}/{JOB_RECORD}: if the job runs on another "
                    "cluster, run the flow where that cluster's commands answer; if it is gone, delete that file to "
                    "submit a new job."
                ) from None
            if version.committed():
                return version.committed_manifest()
            if "shares" not in recorded:  # an array's version is committed by the flow, below
                log.warning(
                    "%s: SLURM job %s ended %s without committing; submitting a new job, which resumes its shards",
                    unit.id,
                    recorded["job_id"],
                    _states(statuses),
                )
        settings = cfg.execution.for_stage(unit.stage).slurm
        if unit.stage in SHARDED_STAGES and settings.array_tasks > 1:
            return _run_array(cfg, unit, work, storage, version)
        job = _submit(cfg, unit, storage, version)
        statuses = _wait(cfg, job["job_id"])
        if {s.state for s in statuses} == {"COMPLETED"} and version.committed():
            return version.committed_manifest()
        raise _failure(unit, job, statuses)


def _run_array(cfg: CrocoConfig, unit: Unit, work: Work, storage: Storage, version: Version) -> dict[str, Any]:
    """The unit as a job array over the shards not yet finished, then its commit here: one writer for the manifest
    (this process holds the unit's lease), and no model loads here, for every shard is done by then."""
    settings = cfg.execution.for_stage(unit.stage).slurm
    try:
        return run_here(cfg, unit, work, COMMIT_ONLY)  # every shard done already: an array that ended meanwhile
    except ShardsMissing as missing:
        shares = min(settings.array_tasks, missing.total)
        array = Array(shares, sorted({position % shares for position in missing.missing}), settings.array_throttle)
    job = _submit(cfg, unit, storage, version, array)
    statuses = _wait(cfg, job["job_id"])
    try:
        return run_here(cfg, unit, work, COMMIT_ONLY)
    except ShardsMissing as missing:
        log.warning("%s: %s after job array %s", unit.id, missing, job["job_id"])
        raise _failure(unit, job, statuses) from None


def _job_folder(cfg: CrocoConfig, unit: Unit, storage: Storage) -> Path:
    folder = cfg.execution.for_stage(unit.stage).slurm.job_folder
    if folder is None:
        if not storage.local:
            raise CrocoError(
                f"execution.slurm.job_folder is not set and storage.root {storage.uri} is not a shared folder; "
                "name a folder on the cluster's shared file system for the job scripts and logs"
            )
        folder = f"{storage.root}/{JOBS}"
    return Path(folder).resolve() / unit.version_path


def _submit(cfg: CrocoConfig, unit: Unit, storage: Storage, version: Version, array: Array | None = None) -> dict:
    if cfg.storage.credentials_block:
        raise CrocoError(
            "storage.credentials_block is read from the Prefect API, which a SLURM job never reads; give the flow's "
            "environment AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead: the job gets them"
        )
    settings = cfg.execution.for_stage(unit.stage).slurm
    folder = _job_folder(cfg, unit, storage)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yaml"
    # The config as the flow resolved it: the storage root absolute, the cluster profile already merged in.
    job_config = cfg.model_dump(mode="json", exclude={"execution": {"cluster"}})
    job_config["storage"]["root"] = storage.uri
    config_path.write_text(yaml.safe_dump(job_config, sort_keys=False, allow_unicode=True))
    script = folder / "unit.sbatch"
    script.write_text(render_script(cfg, unit, config_path, array))
    # An array task's log is named by the array's id and its index, as the watcher names the task: 123_4.log.
    output = ["--output", str(folder / ("%A_%a.log" if array else "%j.log"))]
    export = job_environment(cfg, settings)
    _preflight_once(script, export, output)
    job_id = slurm.submit(script, export=export, extra_args=output)
    job = {"job_id": job_id, "script": str(script), "submitted_at": time.time()}
    if array:
        job |= {"shares": array.shares, "tasks": array.tasks}
    storage.put(f"{version.path}/{JOB_RECORD}", json.dumps(job).encode())
    tasks = f" (array tasks {array.spec} of {array.shares})" if array else ""
    log.info("%s: SLURM job %s submitted%s; logs in %s", unit.id, job_id, tasks, folder)
    return job


def _preflight_once(script: Path, export: dict[str, str], extra_args: list[str]) -> None:
    """`sbatch --test-only` before a flow run's first job of each shape (its #SBATCH lines but the name): a setting
    sbatch refuses fails the unit with sbatch's own words before anything is queued."""
    from prefect.runtime import flow_run

    lines = script.read_text().splitlines()
    shape = (flow_run.id, "\n".join(line for line in lines if line.startswith("#SBATCH") and "--job-name" not in line))
    with _lock:
        if shape in _tested:
            return
        _tested.add(shape)
    try:
        slurm.preflight(script, export=export, extra_args=extra_args)
    except slurm.SlurmError:
        with _lock:
            _tested.discard(shape)
        raise


def _recorded_job(version: Version) -> dict[str, Any] | None:
    try:
        return json.loads(version.storage.fs.cat_file(f"{version.path}/{JOB_RECORD}"))
    except FileNotFoundError:
        return None


_lock = threading.Lock()
# One watcher per process (per polling settings, the section's own): it polls for all of the flow's jobs at once.
_watchers: dict[tuple[float, float, float], slurm.JobWatcher] = {}
_waiting: set[str] = set()  # the jobs this process's units are waiting on now
_tested: set[tuple[str | None, str]] = set()  # (flow run, script shape) pairs that passed `sbatch --test-only`


def _watcher(cfg: CrocoConfig) -> slurm.JobWatcher:
    settings = cfg.execution.slurm
    key = (settings.poll_min_s, settings.poll_max_s, settings.unknown_job_s)
    with _lock:
        if key not in _watchers:
            _watchers[key] = slurm.JobWatcher(*key)
        return _watchers[key]


def _wait(cfg: CrocoConfig, job_id: str) -> list[slurm.JobStatus]:
    """The job's final status. A flow interrupted while it waits (cancelled, Ctrl-C) cancels the job: nobody waits
    on it any more. A flow killed outright leaves it running, and its restart waits on it again."""
    with _lock:
        _waiting.add(job_id)
    try:
        return _watcher(cfg).wait(job_id)
    except BaseException as stop:
        if not isinstance(stop, Exception):  # KeyboardInterrupt, Prefect's TerminationSignal
            log.warning("cancelling SLURM job %s: the flow run waiting on it was stopped", job_id)
            slurm.cancel([job_id])
        raise
    finally:
        with _lock:
            _waiting.discard(job_id)


def cancel_waiting_jobs() -> None:
    """Cancel every job this process's units are waiting on, for a flow run being cancelled while its units wait in
    worker threads: a signal reaches only the main thread, and Prefect's thread pool neither interrupts its workers
    nor lets the flow end before they return. Each waiting unit then fails as cancelled (not retried)."""
    with _lock:
        jobs = sorted(_waiting)
    if jobs:
        log.warning("cancelling SLURM jobs %s: the flow run waiting on them is being cancelled", ", ".join(jobs))
        slurm.cancel(jobs)


def _states(statuses: list[slurm.JobStatus]) -> str:
    return ", ".join(sorted({s.state for s in statuses}))


def _failure(unit: Unit, job: dict[str, Any], statuses: list[slurm.JobStatus]) -> Exception:
    """Why the job (or an array's tasks) left the version uncommitted, with the end of the first failed task's log:
    a CrocoError (not retried) for a cancellation or an error in the config, else JobFailed (retried)."""
    states = {s.state for s in statuses}
    failed = next((s for s in statuses if s.state != "COMPLETED"), statuses[0])
    job_id, path = job["job_id"], Path(job["script"]).with_name(f"{failed.job_id}.log")
    tail = _log_tail(path)
    if "CANCELLED" in states:
        return CrocoError(
            f"{unit.id}: SLURM job {job_id} was cancelled (scancel, or an administrator); run the flow again to "
            f"submit it again. Its log {path} ends:\n{tail}"
        )
    if any(s.exit_code.split(":")[0] == USER_ERROR_EXIT for s in statuses if s.state == "FAILED"):
        return CrocoError(f"{unit.id}: SLURM job {job_id} stopped on an error in the config or its inputs:\n{tail}")
    log.warning("%s: SLURM job %s ended %s; the end of its log %s:\n%s", unit.id, job_id, _states(statuses), path, tail)
    return JobFailed(
        f"{unit.id}: SLURM job {job_id} ended {_states(statuses)} without finishing its version; a retry submits a "
        f"new job that resumes from the finished shards. The log {path} ends:\n{tail}"
    )


def _log_tail(path: Path) -> str:
    try:
        with path.open(errors="replace") as handle:
            return "".join(deque(handle, LOG_TAIL_LINES)).rstrip() or "(empty)"
    except FileNotFoundError:
        return f"(no log at {path}: the job never started, or the job folder is not shared with the node)"
