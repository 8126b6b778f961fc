"""The SLURM scheduler from the flow's side: submit a job script, cancel jobs, and wait on every job of the flow
with one polling thread that asks the scheduler at most twice per tick, however many jobs there are.

Plain subprocess calls with argv lists (no shell); a failed command raises an error quoting its stderr.
Measured on the one-node test cluster (22.05): a new job is missing from `sacct` for up to ~4 s but is in
`squeue` at once, so each tick asks `squeue` first and `sacct` only about the jobs that left the queue.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from croco.errors import CrocoError
from croco.redaction import redact

log = logging.getLogger(__name__)

TERMINAL = frozenset(
    {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL"}
    | {"DEADLINE", "REVOKED"}
)
RETRYABLE = frozenset({"TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "FAILED", "BOOT_FAIL", "DEADLINE"})
COMMAND_TIMEOUT_S = 60  # a scheduler command that hangs this long means the controller is unreachable
GIVE_UP_AFTER_S = 300  # polling that fails this long fails the waiters (a controller restart takes seconds)
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# sbatch's words for a controller it could not reach: the only refusals a later retry may get past.
_UNREACHABLE = re.compile(r"unable to contact|timed out|temporarily unavailable|zero bytes", re.IGNORECASE)


class SlurmError(RuntimeError):
    """A scheduler command failed (controller unreachable, a command timed out): a retry may succeed."""

    def __init__(self, message: str):
        super().__init__(redact(message))


class JobRefused(CrocoError, SlurmError):
    """sbatch refused the job (partition, account, gres, time limit...): the configuration must change."""


class UnknownJob(CrocoError):
    """Neither squeue nor sacct knows the job: purged from the accounting database, or of another cluster."""


@dataclass(frozen=True)
class JobStatus:
    job_id: str  # "123", or "123_4" for an array task
    state: str  # SLURM base state: PENDING, RUNNING, COMPLETED, TIMEOUT, CANCELLED, FAILED, ...
    exit_code: str = ""  # sacct ExitCode, e.g. "0:0"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def submit(script: Path, *, export: Mapping[str, str], extra_args: Sequence[str] = ()) -> str:
    """sbatch the script; the job's environment is exactly `export` (plus SLURM's own variables). The values
    travel in sbatch's own environment, so they never appear on a command line (`ps` shows every argv)."""
    result = _run(_sbatch("--parsable", script, export, extra_args), env={**os.environ, **export})
    if result.returncode != 0:
        raise _refusal("sbatch", script, result.stderr)
    return result.stdout.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"


def preflight(script: Path, *, export: Mapping[str, str], extra_args: Sequence[str] = ()) -> None:
    """`sbatch --test-only` of the script (nothing is queued) as a prefect-shell ShellOperation, so sbatch's answer
    is in the run's log. ShellOperation's own error lacks stderr: stderr goes to stdout, which the error quotes."""
    from prefect_shell import ShellOperation

    command = shlex.join(_sbatch("--test-only", script, export, extra_args)) + " 2>&1"
    with ShellOperation(commands=[command], env=dict(export), stream_output=True) as operation:
        process = operation.trigger()
        try:
            process.wait_for_completion()
        except RuntimeError:
            raise _refusal("sbatch --test-only", script, "\n".join(process.fetch_result())) from None


def _sbatch(mode: str, script: Path, export: Mapping[str, str], extra_args: Sequence[str]) -> list[str]:
    bad = [name for name in export if not _VARIABLE_NAME.fullmatch(name)]
    if bad:
        raise CrocoError(f"Environment variable names {bad} for the SLURM job of {script} are not valid names.")
    return ["sbatch", mode, "--export=" + (",".join(sorted(export)) or "NONE"), *extra_args, str(script)]


def _refusal(command: str, script: Path, stderr: str) -> SlurmError:
    reason = "; ".join(line.strip() for line in stderr.splitlines() if line.strip()).rstrip(".") or "no error output"
    if _UNREACHABLE.search(reason):
        return SlurmError(f"{command} could not reach the controller for {script}: {reason}.")
    return JobRefused(f"{command} refused {script}: {reason}; check the SLURM settings the script was rendered from.")


def cancel(job_ids: Iterable[str]) -> None:
    ids = list(job_ids)
    if ids:
        result = _run(["scancel", *ids])
        if result.returncode != 0:
            raise SlurmError(f"scancel {' '.join(ids)} failed: {_last_line(result.stderr)}.")


