"""What the cache check costs: cached reruns of the demo with `storage.verify: size` against `checksum`.

    .venv/bin/python benchmarks/bench_verify.py [CONFIG] [--root DIR] [--rounds 3]

Runs the config once into DIR (a fresh temporary folder unless --root names one that holds a
finished run of it), then cached reruns as a user starts them: `croco run` in a new process,
interpreter start and a temporary Prefect server included, alternating `size` and `checksum`,
the best of --rounds kept for each. Then the check alone, in this process: `Version.problems()`
of every version of the plan, with the bytes that `checksum` reads. Target: a cached rerun of
the demo within 20 s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from croco.config import load_config
from croco.plan import build_plan
from croco.storage import Storage

REPO = Path(__file__).resolve().parents[1]
MODES = ("size", "checksum")


def croco_run(config: Path, overrides: list[str], env: dict) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "croco.cli", "run", str(config), *overrides],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - began, done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument(
        "--root",
        help="a storage root that holds a finished run of the config (default: run it first into a temporary one)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"storage.root={args.root or f'{tmp}/store'}"]
        if not args.root:
            seconds, _ = croco_run(Path(args.config), overrides, env)
            print(f"first run (not compared): {seconds:.1f} s", flush=True)
        best = {mode: float("inf") for mode in MODES}
        for round_ in range(args.rounds):
            for mode in MODES:
                seconds, output = croco_run(Path(args.config), [*overrides, f"storage.verify={mode}"], env)
                if " 0 units ran" not in output:
                    raise SystemExit(f"the {mode} rerun was not all cache hits:\n{output[-2000:]}")
                print(f"round {round_}: cached rerun, storage.verify={mode}: {seconds:.1f} s", flush=True)
                best[mode] = min(best[mode], seconds)
        cfg = load_config(Path(args.config), overrides)
        for mode in MODES:
            storage = Storage(cfg.storage.root, verify=mode)
            versions = [storage.version_at(unit.version_path) for unit in build_plan(cfg).units]
            began = time.perf_counter()
            broken = [v.relative for v in versions if v.problems()]
            checked = time.perf_counter() - began
            assert not broken, broken
            print(f"check alone, storage.verify={mode}: {checked:.2f} s for {len(versions)} versions", flush=True)
        read = sum(entry["bytes"] for v in versions for entry in _entries(v.manifest()))
        print(
            f"checksum reads {read / 1e6:.1f} MB a check (the flow checks each version twice: its plan and its task's cache key)"
        )
        print("best cached rerun: " + ", ".join(f"{mode} {best[mode]:.1f} s" for mode in MODES) + " (target <= 20)")


def _entries(manifest: dict) -> list[dict]:
    shards = [entry[part] for entry in manifest["shards"].values() for part in ("data", "skipped") if entry[part]]
    return shards + [entry for entry in manifest.get("files", {}).values() if isinstance(entry, dict)]


if __name__ == "__main__":
    main()
