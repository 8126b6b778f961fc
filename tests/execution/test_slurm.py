"""The SLURM client against the real one-node test cluster (infra/slurm/, the `slurm_cluster` fixture)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from croco.errors import CrocoError
from croco.execution.slurm import (
    JobStatus,
    JobWatcher,
    UnknownJob,
    accounting_field,
    cancel,
    expand_array_id,
    preflight,
    submit,
)

pytestmark = pytest.mark.slurm


def job_script(folder: Path, body: str) -> Path:
    script = folder / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --output={folder}/%j.out\n{body}\n")
    return script


def test_cluster_gives_a_gpu_job_its_fake_gpus(slurm_cluster: str, tmp_path: Path):
    script = job_script(tmp_path, 'echo "$CUDA_VISIBLE_DEVICES $ROCR_VISIBLE_DEVICES" > "$OUT"')
    job_id = submit(script, export={"OUT": str(tmp_path / "gpus.txt")}, extra_args=["--gres=gpu:2"])
    assert JobWatcher(min_interval_s=0.2).wait(job_id, timeout_s=60) == [JobStatus(job_id, "COMPLETED", "0:0")]
    assert (tmp_path / "gpus.txt").read_text().split() == ["0,1", "0,1"]
    assert "gres/gpu=2" in accounting_field(job_id, "AllocTRES")


def test_submit_and_wait_until_completed(slurm_cluster: str, tmp_path: Path):
    job_id = submit(job_script(tmp_path, "echo done"), export={}, extra_args=[f"--partition={slurm_cluster}"])
    assert JobWatcher(min_interval_s=0.2).wait(job_id, timeout_s=60) == [JobStatus(job_id, "COMPLETED", "0:0")]
    assert (tmp_path / f"{job_id}.out").read_text() == "done\n"


def test_a_failing_job_is_failed_with_its_exit_code(slurm_cluster: str, tmp_path: Path):
    job_id = submit(job_script(tmp_path, "exit 3"), export={})
    assert JobWatcher(min_interval_s=0.2).wait(job_id, timeout_s=60) == [JobStatus(job_id, "FAILED", "3:0")]


@pytest.mark.slow
def test_a_job_past_its_time_limit_ends_as_timeout(slurm_cluster: str, tmp_path: Path):
    job_id = submit(job_script(tmp_path, "sleep 600"), export={}, extra_args=["--time=1"])
    started = time.monotonic()
    [status] = JobWatcher(min_interval_s=0.5, max_interval_s=5).wait(job_id, timeout_s=180)
    assert status.state == "TIMEOUT" and status.terminal
    assert 60 <= time.monotonic() - started <= 100  # measured here: 67-69 s, then a 5 s interval and sacct's lag


def test_an_array_with_a_throttle_gives_one_status_per_task(slurm_cluster: str, tmp_path: Path):
    job_id = submit(job_script(tmp_path, 'exit "$SLURM_ARRAY_TASK_ID"'), export={}, extra_args=["--array=0-3%2"])
    statuses = JobWatcher(min_interval_s=0.2).wait(job_id, timeout_s=60)
    assert statuses == [
        JobStatus(f"{job_id}_0", "COMPLETED", "0:0"),
        JobStatus(f"{job_id}_1", "FAILED", "1:0"),
        JobStatus(f"{job_id}_2", "FAILED", "2:0"),
        JobStatus(f"{job_id}_3", "FAILED", "3:0"),
    ]


def test_array_ranges_are_expanded():
    assert expand_array_id("4_[0-3]") == ["4_0", "4_1", "4_2", "4_3"]
    assert expand_array_id("4_[1,3-5%2]") == ["4_1", "4_3", "4_4", "4_5"]
    assert expand_array_id("4_7") == ["4_7"]
    assert expand_array_id("12") == ["12"]


def test_the_job_gets_exactly_the_named_variables_and_no_value_on_a_command_line(
    slurm_cluster: str, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("CROCO_TEST_NOT_NAMED", "should-stay-here")
    secret = "s3cr3t-value-for-the-job"
    script = job_script(tmp_path, f"env > {tmp_path}/env.txt")
    job_id = submit(script, export={"CROCO_TEST_NAMED": secret, "CROCO_TEST_OTHER": "two words"})
    assert JobWatcher(min_interval_s=0.2).wait(job_id, timeout_s=60)[0].state == "COMPLETED"
    job_env = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines() if "=" in line)
    assert job_env["CROCO_TEST_NAMED"] == secret and job_env["CROCO_TEST_OTHER"] == "two words"
    assert "CROCO_TEST_NOT_NAMED" not in job_env
    submit_line = accounting_field(job_id, "SubmitLine")  # sbatch's own argv, as SLURM recorded it
    assert "--export=CROCO_TEST_NAMED,CROCO_TEST_OTHER " in submit_line and secret not in submit_line


def test_a_refused_sbatch_raises_a_sentence_quoting_its_stderr(slurm_cluster: str, tmp_path: Path):
    script = job_script(tmp_path, "echo never")
    with pytest.raises(CrocoError) as refused:
        submit(script, export={}, extra_args=["--partition=no-such-partition"])
    message = str(refused.value)
    assert message.startswith(f"sbatch refused {script}: ") and "Invalid partition name specified" in message
    assert message.endswith(".") and "\n" not in message


def test_a_preflight_queues_nothing_and_a_refusal_quotes_sbatch_stderr(slurm_cluster: str, tmp_path: Path, caplog):
    script = job_script(tmp_path, "echo never")
    queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    preflight(script, export={"OUT": "x"})
    assert "to start at" in caplog.text  # sbatch's answer, logged by prefect-shell's ShellOperation
    with pytest.raises(CrocoError) as refused:
        preflight(script, export={}, extra_args=["--partition=no-such-partition"])
    message = str(refused.value)
    assert message.startswith(f"sbatch --test-only refused {script}: sbatch: error: invalid partition specified")
    assert "Invalid partition name specified" in message and "\n" not in message
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == queued


def test_a_job_id_no_command_knows_fails_its_wait_after_the_grace_period():
    watcher = JobWatcher(min_interval_s=0.2, max_interval_s=0.5, unknown_after_s=2)
    started = time.monotonic()
    with pytest.raises(UnknownJob, match="SLURM job 99999999 is known to neither squeue nor sacct 2 s after"):
        watcher.wait("99999999", timeout_s=60)
    assert 2 <= time.monotonic() - started < 10


def test_cancel_gives_cancelled(slurm_cluster: str, tmp_path: Path):
    job_id = submit(job_script(tmp_path, "sleep 300"), export={})
    watcher = JobWatcher(min_interval_s=0.2)
    with pytest.raises(TimeoutError):
        watcher.wait(job_id, timeout_s=1)
    cancel([job_id])
    assert watcher.wait(job_id, timeout_s=60) == [JobStatus(job_id, "CANCELLED", "0:0")]


def test_one_watcher_polls_twenty_jobs_with_at_most_two_scheduler_calls_per_tick(slurm_cluster: str, tmp_path: Path):
    # Ten jobs already over (only sacct knows how they ended) and ten that run while the watcher polls.
    finished = [submit(job_script(tmp_path, "true"), export={}) for _ in range(10)]
    while subprocess.run(["squeue", "-h", "-j", ",".join(finished)], capture_output=True, text=True).stdout.strip():
        time.sleep(0.2)
    job_ids = finished + [submit(job_script(tmp_path, "sleep 2"), export={}) for _ in range(10)]
    watcher = JobWatcher(min_interval_s=0.2, max_interval_s=1)
    results: dict[str, list[JobStatus]] = {}
    waiters = [
        threading.Thread(target=lambda j=j: results.update({j: watcher.wait(j, timeout_s=120)})) for j in job_ids
    ]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join()
    assert sorted(results) == sorted(job_ids)
    assert all(statuses == [JobStatus(j, "COMPLETED", "0:0")] for j, statuses in results.items())
    assert 0 < watcher.calls <= 2 * watcher.ticks


def test_polling_backs_off_while_nothing_changes(slurm_cluster: str, tmp_path: Path):
    job_id = submit(job_script(tmp_path, "sleep 12"), export={})
    watcher = JobWatcher(min_interval_s=0.25, max_interval_s=4)
    assert watcher.wait(job_id, timeout_s=60)[0].state == "COMPLETED"
    # 0.25, 0.5, 1, 2, 4, 4... s: about 8 ticks for a 12 s job, where a fixed 0.25 s interval makes about 50.
    assert watcher.ticks <= 14
