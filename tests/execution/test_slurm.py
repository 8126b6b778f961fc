"""The SLURM client against the real one-node test cluster (infra/slurm/, the `slurm_cluster` fixture)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm


def test_cluster_gives_a_gpu_job_its_fake_gpus(slurm_cluster: str, tmp_path: Path):
    out = tmp_path / "out.txt"
    job_id = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--partition={slurm_cluster}",
            "--gres=gpu:2",
            f"--output={out}",
            "--wrap",
            'echo "$CUDA_VISIBLE_DEVICES $ROCR_VISIBLE_DEVICES"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deadline = time.monotonic() + 60
    while "COMPLETED" not in (row := sacct_row(job_id)):
        assert time.monotonic() < deadline, f"job {job_id} not done after 60 s: {row!r}"
        time.sleep(0.5)
    assert out.read_text().split() == ["0,1", "0,1"]
    assert "gres/gpu=2" in row


def sacct_row(job_id: str) -> str:
    return subprocess.run(
        ["sacct", "-X", "-P", "-n", "-j", job_id, "-o", "State,AllocTRES"], capture_output=True, text=True
    ).stdout
