"""Versioned storage against raw s3fs on a local S3 server (infra/s3_server.py): MB/s of the same bytes.

    .venv/bin/python benchmarks/bench_storage.py [--shards 16] [--rows 4000] [--rounds 3]

Writes a generate-stage version (Parquet shards of synthetic samples of about 2,000 characters,
4,096 a shard as with the paper's 64 prompts x 64 samples, each with its index entry
and sha256) and reads it back with its checksums checked; then puts and gets the very bytes of
those shards with plain s3fs `pipe_file`/`cat_file`. The best of `--rounds` is kept on each side
(this machine is noisy). Target: the version's write and read rates at least 0.5x raw s3fs's.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "infra"))

from bench_orchestration import wait_until_up  # noqa: E402
from s3_server import environment  # noqa: E402


def samples(rows: int, seed: int, words_per_response: int = 400):
    """An Arrow table, as a stage holds its records before writing them (the conversion is not storage's work)."""
    import pyarrow as pa

    from croco.records import SAMPLE

    rng = random.Random(seed)
    words = "the of and to in is that for it as with was on be by this are from at an or have not but".split()
    return pa.Table.from_pylist(
        [
            {
                "prompt_id": f"p{i // 8}",
                "language": "en",
                "sample_index": i % 8,
                "prompt": "Question?",
                "prompt_sent": "Question?",
                "response": " ".join(rng.choice(words) for _ in range(words_per_response)),
                "finish_reason": "stop",
                "prompt_tokens": 12,
                "completion_tokens": 150,
                "policy": "bench",
            }
            for i in range(rows)
        ],
        schema=SAMPLE,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument(
        "--rows", type=int, default=4096, help="samples per shard (the paper's 64 prompts x 64 samples)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=5577)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, str(REPO / "infra" / "s3_server.py"), "--port", str(args.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(environment(args.port))
    try:
        wait_until_up(f"http://127.0.0.1:{args.port}/moto-api/")
        run(args)
    finally:
        server.terminate()


def run(args) -> None:
    from croco.records import SAMPLE
    from croco.storage import Storage

    storage = Storage("s3://croco/bench")
    shards = [samples(args.rows, seed) for seed in range(args.shards)]
    best = {"version write": 0.0, "version read": 0.0, "s3fs put": 0.0, "s3fs get": 0.0}
    for round_ in range(args.rounds):
        version = storage.version("generate", "en", f"round{round_}")
        began = time.perf_counter()
        for i, rows in enumerate(shards):
            version.write_shard(f"{i:05d}", rows, SAMPLE)
        version.commit({"records_in": 0, "records_out": 0, "skipped": {}})
        written = time.perf_counter() - began
        size = sum(entry["data"]["bytes"] for entry in version.manifest()["shards"].values()) / 1e6
        began = time.perf_counter()
        table = version.read(SAMPLE)
        read = time.perf_counter() - began
        assert table.num_rows == args.rows * args.shards
        blobs = [storage.fs.cat_file(p) for p in sorted(storage.fs.find(version.path)) if p.endswith(".parquet")]
        began = time.perf_counter()
        for i, blob in enumerate(blobs):
            storage.fs.pipe_file(f"{storage.root}/raw{round_}/{i}.parquet", blob)
        put = time.perf_counter() - began
        began = time.perf_counter()
        for i in range(len(blobs)):
            storage.fs.cat_file(f"{storage.root}/raw{round_}/{i}.parquet")
        get = time.perf_counter() - began
        rates = {
            "version write": size / written,
            "version read": size / read,
            "s3fs put": size / put,
            "s3fs get": size / get,
        }
        print(f"round {round_}: {size:.1f} MB; " + ", ".join(f"{k} {v:.1f} MB/s" for k, v in rates.items()), flush=True)
        best = {k: max(best[k], rates[k]) for k in best}
    print("best: " + ", ".join(f"{k} {v:.1f} MB/s" for k, v in best.items()))
    print(
        f"write ratio {best['version write'] / best['s3fs put']:.2f}, read ratio {best['version read'] / best['s3fs get']:.2f} (target >= 0.5)"
    )


if __name__ == "__main__":
    main()
