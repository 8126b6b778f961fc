"""The deployments as users run them: a real Prefect server (SQLite) on 127.0.0.1, the deployments applied from
deployments/prefect.yaml, a process worker, a run triggered through the API as the UI does, and the
croco-languages trigger fired by `croco plan --notify` when the config gains a language."""

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    REPO,
    background,
    free_port,
    make_config,
    prefect_client_environment,
    prompt_record,
    save_config,
    version,
    write_jsonl,
)
from croco import runs
from croco.storage import Storage

BIN = Path(sys.executable).parent


@pytest.fixture
def prefect_api(tmp_path):
    """`infra/prefect-server.sh` on a free port with its own PREFECT_HOME; yields the environment that points at it."""
    port = free_port()
    env = prefect_client_environment(tmp_path / "prefect-home")
    with background(
        ["bash", str(REPO / "infra" / "prefect-server.sh"), str(port)],
        f"http://127.0.0.1:{port}/api/health",
        tmp_path / "server.log",
        env=env,
    ):
        yield {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}


def prefect(env, *args):
    done = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"prefect {' '.join(args)}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return done.stdout


def ask(env, call):
    """The result of `await call(client)` against the server in `env`."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            return await call(client)

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return asyncio.run(read())


def flow_runs(env, deployment: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def call(client):
        found = await client.read_deployment_by_name(deployment)
        return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])))

    return ask(env, call)


def wait_for_completed(env, deployment: str, count: int, timeout: float = 420) -> list:
    deadline = time.monotonic() + timeout
    while True:
        runs = flow_runs(env, deployment)
        finished = [r for r in runs if r.state and r.state.is_final()]
        assert not [r for r in finished if not r.state.is_completed()], [r.state for r in finished]
        if len(finished) >= count:
            return finished  # croco-languages also has runs its daily schedule has put in the future
        assert time.monotonic() < deadline, f"{deployment}: {[r.state.name for r in runs if r.state]} after {timeout} s"
        time.sleep(2)


@pytest.mark.slow
def test_deployments_worker_ui_run_artifacts_and_new_language_trigger(tmp_path, tiny_models, prefect_api):
    rows = [prompt_record(f"p{i}", lang, f"Question {i} in {lang}?") for lang in ("en", "da", "ga") for i in range(2)]
    sources = [{"path": str(write_jsonl(tmp_path / "prompts.jsonl", rows))}]
    sections = {"sft": {"enabled": False}, "dpo": {"enabled": False}, "name": "deployed"}
    cfg = make_config(tmp_path / "store", tiny_models, sources, languages=["en", "da"], **sections)
    config = save_config(cfg, tmp_path / "deployed.yaml")

    prefect(prefect_api, "work-pool", "create", "croco", "--type", "process")
    prefect(prefect_api, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    with background(
        [str(BIN / "prefect"), "worker", "start", "--pool", "croco"],
        None,
        tmp_path / "worker.log",
        env=prefect_api,
        cwd=REPO,
    ):
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: prefect_api["PREFECT_API_URL"]}):
            run_deployment(
                "croco-pipeline/croco-pipeline", parameters={"config": str(config)}, timeout=0
            )  # what the UI's Run button does
        [pipeline_run] = wait_for_completed(prefect_api, "croco-pipeline/croco-pipeline", 1)
        assert version(cfg, "score/da").committed()
        keys = {a.key for a in artifacts(prefect_api, pipeline_run.id)}
        assert {"croco-plan-deployed", "croco-report-deployed", "croco-generate-en", "croco-score-da"} <= keys
        lines = [entry.message for entry in logs(prefect_api, pipeline_run.id)]
        assert any(line.startswith("generate/en: ") for line in lines), lines[
            :20
        ]  # croco's stage logs are the run's logs
        languages_deployment = ask(
            prefect_api, lambda client: client.read_deployment_by_name("croco-languages/croco-languages")
        )
        assert [s.schedule.cron for s in languages_deployment.schedules] == ["0 3 * * *"]

        with_ga = make_config(tmp_path / "store", tiny_models, sources, languages=["en", "da", "ga"], **sections)
        save_config(with_ga, config)
        notify = subprocess.run(
            [str(BIN / "croco"), "plan", str(config), "--notify"],
            env=prefect_api,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert notify.returncode == 0 and "new languages since the last run of deployed: ga" in notify.stdout, (
            notify.stderr
        )
        [languages_run] = wait_for_completed(prefect_api, "croco-languages/croco-languages", 1)
        assert languages_run.parameters["config"] == str(config)
    [newest, *_] = runs.records(Storage(cfg.storage.root))
    assert newest["languages"] == ["en", "da", "ga"] and newest["status"] == "completed"
    assert version(with_ga, "generate/ga").committed()
    assert (
        version(with_ga, "generate/en").manifest()["committed_at"]
        == version(cfg, "generate/en").manifest()["committed_at"]
    )


def artifacts(env, flow_run_id) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    return ask(
        env,
        lambda client: client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        ),
    )


def logs(env, flow_run_id) -> list:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return ask(
        env, lambda client: client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    )
