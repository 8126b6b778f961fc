"""What Prefect costs: the demo as the pipeline flow against the same stage functions called directly.

    .venv/bin/python benchmarks/bench_orchestration.py [CONFIG] [KEY=VALUE ...]

One process, one after the other on fresh storage roots, after a small warm-up run that loads
every model once: (1) every unit of the plan through its
task's plain function (`task.fn`, no Prefect), (2) the pipeline flow, after a temporary Prefect
server is already up (its start-up is printed apart), (3) a fully cached rerun of the flow in a
new `croco run` process, interpreter start included, once with no server configured (it starts
a temporary one) and once against a long-running local server (infra/prefect-server.sh).
Targets: (2) at most 10% more wall time than (1); (3) at most 20 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefect import flow

from croco.config import load_config
from croco.flows.pipeline import pipeline
from croco.plan import build_plan, stage_modules

REPO = Path(__file__).resolve().parents[1]


@flow
def warm_up() -> None:
    """Starts the temporary server that every later flow in this process reuses."""


def direct(config: Path, overrides: list[str]) -> None:
    cfg = load_config(config, overrides)
    tasks = {m.NAME: getattr(m, m.NAME) for m in stage_modules()}
    for unit in build_plan(cfg).units:
        tasks[unit.stage].fn(cfg, unit)


def timed(label: str, work) -> float:
    began = time.perf_counter()
    work()
    seconds = time.perf_counter() - began
    print(f"{label}: {seconds:.1f} s", flush=True)
    return seconds


def croco_run(config: Path, overrides: list[str], env: dict) -> float:
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "croco.cli", "run", str(config), *overrides], env=env, check=True, capture_output=True
    )
    return time.perf_counter() - began


def main() -> None:
    config = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "configs" / "demo.yaml"
    overrides = sys.argv[2:]
    with tempfile.TemporaryDirectory() as tmp:
        load_config(config, overrides)  # validates before any timing
        # Both sides find the models built, converted and in the page cache: a small run loads them all first.
        warm = [
            "generate.num_samples=1",
            "generate.max_new_tokens=4",
            "sft.enabled=false",
            "dpo.enabled=false",
            "arena.enabled=false",
        ]
        timed("warm-up (not compared)", lambda: direct(config, [*overrides, *warm, f"storage.root={tmp}/warm"]))
        plain = timed(
            "stage functions called directly", lambda: direct(config, [*overrides, f"storage.root={tmp}/direct"])
        )
        timed("temporary Prefect server start (first flow in a process)", warm_up)
        flowed = timed(
            "pipeline flow", lambda: pipeline(config=str(config), overrides=[*overrides, f"storage.root={tmp}/flow"])
        )
        print(f"flow / direct: {flowed / plain:.3f} (target <= 1.10)")
        cached = [*overrides, f"storage.root={tmp}/flow"]
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        print(
            f"cached rerun, `croco run` in a new process, no server configured: {croco_run(config, cached, env):.1f} s (target <= 20)"
        )
        port = "4299"
        server = subprocess.Popen(
            ["bash", str(REPO / "infra" / "prefect-server.sh"), port],
            env={**env, "PREFECT_HOME": f"{tmp}/prefect-home", "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_until_up(f"http://127.0.0.1:{port}/api/health")
            served = croco_run(config, cached, {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"})
            print(
                f"cached rerun, `croco run` in a new process, long-running local server: {served:.1f} s (target <= 20)"
            )
        finally:
            os.killpg(server.pid, 15)


def wait_until_up(url: str) -> None:
    import urllib.request

    for _ in range(240):
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"no server answers at {url}")


if __name__ == "__main__":
    main()
