"""Units as SLURM jobs on the real one-node test cluster (the `slurm_cluster` fixture): the flow runs here, each
generate and score unit is a job running `croco unit` under a stand-in container that records what it was given."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, make_config, prompt_record, run, save_config, version, write_jsonl
from croco.config import parse_config
from croco.errors import CrocoError
from croco.execution.slurm import accounting_field
from croco.execution.slurm_backend import (
    JOB_RECORD,
    Array,
    JobFailed,
    SlurmBackend,
    cancel_waiting_jobs,
    job_environment,
    render_script,
)
from croco.plan import Unit, build_plan
from croco.tasks.generate import generate

GOLDEN = Path(__file__).parent / "golden"
CROCO = [sys.executable, "-m", "croco.cli"]


def golden_config(**slurm) -> dict:
    return {
        "languages": ["en"],
        "models": {
            "policy": {"path": "embedded:smollm2-135m-instruct"},
            "reward": {"path": "embedded:croco-demo-reward"},
        },
        "data": {"sources": [{"path": "embedded:demo-prompts"}]},
        "arena": {"enabled": False},
        "execution": {"kind": "slurm", "slurm": slurm},
    }


@pytest.mark.parametrize(
    "name, slurm, array",
    [
        ("plain", {"partition": "debug", "time": "00:30:00"}, None),
        # Tasks 3 and 4 of 6 finished earlier: only the others go out, at most 2 at once.
        ("array", {"partition": "standard-g", "gpus_per_node": 1}, Array(6, [0, 1, 2, 5], throttle=2)),
        (
            "container",
            {
                "partition": "standard-g",
                "account": "project_465000001",
                "qos": "normal",
                "gpus_per_node": 8,
                "cpus_per_task": 56,
                "mem": "480G",
                "time": "2-00:00:00",
                "sbatch": ["--exclusive"],
                "modules": ["LUMI/24.03", "partition/G"],
                "rename_env": {"ROCR_VISIBLE_DEVICES": "HIP_VISIBLE_DEVICES"},
                "container": ["singularity", "exec", "-B", "/scratch/project x", "/scratch/croco's.sif"],
            },
            None,
        ),
    ],
)
def test_rendered_job_scripts_match_their_golden_files(name: str, slurm: dict, array: Array | None):
    cfg = parse_config(golden_config(**slurm))
    unit = Unit("arena", "da", "0123456789abcdef", model="dpo")
    script = render_script(cfg, unit, Path("/scratch/jobs/arena/da/0123456789abcdef/config.yaml"), array)
    golden = GOLDEN / f"{name}.sbatch"
    if os.environ.get("CROCO_UPDATE_GOLDEN"):
        golden.write_text(script)
    assert script == golden.read_text()
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_a_training_unit_on_several_gpus_starts_under_accelerate_launch_with_one_process_per_gpu():
    config = golden_config(partition="standard-g", gpus_per_node=8, container=["singularity", "exec", "image.sif"])
    cfg = parse_config({**config, "sft": {"distributed": "zero2", "gradient_accumulation": 16}})
    script = render_script(cfg, Unit("sft", "all", "0123456789abcdef"), Path("/jobs/config.yaml"))
    command = (
        "singularity exec image.sif python -m croco.distributed zero2 8 -m croco.cli unit sft all 0123456789abcdef"
    )
    assert f"exec {command} --config /jobs/config.yaml" in script
    generate = render_script(cfg, Unit("generate", "da", "0123456789abcdef"), Path("/jobs/config.yaml"))
    assert "exec singularity exec image.sif croco unit generate da" in generate
    with pytest.raises(CrocoError, match=r"sft.gradient_accumulation \(12\) must be a multiple of the 8 devices"):
        uneven = parse_config({**config, "sft": {"gradient_accumulation": 12}})
        render_script(uneven, Unit("sft", "all", "0123456789abcdef"), Path("/jobs/config.yaml"))


def test_a_job_gets_no_prefect_settings_and_s3_credentials_only_for_an_s3_root(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-local-jobs")
    monkeypatch.setenv("CROCO_CACHE", "/scratch/cache")
    cfg = parse_config(golden_config(env={"HF_HOME": "/scratch/hf"}))
    env = job_environment(cfg, cfg.execution.slurm)
    assert env["HF_HOME"] == "/scratch/hf" and env["CROCO_CACHE"] == "/scratch/cache" and env["PATH"]
    assert not [name for name in env if name.startswith(("PREFECT_", "AWS_"))]
    on_s3 = parse_config({**golden_config(), "storage": {"root": "s3://bucket/croco"}})
    assert job_environment(on_s3, on_s3.execution.slurm)["AWS_SECRET_ACCESS_KEY"] == "not-for-local-jobs"


def test_croco_unit_refuses_a_key_that_is_not_the_one_its_code_computes(tmp_path, tiny_models, prompts_file, capsys):
    from croco.cli import main

    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}])
    config = save_config(cfg, tmp_path / "job-config.yaml")
    assert main(["unit", "prompts", "en", "0000000000000000", "--config", str(config)]) == 2
    assert "differs from the flow's" in capsys.readouterr().err
    assert not version(cfg, "prompts/en").committed()
    assert main(["unit", "prompts", "en", version(cfg, "prompts/en").key, "--config", str(config)]) == 0
    assert version(cfg, "prompts/en").committed()


# On the test cluster ------------------------------------------------------------------------------------------


STAND_IN = """#!/bin/bash
# A stand-in for `apptainer exec [options] IMAGE.sif COMMAND...`: records its argv and environment, then runs
# COMMAND (after the test's step, if any).
record={record}/$SLURM_JOB_ID
printf '%s\\n' "$@" > "$record.argv"
env > "$record.env"
while [ "$#" -gt 0 ] && [[ "$1" != *.sif ]]; do shift; done
export APPTAINER_CONTAINER=$1  # as apptainer sets it inside
shift
{step}
exec "$@"
"""


def stand_in(folder: Path, step: str = "") -> list[str]:
    """A container prefix whose `apptainer` is the stand-in; `step` runs in it before the payload."""
    (folder / "records").mkdir(parents=True, exist_ok=True)
    program = folder / "apptainer"
    program.write_text(STAND_IN.format(record=folder / "records", step=step))
    program.chmod(0o755)
    (folder / "croco.sif").write_bytes(b"an image of croco")
    return [str(program), "exec", "--rocm", "-B", str(folder), str(folder / "croco.sif")]


def slurm_config(
    tmp_path: Path,
    tiny_models,
    prompts_file,
    container: list[str],
    stages=("generate", "score"),
    limit="10:00",
    croco=CROCO,
    slurm_more: dict | None = None,
    **more,
):
    """The shipped test-cluster profile, with `stages` as jobs under `container` and the others in the flow;
    `slurm_more` goes to the whole `execution.slurm` section."""
    slurm = {"container": container, "croco": croco, "time": limit}
    execution = {
        "cluster": str(REPO / "configs" / "clusters" / "local-test.yaml"),
        "kind": "local",
        "slurm": slurm_more or {},
        "stages": {stage: {"kind": "slurm", "slurm": slurm} for stage in stages},
    }
    return make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], execution=execution, **more)


def job_of(cfg, unit_id: str) -> dict:
    recorded = version(cfg, unit_id)
    return json.loads(Path(recorded.path, JOB_RECORD).read_text())


def sacct(job_id: str) -> list[str]:
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-j", job_id, "-o", "State"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line]


@pytest.mark.slurm
def test_generate_and_score_run_as_jobs_under_the_container_while_the_flow_runs_here(
    slurm_cluster, tmp_path, tiny_models, prompts_file, monkeypatch
):
    monkeypatch.setenv("PREFECT_TEST_MARKER", "must-not-reach-the-job")
    container = stand_in(tmp_path / "apptainer")
    cfg = slurm_config(tmp_path, tiny_models, prompts_file, container)
    run(cfg, stages=["score"])
    for unit_id in ("generate/en", "generate/da", "score/en", "score/da"):
        job = job_of(cfg, unit_id)
        assert sacct(job["job_id"]) == ["COMPLETED"]
        argv = (tmp_path / "apptainer" / "records" / f"{job['job_id']}.argv").read_text().splitlines()
        stage, language = unit_id.split("/")
        assert argv[:5] == container[1:] and argv[5:8] == CROCO
        assert argv[8:12] == ["unit", stage, language, version(cfg, unit_id).key]
        env = (tmp_path / "apptainer" / "records" / f"{job['job_id']}.env").read_text()
        assert "PREFECT_" not in env and "HF_HUB_OFFLINE=1" in env
    assert not Path(version(cfg, "prompts/en").path, JOB_RECORD).exists()  # prompts stayed local
    assert version(cfg, "score/da").manifest()["records_out"] == 6
    # Both languages' generate jobs were in the queue together (units in parallel): their runs overlap.
    (en_start, en_end), (da_start, da_end) = (
        accounting_field(job_of(cfg, f"generate/{code}")["job_id"], "Start,End").split("|") for code in ("en", "da")
    )
    assert en_start < da_end and da_start < en_end
    image = {"path": container[-1], "sha256": hashlib.sha256(b"an image of croco").hexdigest()}
    assert (
        version(cfg, "generate/da").manifest()["image"] == image
        and "image" not in version(cfg, "prompts/en").manifest()
    )


def many_prompts(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "many.jsonl", [prompt_record(f"p{i}", "en", f"Question {i}?") for i in range(n)])


@pytest.mark.slurm
def test_a_job_that_fails_is_retried_and_the_new_job_resumes_its_shards(slurm_cluster, tmp_path, tiny_models):
    records = tmp_path / "apptainer" / "records"
    cfg = slurm_config(
        tmp_path,
        tiny_models,
        many_prompts(tmp_path, 40),
        stand_in(tmp_path / "apptainer"),
        stages=("generate",),
        languages=["en"],
        generate={"prompts_per_shard": 1},
        retries={"generate": {"attempts": 1, "delay_s": 0.1}},
    )
    index = Path(version(cfg, "generate/en").path) / "index"
    # The first job is killed as soon as it has finished a shard; the second runs to the end.
    stand_in(
        tmp_path / "apptainer",
        f"""if [ ! -e {records}/failed-once ]; then
    touch {records}/failed-once
    "$@" & payload=$!
    until ls {index}/part-*.json >/dev/null 2>&1; do sleep 0.02; done
    kill -9 $payload
    stat -c '%n %i' {index}/part-*.json > {records}/finished-before-the-failure
    exit 1