def accounting_field(job_id: str, column: str, wait_s: float = 30.0) -> str:
    """One sacct column of the job (e.g. ElapsedRaw, SubmitLine), waiting up to wait_s for the accounting database
    to have it: some fields reach it seconds after the job has ended. "" if it never does."""
    deadline = time.monotonic() + wait_s
    while True:
        result = _run(["sacct", "-X", "-P", "-n", "-j", job_id, "-o", column])
        if result.returncode != 0:
            raise SlurmError(f"sacct failed for job {job_id}: {_last_line(result.stderr)}.")
        if result.stdout.strip() or time.monotonic() > deadline:
            return result.stdout.strip()
        time.sleep(0.5)


class JobWatcher:
    """Waits on SLURM jobs for any number of threads with one polling thread: each tick runs one `squeue` for
    all watched jobs, then one `sacct` for those no longer queued; the interval doubles from min to max while
    nothing changes and drops back to min on a change or a new job."""

    def __init__(self, min_interval_s: float = 1.0, max_interval_s: float = 30.0, unknown_after_s: float = 60.0):
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        self.unknown_after_s = unknown_after_s  # a job neither command knows this long after its wait began fails it
        self.calls = 0  # scheduler commands run so far
        self.ticks = 0
        self._lock = threading.Condition()
        self._watches: dict[str, _Watch] = {}
        self._thread: threading.Thread | None = None
        self._new_watch = False  # set by wait(): the poller shortens its sleep to the minimum interval

    def wait(self, job_id: str, timeout_s: float | None = None) -> list[JobStatus]:
        """Block until the job (every task of an array) is terminal; one status per task, in task order. A job that
        neither squeue nor sacct has shown `unknown_after_s` after the wait began raises UnknownJob."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            watch = self._watches.setdefault(job_id, _Watch())
            watch.waiters += 1
            self._new_watch = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._poll_forever, name="slurm-watcher", daemon=True)
                self._thread.start()
            self._lock.notify_all()
            try:
                while watch.result is None and watch.error is None:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"SLURM job {job_id} did not finish within {timeout_s:g} s.")
                    self._lock.wait(left)
                if watch.error is not None:
                    raise watch.error
                return watch.result
            finally:
                watch.waiters -= 1
                if watch.waiters == 0 and self._watches.get(job_id) is watch:
                    del self._watches[job_id]

    def _poll_forever(self) -> None:
        interval = self.min_interval_s
        failing_since = None
        while True:
            with self._lock:
                while not self._watches:
                    self._lock.wait()
                ids = sorted(self._watches)
                self._new_watch = False
            started = time.monotonic()
            seen = None
            try:
                seen = self._tick(ids)
                failing_since = None
            except SlurmError as error:
                failing_since = failing_since or time.monotonic()
                log.warning("Polling SLURM failed (retrying): %s", error)
                if time.monotonic() - failing_since > GIVE_UP_AFTER_S:
                    self._fail_all(ids, error)
            except Exception as error:  # output this code cannot read: the waiters hear of it, not a dead thread
                self._fail_all(ids, error)
            with self._lock:
                changed = False
                for job_id, statuses in (seen or {}).items():
                    watch = self._watches.get(job_id)
                    if watch is None:  # its waiters gave up meanwhile
                        continue
                    changed |= watch.merge(job_id, statuses)
                    if watch.result is not None:
                        del self._watches[job_id]
                if seen is not None:
                    self._fail_unknown(ids, seen, started)
                self._lock.notify_all()
                interval = self.min_interval_s if changed else min(2 * interval, self.max_interval_s)
                while True:
                    if self._new_watch:
                        interval = self.min_interval_s
                    left = started + interval - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)

    def _tick(self, ids: list[str]) -> dict[str, list[JobStatus]]:
        """The watched jobs' task statuses: the queued tasks from squeue while a job has any, else every task from
        sacct. A job found in neither (sacct lags behind squeue by seconds) is asked about again next tick."""
        self.ticks += 1
        queued = _rows_by_job(ids, self._query(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(ids)]))
        # squeue's terminal rows are left out: ends (and exit codes) come from sacct, once no task is queued.
        seen = {job_id: active for job_id, rows in queued.items() if (active := [r for r in rows if not r.terminal])}
        left = [job_id for job_id in ids if job_id not in seen]
        if left:
            rows = self._query(["sacct", "-X", "-P", "-n", "-o", "JobID,State,ExitCode", "-j", ",".join(left)])
            seen.update(_rows_by_job(left, rows))
        return seen

    def _query(self, argv: list[str]) -> list[list[str]]:
        """One row of `|`-separated fields per line of squeue/sacct output."""
        self.calls += 1
        result = _run(argv)
        if result.returncode != 0:
            if argv[0] == "squeue" and "Invalid job id" in result.stderr:
                return []  # none of the ids is still known to the controller: they are all in sacct's hands
            raise SlurmError(f"{argv[0]} failed: {_last_line(result.stderr)}.")
        return [line.split("|") for line in result.stdout.splitlines() if line.strip()]

    def _fail_unknown(self, ids: list[str], seen: dict, now: float) -> None:
        """Fail the watches of jobs no command has ever shown since their wait began unknown_after_s ago: a new job
        is in squeue at once, and an ended one stays in sacct until the accounting database is purged."""
        for job_id in ids:
            watch = self._watches.get(job_id)
            if (
                watch is not None
                and job_id not in seen
                and not watch.tasks
                and now - watch.since > self.unknown_after_s
            ):
                watch.error = UnknownJob(
                    f"SLURM job {job_id} is known to neither squeue nor sacct {self.unknown_after_s:g} s after croco "
                    "began waiting on it: the accounting database has purged it, or it belongs to another cluster."
                )
                del self._watches[job_id]

    def _fail_all(self, ids: list[str], error: Exception) -> None:
        with self._lock:
            for job_id in ids:
                if job_id in self._watches:
                    self._watches.pop(job_id).error = error
            self._lock.notify_all()


@dataclass
class _Watch:
    waiters: int = 0
    since: float = field(default_factory=time.monotonic)  # when the first waiter came
    tasks: dict[str, JobStatus] = field(default_factory=dict)  # the latest status of each task seen
    result: list[JobStatus] | None = None  # set once every task is terminal
    error: Exception | None = None  # set when polling cannot go on

    def merge(self, job_id: str, statuses: list[JobStatus]) -> bool:
        """Take a tick's statuses of the job's tasks; True if anything changed. Every task ever seen counts
        until it is terminal: sacct can lack a finished array task for a few seconds."""
        before = dict(self.tasks)
        self.tasks.update((status.job_id, status) for status in statuses)
        if any("_" in task_id for task_id in self.tasks):
            self.tasks.pop(job_id, None)  # sacct can show an array task under the bare array id for a moment
        if all(status.terminal for status in self.tasks.values()):
            self.result = sorted(self.tasks.values(), key=_task_order)
        return self.tasks != before


def _rows_by_job(ids: list[str], rows: list[list[str]]) -> dict[str, list[JobStatus]]:
    """Each output row (array ranges expanded) under the watched id it belongs to; rows of other jobs (sacct
    matches an array task by its own numeric id too) are dropped."""
    wanted = set(ids)
    found: dict[str, list[JobStatus]] = {}
    for fields in rows:
        state = fields[1].split()[0]  # "CANCELLED by 0" -> CANCELLED
        exit_code = fields[2] if len(fields) > 2 else ""
        for task_id in expand_array_id(fields[0]):
            for owner in {task_id, task_id.split("_")[0]} & wanted:
                found.setdefault(owner, []).append(JobStatus(task_id, state, exit_code))
    return found


def expand_array_id(job_id: str) -> list[str]:
    """`4_[1,3-5%2]` -> 4_1, 4_3, 4_4, 4_5 (the `%` throttle dropped); any other id as it is."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if match is None:
        return [job_id]
    base, spec = match.group(1), match.group(2).split("%")[0]
    tasks = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        tasks += [f"{base}_{task}" for task in range(int(first), int(last or first) + 1)]
    return tasks


def _task_order(status: JobStatus) -> tuple[int, ...]:
    return tuple(int(part) for part in status.job_id.split("_") if part.isdigit())


def _run(argv: list[str], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise SlurmError(
            f"{argv[0]} is not on PATH; submit SLURM jobs from a machine with the SLURM commands."
        ) from None
    except subprocess.TimeoutExpired as error:
        raise SlurmError(f"{argv[0]} did not answer within {COMMAND_TIMEOUT_S} s.") from error


def _last_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1].rstrip(".") if lines else "no error output"
