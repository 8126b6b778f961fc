"""The deployments as users run them: a real Prefect server (SQLite) on 127.0.0.1, the demo's deployments applied by
deployments/setup.sh, a process worker, a run triggered through the API as the UI does, and the croco-languages
trigger fired by `croco plan --notify` when the config gains a language; then `croco deploy` of two configs, each with
its own schedule and trigger, `--notify` with overrides from another folder, the refusals, and `croco undeploy`."""

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


def worker(env, log: Path, cwd: Path):
    """A process worker on the pool `croco`, started in `cwd`, until the block ends."""
    return background([str(BIN / "prefect"), "worker", "start", "--pool", "croco"], None, log, env=env, cwd=cwd)


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
    sections = {"sft": {"enabled": False}, "dpo": {"enabled": False}, "name": "demo"}  # what the demo's trigger hears
    cfg = make_config(tmp_path / "store", tiny_models, sources, languages=["en", "da"], **sections)
    config = save_config(cfg, tmp_path / "demo.yaml")

    for _ in range(2):  # the second time the pool and the deployments exist: no error
        setup = subprocess.run(
            ["bash", "deployments/setup.sh"], cwd=REPO, env=prefect_api, capture_output=True, text=True
        )
        assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
    with worker(prefect_api, tmp_path / "worker.log", cwd=REPO):
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: prefect_api["PREFECT_API_URL"]}):
            run_deployment(
                "croco-pipeline/croco-pipeline", parameters={"config": str(config)}, timeout=0
            )  # what the UI's Run button does
        [pipeline_run] = wait_for_completed(prefect_api, "croco-pipeline/croco-pipeline", 1)
        assert version(cfg, "score/da").committed()
        keys = {a.key for a in artifacts(prefect_api, pipeline_run.id)}
        assert {
            "croco-demo-1-plan",
            "croco-demo-2-report",
            "croco-demo-3-generate-en",
            "croco-demo-3-score-da",
        } <= keys
        lines = [entry.message for entry in logs(prefect_api, pipeline_run.id)]
        assert any(line.startswith("generate/en: ") for line in lines), lines[
            :20
        ]  # croco's stage logs are the run's logs
        languages_deployment = deployment(prefect_api, "croco-languages/croco-languages")
        assert [s.schedule.cron for s in languages_deployment.schedules] == ["0 3 * * *"]
        assert "croco demo: new languages" in automations(prefect_api)

        with_ga = make_config(tmp_path / "store", tiny_models, sources, languages=["en", "da", "ga"], **sections)
        save_config(with_ga, config)
        notify = subprocess.run(
            [str(BIN / "croco"), "plan", str(config), "--notify"],
            env=prefect_api,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert notify.returncode == 0 and "new languages since the last run of demo: ga" in notify.stdout, notify.stderr
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


def wait_for_final(env, flow_run_id, timeout: float = 420):
    deadline = time.monotonic() + timeout
    while not (found := ask(env, lambda client: client.read_flow_run(flow_run_id))).state.is_final():
        assert time.monotonic() < deadline, f"flow run {flow_run_id}: {found.state.name} after {timeout} s"
        time.sleep(2)
    return found


def croco(env, cwd: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "croco"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def deployment(env, full_name: str):
    return ask(env, lambda client: client.read_deployment_by_name(full_name))


def automations(env) -> dict:
    return {a.name: a for a in ask(env, lambda client: client.read_automations())}


@pytest.mark.slow
def test_croco_deploy_per_config_schedules_notify_with_overrides_relative_paths_and_undeploy(
    tmp_path, tiny_models, prefect_api
):
    rows = [prompt_record(f"p{i}", lang, f"Question {i} in {lang}?") for lang in ("en", "da") for i in range(2)]
    sources = [{"path": str(write_jsonl(tmp_path / "prompts.jsonl", rows))}]
    team, elsewhere = tmp_path / "team", tmp_path / "elsewhere"  # where croco deploy runs; where a person plans
    team.mkdir(), elsewhere.mkdir()
    configs = {}
    for name in ("alpha", "beta"):
        sections = {"sft": {"enabled": False}, "dpo": {"enabled": False}, "name": name}
        cfg = make_config(tmp_path / f"store-{name}", tiny_models, sources, languages=["en"], **sections)
        configs[name] = cfg, save_config(cfg, team / f"{name}.yaml")

    prefect(prefect_api, "work-pool", "create", "croco", "--type", "process")
    for name in configs:
        deployed = croco(prefect_api, team, "deploy", f"{name}.yaml", "--schedule", "* * * * *")
        assert deployed.returncode == 0, deployed.stderr
        assert deployed.stdout.split() == [
            "deployed",
            f"croco-pipeline/{name}",
            "deployed",
            f"croco-evaluate/{name}",
        ] + [
            "deployed",
            f"croco-languages/{name}",
        ]
    for name, (_, path) in configs.items():
        for flow_name in ("croco-pipeline", "croco-evaluate", "croco-languages"):
            found = deployment(prefect_api, f"{flow_name}/{name}")
            assert found.parameters == {"config": str(path)}  # made absolute
            assert [s.schedule.cron for s in found.schedules] == (
                ["* * * * *"] if flow_name == "croco-languages" else []
            )
        assert f"croco {name}: new languages" in automations(prefect_api)  # tests/test_deploy.py checks the rest

    with worker(prefect_api, tmp_path / "worker.log", cwd=tmp_path):
        for name, (cfg, _) in configs.items():  # each schedule fired: its run touched only its config's storage
            wait_for_completed(prefect_api, f"croco-languages/{name}", 1)
            assert {run["name"] for run in runs.records(Storage(cfg.storage.root))} == {name}
            assert version(cfg, "generate/en").committed()
        for name in configs:  # deployed again without --schedule: no more scheduled runs
            assert croco(prefect_api, team, "deploy", f"{name}.yaml").returncode == 0
            found = deployment(prefect_api, f"croco-languages/{name}")
            assert found.schedules == []
        alpha, alpha_path = configs["alpha"]
        beta_runs = len(flow_runs(prefect_api, "croco-languages/beta"))
        english = version(alpha, "generate/en").manifest()["committed_at"]

        notify = croco(prefect_api, elsewhere, "plan", str(alpha_path), "languages=[en,da]", "--notify")
        assert notify.returncode == 0, notify.stderr
        assert notify.stdout.count("announced da to the Prefect server") == 1, notify.stdout
        assert "EventsWorker" not in notify.stderr + notify.stdout, notify.stderr
        deadline = time.monotonic() + 420
        while not (
            triggered := [r for r in flow_runs(prefect_api, "croco-languages/alpha") if r.parameters.get("overrides")]
        ):
            assert time.monotonic() < deadline, "the event started no croco-languages/alpha run"
            time.sleep(2)
        assert triggered[0].parameters == {"config": str(alpha_path), "overrides": ["languages=[en,da]"]}
        done = wait_for_final(prefect_api, triggered[0].id)
        assert done.state.is_completed(), done.state
        [record] = [
            r for r in runs.records(Storage(alpha.storage.root)) if r["run_id"].endswith(str(done.id)[:8])
        ]  # croco.flows.execute: run ids end in the flow run id's first 8
        assert record["languages"] == ["en", "da"] and record["status"] == "completed"
        assert version(alpha, "generate/en").manifest()["committed_at"] == english  # only da did work
        assert (
            len(flow_runs(prefect_api, "croco-languages/beta")) == beta_runs
        )  # an event for alpha starts only alpha's run
        assert not [r for r in runs.records(Storage(configs["beta"][0].storage.root)) if "da" in r["languages"]]

        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: prefect_api["PREFECT_API_URL"]}):  # the UI's form, a relative path
            failed = run_deployment("croco-pipeline/alpha", parameters={"config": "tiny.yaml"}, timeout=300)
        assert failed.state.is_failed()
        message = f"config file tiny.yaml does not exist in {team}, this run's working folder"
        assert any(message in entry.message for entry in logs(prefect_api, failed.id)), failed.state.message

    relative = croco(prefect_api, team, "plan", "alpha.yaml", "--notify")
    assert relative.returncode == 2 and relative.stderr.strip() == (
        "croco: error: --notify: the config alpha.yaml is a relative path, which the worker would look for in its own "
        f"folder; give it as an absolute path ({alpha_path}) or a URI"
    )
    override = f"data.sources=[{{path: ../{Path(sources[0]['path']).name}}}]"
    uncarried = croco(prefect_api, team, "plan", str(alpha_path), override, "--notify")
    assert uncarried.returncode == 2 and uncarried.stderr.strip() == (
        f"croco: error: --notify: the override {override} names ../prompts.jsonl, a relative path the worker would "
        f"look for in its own folder; give it as an absolute path ({sources[0]['path']})"
    )

    undeploy = croco(prefect_api, elsewhere, "undeploy", "alpha")
    assert undeploy.returncode == 0 and undeploy.stdout.split()[1::2] == [
        "croco-pipeline/alpha",
        "croco-evaluate/alpha",
        "croco-languages/alpha",
    ]
    assert list(automations(prefect_api)) == ["croco beta: new languages"]
    assert deployment(prefect_api, "croco-languages/beta").parameters
    again = croco(prefect_api, elsewhere, "undeploy", "alpha")
    assert again.returncode == 2 and "has no croco deployments named alpha" in again.stderr