fi""",
    )
    run(cfg, stages=["generate"])
    first, second = sorted(int(p.stem) for p in records.glob("*.argv"))
    assert sacct(str(first)) == ["FAILED"] and sacct(str(second)) == ["COMPLETED"]
    kept = dict(line.split() for line in (records / "finished-before-the-failure").read_text().splitlines())
    assert 0 < len(kept) < 40
    for path, inode in kept.items():  # not rewritten by the second job
        assert str(os.stat(path).st_ino) == inode
    assert len(version(cfg, "generate/en").manifest()["shards"]) == 40


@pytest.mark.slurm
def test_generate_goes_out_as_job_arrays_and_a_retry_resubmits_only_the_failed_tasks_shards(
    slurm_cluster, tmp_path, tiny_models, prompts_file, caplog
):
    records = tmp_path / "apptainer" / "records"
    # Every task notes its array, index and argv; en's task 1 fails once, before doing its shard.
    step = f"""echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $*" >> {records}/tasks
if [ "$SLURM_ARRAY_TASK_ID" = 1 ] && [[ " $* " == *" generate en "* ]] && [ ! -e {records}/failed-once ]; then
    touch {records}/failed-once
    exit 1
fi"""
    cfg = slurm_config(
        tmp_path,
        tiny_models,
        prompts_file,
        stand_in(tmp_path / "apptainer", step),
        stages=("generate",),
        slurm_more={"array_tasks": 3, "array_throttle": 2},
        generate={"prompts_per_shard": 1},  # 3 prompts per language: 3 shards, one per task
        retries={"generate": {"attempts": 1, "delay_s": 0.1}},
    )
    run(cfg, stages=["generate"])
    tasks: dict[tuple[str, str], list[int]] = {}
    for line in (records / "tasks").read_text().splitlines():
        array, index, argv = line.split(" ", 2)
        language = argv.split(" unit generate ")[1].split()[0]
        assert argv.endswith("--shares 3")
        tasks.setdefault((language, array), []).append(int(index))
    (first_en, second_en), (da,) = (
        sorted(a for lang, a in tasks if lang == "en"),
        [a for lang, a in tasks if lang == "da"],
    )
    assert sorted(tasks["en", first_en]) == [0, 1, 2] and tasks["en", second_en] == [1]
    assert sorted(tasks["da", da]) == [0, 1, 2]
    assert sacct(first_en) == ["COMPLETED", "FAILED", "COMPLETED"] and sacct(second_en) == ["COMPLETED"]
    assert job_of(cfg, "generate/en") | {"submitted_at": 0} == {
        "job_id": second_en,
        "script": job_of(cfg, "generate/en")["script"],
        "submitted_at": 0,
        "shares": 3,
        "tasks": [1],
    }
    for code in ("en", "da"):
        manifest = version(cfg, f"generate/{code}").manifest()
        assert len(manifest["shards"]) == 3 and manifest["records_out"] == 6
    # One `sbatch --test-only` per script shape, in the run's log: both first arrays (0-2%2), then en's retry (1%2).
    assert caplog.text.count("to start at") == 2


@pytest.mark.slurm
def test_a_script_sbatch_would_refuse_fails_the_unit_before_any_job_is_queued(
    slurm_cluster, tmp_path, tiny_models, prompts_file
):
    container = stand_in(tmp_path / "apptainer")
    cfg = slurm_config(tmp_path, tiny_models, prompts_file, container, ("generate",), slurm_more={"partition": "nope"})
    run(cfg, stages=["prompts"])
    with pytest.raises(
        CrocoError, match=r"sbatch --test-only refused .*unit.sbatch: sbatch: error: invalid partition specified: nope"
    ):
        SlurmBackend().run(cfg, build_plan(cfg).by_id["generate/en"], generate.work)
    assert not (Path(version(cfg, "generate/en").path) / JOB_RECORD).exists()


@pytest.mark.slurm
def test_reattaching_to_a_job_id_no_command_knows_fails_the_unit_after_the_grace_period(
    slurm_cluster, tmp_path, tiny_models, prompts_file
):
    cfg = slurm_config(
        tmp_path,
        tiny_models,
        prompts_file,
        stand_in(tmp_path / "apptainer"),
        ("generate",),
        slurm_more={"unknown_job_s": 2},
    )
    run(cfg, stages=["prompts"])
    record = Path(version(cfg, "generate/en").path) / JOB_RECORD
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"job_id": "99999999", "script": str(tmp_path / "unit.sbatch")}))
    with pytest.raises(CrocoError, match=r"generate/en: SLURM job 99999999 is known to neither squeue nor sacct 2 s"):
        SlurmBackend().run(cfg, build_plan(cfg).by_id["generate/en"], generate.work)
    assert not list((tmp_path / "apptainer" / "records").glob("*.argv"))  # nothing was submitted instead


def flow_in_a_subprocess(cfg, prefect_api: str, log: Path, path_prefix: Path | None = None) -> subprocess.Popen:
    config = save_config(cfg, Path(cfg.storage.root + ".yaml"))
    code = f"from croco.flows.pipeline import pipeline; pipeline(config={str(config)!r}, stages=['generate'])"
    # Short leases: a restarted flow waits for the killed one's unit lease to expire (three heartbeats).
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "CROCO_HEARTBEAT_S": "2"}
    if path_prefix:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for(condition, what: str, timeout_s: float = 180):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.2)


def held_config(tmp_path, tiny_models, prompts_file, **more):
    """generate/en as a job that waits in its container until the test creates the file `release`."""
    hold = f"while [ ! -e {tmp_path}/release ]; do sleep 0.2; done"
    return slurm_config(
        tmp_path, tiny_models, prompts_file, stand_in(tmp_path / "apptainer", hold), stages=("generate",), **more
    )


@pytest.mark.slurm
def test_a_flow_killed_while_its_job_runs_reattaches_when_restarted_and_submits_nothing_new(
    slurm_cluster, prefect_server, tmp_path, tiny_models, prompts_file
):
    calls = tmp_path / "bin"
    calls.mkdir()
    (calls / "sbatch").write_text(f'#!/bin/bash\necho "$@" >> {calls}/sbatch-calls\nexec /usr/bin/sbatch "$@"\n')
    (calls / "sbatch").chmod(0o755)
    cfg = held_config(tmp_path, tiny_models, prompts_file, languages=["en"])
    record = Path(version(cfg, "generate/en").path) / JOB_RECORD
    first = flow_in_a_subprocess(cfg, prefect_server, tmp_path / "first.log", calls)
    wait_for(record.exists, "job record")
    job_id = json.loads(record.read_text())["job_id"]
    wait_for(lambda: sacct(job_id) == ["RUNNING"], "running job")
    first.kill()
    first.wait()
    second = flow_in_a_subprocess(cfg, prefect_server, tmp_path / "second.log", calls)
    wait_for(lambda: "waiting on its SLURM job" in (tmp_path / "second.log").read_text(), "re-attach")
    (tmp_path / "release").touch()
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    calls_made = (calls / "sbatch-calls").read_text().splitlines()
    assert len([call for call in calls_made if not call.startswith("--test-only")]) == 1  # one submission
    assert json.loads(record.read_text())["job_id"] == job_id and sacct(job_id) == ["COMPLETED"]
    assert version(cfg, "generate/en").manifest()["records_out"] == 6


@pytest.mark.slurm
def test_a_flow_run_stopped_while_its_job_runs_cancels_the_job(
    slurm_cluster, prefect_server, tmp_path, tiny_models, prompts_file
):
    cfg = held_config(tmp_path, tiny_models, prompts_file, languages=["en"])
    record = Path(version(cfg, "generate/en").path) / JOB_RECORD
    flow = flow_in_a_subprocess(cfg, prefect_server, tmp_path / "flow.log")
    wait_for(record.exists, "job record")
    job_id = json.loads(record.read_text())["job_id"]
    wait_for(lambda: sacct(job_id) == ["RUNNING"], "running job")
    flow.send_signal(signal.SIGTERM)  # what Prefect's runner sends a flow run it cancels
    flow.wait(timeout=60)
    wait_for(lambda: sacct(job_id) == ["CANCELLED"], "cancelled job", timeout_s=30)


@pytest.mark.slurm
def test_jobs_waited_on_in_worker_threads_are_cancelled_on_request(slurm_cluster, tmp_path, tiny_models, prompts_file):
    cfg = held_config(tmp_path, tiny_models, prompts_file)
    run(cfg, stages=["prompts"])
    units = [build_plan(cfg).by_id[f"generate/{language}"] for language in ("en", "da")]
    errors: list[BaseException] = []

    def unit_in_a_thread(unit):
        try:
            SlurmBackend().run(cfg, unit, generate.work)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=unit_in_a_thread, args=(unit,)) for unit in units]
    for thread in threads:
        thread.start()
    records = [Path(version(cfg, unit.id).path) / JOB_RECORD for unit in units]
    wait_for(lambda: all(record.exists() for record in records), "job records")
    jobs = [json.loads(record.read_text())["job_id"] for record in records]
    wait_for(lambda: all(sacct(job) == ["RUNNING"] for job in jobs), "running jobs")
    cancel_waiting_jobs()
    for thread in threads:
        thread.join(timeout=60)
    assert [sacct(job) for job in jobs] == [["CANCELLED"], ["CANCELLED"]]
    assert len(errors) == 2 and all("was cancelled" in str(error) for error in errors)


@pytest.mark.slurm
def test_a_job_cancelled_by_a_person_fails_the_unit_without_a_retry(slurm_cluster, tmp_path, tiny_models, prompts_file):
    cfg = held_config(tmp_path, tiny_models, prompts_file, languages=["en"], retries={"generate": {"attempts": 2}})
    record = Path(version(cfg, "generate/en").path) / JOB_RECORD

    def person():
        wait_for(record.exists, "job record")
        subprocess.run(["scancel", json.loads(record.read_text())["job_id"]], check=True)

    threading.Thread(target=person, daemon=True).start()
    with pytest.raises(CrocoError, match="was cancelled"):
        run(cfg, stages=["generate"])
    assert len(list((tmp_path / "apptainer" / "records").glob("*.argv"))) <= 1


@pytest.mark.slurm
def test_a_job_past_its_time_limit_is_reported_as_timeout(slurm_cluster, tmp_path, tiny_models, prompts_file):
    container = stand_in(tmp_path / "apptainer", "sleep 600")
    cfg = slurm_config(
        tmp_path,
        tiny_models,
        prompts_file,
        container,
        stages=("generate",),
        limit="1",
        languages=["en"],
        retries={"generate": {"attempts": 0}},
    )
    with pytest.raises(JobFailed, match="ended TIMEOUT"):
        run(cfg, stages=["generate"])


@pytest.mark.slurm
def test_a_real_apptainer_or_singularity_runs_the_job(slurm_cluster, tmp_path, tiny_models, prompts_file):
    binary = shutil.which("apptainer") or shutil.which("singularity")
    image = os.environ.get("CROCO_TEST_IMAGE")
    if not binary:
        pytest.skip("neither apptainer nor singularity is on PATH (the stand-in tests cover the container prefix)")
    if not image:
        pytest.skip(f"{binary} is here, but CROCO_TEST_IMAGE does not name a .sif image with croco to run the job in")
    binds = ["-B", str(tmp_path), "-B", str(Path(tiny_models["policy"]).parent), "-B", str(prompts_file.parent)]
    container = [binary, "exec", *binds, image]
    cfg = slurm_config(tmp_path, tiny_models, prompts_file, container, ("generate",), croco=["croco"], languages=["en"])
    run(cfg, stages=["generate"])
    assert version(cfg, "generate/en").manifest()["records_out"] == 6
