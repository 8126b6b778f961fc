"""What waiting on SLURM costs, on the one-node test cluster (sudo infra/slurm/setup-test-cluster.sh first).

    .venv/bin/python benchmarks/bench_slurm.py [--pending 50] [--window 60]

(a) Overhead: a job that sleeps S seconds, submitted and waited on with `JobWatcher` (default 1-30 s back-off,
and a fixed 1 s interval); wall time of submit + wait against the job's own run time from sacct (ElapsedRaw,
whole seconds). Goal: at most the poll interval in effect when the job ended, plus 2 s.
(b) Scheduler calls with --pending held jobs (sbatch --hold) waited on by one thread each for --window seconds.
Goal: at most 2 calls per tick, whatever the number of jobs.

Measured here (2026-12-05, two runs, 2 shared cores): (a) overhead 1.1 s for 2 s and 30 s jobs, 5.1-6.1 s for a 10 s
job that ended inside an 8 s back-off interval (goal 10 s), 1.1 s for 2 s and 10 s jobs at a fixed 1 s interval;
(b) 50 pending jobs for 60 s: 7 calls in 7 ticks with the default back-off, 61 calls in 61 ticks at a fixed 1 s
(1.00 call per tick: pending jobs need no sacct).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from croco.execution.slurm import JobWatcher, accounting_field, cancel, submit


class TimedWatcher(JobWatcher):
    """A JobWatcher that notes when each tick ran, so the interval in effect at a job's end is known."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tick_times: list[float] = []

    def _tick(self, ids):
        self.tick_times.append(time.monotonic())
        return super()._tick(ids)


def overhead(folder: Path, seconds: int, watcher: TimedWatcher) -> None:
    script = folder / f"sleep{seconds}.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --output=/dev/null\nsleep {seconds}\n")
    began = time.monotonic()
    job_id = submit(script, export={})
    [status] = watcher.wait(job_id, timeout_s=600)
    wall = time.monotonic() - began
    run_time = int(accounting_field(job_id, "ElapsedRaw"))
    ticks = watcher.tick_times
    interval = ticks[-1] - ticks[-2] if len(ticks) > 1 else 0.0
    print(
        f"  sleep {seconds:>2} s  {status.state:<9} wall {wall:5.1f} s  run {run_time:>2} s  "
        f"overhead {wall - run_time:4.1f} s  (interval in effect {interval:4.1f} s; goal <= {interval + 2:4.1f} s)"
    )


def calls_with_pending(folder: Path, pending: int, window: float, watcher: JobWatcher) -> None:
    script = folder / "held.sh"
    script.write_text("#!/bin/bash\n#SBATCH --output=/dev/null\ntrue\n")
    job_ids = [submit(script, export={}, extra_args=["--hold"]) for _ in range(pending)]
    try:
        waiters = [threading.Thread(target=wait_until_timeout, args=(watcher, j, window)) for j in job_ids]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join()
    finally:
        cancel(job_ids)
    print(
        f"  {pending} pending, min {watcher.min_interval_s:g} s max {watcher.max_interval_s:g} s: "
        f"{watcher.calls} calls in {window:g} s = {watcher.calls * 60 / window:.1f} per minute, "
        f"{watcher.ticks} ticks, {watcher.calls / watcher.ticks:.2f} calls per tick (goal <= 2)"
    )


def wait_until_timeout(watcher: JobWatcher, job_id: str, window: float) -> None:
    try:
        watcher.wait(job_id, timeout_s=window)
    except TimeoutError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=50)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        print("(a) submit + wait against the job's own run time")
        for seconds in (2, 10, 30):
            overhead(Path(folder), seconds, TimedWatcher())
        for seconds in (2, 10):
            overhead(Path(folder), seconds, TimedWatcher(min_interval_s=1, max_interval_s=1))
        print(f"(b) scheduler calls with {args.pending} jobs pending")
        calls_with_pending(Path(folder), args.pending, args.window, JobWatcher())
        calls_with_pending(Path(folder), args.pending, args.window, JobWatcher(min_interval_s=1, max_interval_s=1))


if __name__ == "__main__":
    main()
