"""Wall time and peak memory of `croco pair` on scored samples in the original research layout.

    .venv/bin/python benchmarks/bench_pair.py [--languages 7] [--prompts 2000] [--samples 64] [--dir /tmp/croco-bench-pair]

Writes a deterministic synthetic input (one scored and one originals JSONL per language,
~600-character responses; the default is 896,000 samples, about 740 MB), then runs
`croco pair --scored ... --originals ... --out ...` in a subprocess and samples the memory of
its whole process tree (workers included) every 10 ms. The reference: the original code
took 11.6 s and 1.8 GB on this input on a 2-core machine; the target is 3x faster and at most
a fifth of the memory.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import psutil

LANGUAGES = ["da", "nl", "en", "fr", "de", "it", "es"]
WORDS = "the of and to in is that for it as with was on be by this are from at an or have not but which you æble øre på straße très".split()


def write_input(
    folder: Path, languages: list[str], prompts: int, samples: int, response_chars: int
) -> tuple[list[Path], list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    scored, originals = [], []
    for language in languages:
        scored_path, originals_path = folder / f"scored_{language}.jsonl", folder / f"{language}.jsonl"
        scored.append(scored_path)
        originals.append(originals_path)
        marker = folder / f".done_{language}_{prompts}_{samples}_{response_chars}"
        if marker.exists():
            continue
        words = [rng.choice(WORDS) for _ in range(response_chars)]  # a pool of text to slice responses from
        text = " ".join(words)
        with open(originals_path, "w", encoding="utf-8") as o, open(scored_path, "w", encoding="utf-8") as s:
            for p in range(prompts):
                prompt = f"[{language}] prompt {p}: " + " ".join(rng.choice(WORDS) for _ in range(15))
                o.write(json.dumps({"messages": [{"role": "user", "content": prompt}]}, ensure_ascii=False) + "\n")
                for _ in range(samples):
                    start = rng.randrange(0, len(text) - response_chars)
                    messages = [
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": text[start : start + response_chars]},
                    ]
                    s.write(
                        json.dumps(
                            {"messages": messages, "reward_score": round(rng.gauss(0, 2), 6)}, ensure_ascii=False
                        )
                        + "\n"
                    )
        marker.touch()
    return scored, originals


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MB) summed over the process and its children."""
    started = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.01)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"croco pair failed: {process.stderr.read().decode()}")
    return wall, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--languages", type=int, default=7)
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--response-chars", type=int, default=600)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/croco-bench-pair"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    scored, originals = write_input(
        args.dir, LANGUAGES[: args.languages], args.prompts, args.samples, args.response_chars
    )
    size = sum(p.stat().st_size for p in scored) / 2**20
    command = [
        sys.executable,
        "-m",
        "croco.cli",
        "pair",
        "--scored",
        *map(str, scored),
        "--originals",
        *map(str, originals),
        "--out",
        str(args.dir / "out"),
    ]
    results = [measure(command) for _ in range(args.rounds)]
    print(
        f"input: {args.languages} languages x {args.prompts} prompts x {args.samples} samples = "
        f"{args.languages * args.prompts * args.samples:,} scored samples, {size:.0f} MB of JSONL"
    )
    for i, (wall, peak) in enumerate(results):
        print(f"round {i}: {wall:.2f} s wall, {peak:.0f} MB peak (process tree)")
    best_wall = min(w for w, _ in results)
    worst_peak = max(p for _, p in results)
    print(
        f"best wall {best_wall:.2f} s ({11.6 / best_wall:.1f}x faster than the original's 11.6 s); "
        f"peak {worst_peak:.0f} MB ({worst_peak / 1843:.2f} of the original's 1.8 GB)"
    )
    print(json.dumps(json.loads((args.dir / "out" / "manifest.json").read_text())["products"]))


if __name__ == "__main__":
    main()
