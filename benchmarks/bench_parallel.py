"""Units in parallel on the one-node test cluster (sudo infra/slurm/setup-test-cluster.sh first).

    .venv/bin/python benchmarks/bench_parallel.py [--languages en da de]

The demo's prompts, generate for three languages as SLURM jobs (the embedded SmolLM2, 2 prompts x 2 samples each)
while the flow runs here: once as croco runs them (every ready job in the queue together) and once with units one
at a time (the flow's pool cut to one thread), each on a new storage root. Prints the wall time of each run and
whether the generate jobs' runs overlapped (sacct Start/End). Goal: they overlap.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

import croco.flows.execute
from croco.execution.slurm import accounting_field

REPO = Path(__file__).resolve().parents[1]


def config(root: Path, languages: list[str]) -> dict:
    return {
        "name": "bench-parallel",
        "storage": {"root": str(root)},
        "languages": languages,
        "models": {
            "policy": {"path": "embedded:smollm2-135m-instruct"},
            "reward": {"path": "embedded:croco-demo-reward"},
        },
        "data": {"sources": [{"path": "embedded:demo-prompts"}], "subsample": 2},
        "generate": {"num_samples": 2, "max_new_tokens": 32},
        "arena": {"prompts": {"path": "embedded:demo-arena"}},  # planned, not run: only generate is asked for
        "judge": {"kind": "reward"},
        "execution": {
            "cluster": str(REPO / "configs" / "clusters" / "local-test.yaml"),
            "kind": "local",
            # The job starts croco with this interpreter: the venv's bin need not be on PATH.
            "stages": {"generate": {"kind": "slurm", "slurm": {"croco": [sys.executable, "-m", "croco.cli"]}}},
        },
    }


def timed_run(folder: Path, languages: list[str]) -> tuple[float, list[tuple[str, str]]]:
    from croco.flows.pipeline import pipeline

    folder.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config(folder / "store", languages)))
    started = time.perf_counter()
    pipeline(config=str(path), stages=["generate"])
    wall = time.perf_counter() - started
    jobs = []
    for code in languages:
        job = next((folder / "store" / "generate" / code).glob("*/job.json")).read_text()
        job_id = json.loads(job)["job_id"]
        start, end = accounting_field(job_id, "Start,End").split("|")
        jobs.append((start, end))
    return wall, jobs


def overlapped(jobs: list[tuple[str, str]]) -> bool:
    """Whether some two jobs ran at the same time (sacct's whole-second times)."""
    return any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(jobs) for b in jobs[i + 1 :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--languages", nargs="+", default=["en", "da", "de"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        wall, jobs = timed_run(Path(tmp) / "parallel", args.languages)
        croco.flows.execute.UNIT_THREADS = 1  # the same run, one unit at a time
        one_wall, one_jobs = timed_run(Path(tmp) / "one-at-a-time", args.languages)
    for name, seconds, runs in (("in parallel", wall, jobs), ("one at a time", one_wall, one_jobs)):
        print(f"{name:>14}: {seconds:6.1f} s, generate jobs overlapped: {overlapped(runs)}")
        for code, (start, end) in zip(args.languages, runs):
            print(f"{'':>16}{code}: {start} .. {end}")
    print(f"one at a time / in parallel: {one_wall / wall:.2f}x")


if __name__ == "__main__":
    main()
