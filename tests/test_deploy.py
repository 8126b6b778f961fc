"""`croco deploy`, `croco undeploy` and what `--notify` refuses, against the session's Prefect server (no worker:
tests/flows/test_deployments.py runs the deployed flows)."""

import asyncio
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from croco.cli import main
from croco.errors import CrocoError
from croco.flows.execute import load_run_config


def ask(call):
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return await call(client)

    return asyncio.run(read())


def demo_named(path: Path, name: str) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    path.write_text(yaml.safe_dump({**raw, "name": name}))
    return path


@pytest.fixture
def pool():
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    try:
        ask(lambda client: client.create_work_pool(WorkPoolCreate(name="croco", type="process")))
    except ObjectAlreadyExists:
        pass
    return "croco"


def test_deploy_gives_each_config_its_schedule_and_trigger_and_undeploy_removes_them(
    tmp_path, monkeypatch, pool, capsys
):
    monkeypatch.chdir(tmp_path)
    demo_named(tmp_path / "alpha.yaml", "alpha"), demo_named(tmp_path / "beta.yaml", "beta")
    assert main(["deploy", "alpha.yaml", "--schedule", "0 3 * * *"]) == 0
    assert main(["deploy", "beta.yaml", "--schedule", "30 4 * * *"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        "deployed croco-pipeline/alpha",
        "deployed croco-evaluate/alpha",
        "deployed croco-languages/alpha",
    ]
    for name, cron in (("alpha", "0 3 * * *"), ("beta", "30 4 * * *")):
        for flow_name in ("croco-pipeline", "croco-evaluate", "croco-languages"):
            found = ask(lambda client: client.read_deployment_by_name(f"{flow_name}/{name}"))  # noqa: B023
            assert found.parameters == {"config": str(tmp_path / f"{name}.yaml")}
            assert found.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(tmp_path)}}
            ]
            assert [s.schedule.cron for s in found.schedules] == ([cron] if flow_name == "croco-languages" else [])
    triggers = {a.name: a for a in ask(lambda client: client.read_automations())}
    alpha = triggers["croco alpha: new languages"]
    assert alpha.trigger.match.model_dump() == {"prefect.resource.id": "croco.config.alpha"}
    assert alpha.description.startswith("Runs croco-languages/alpha when `croco plan --notify` announces new languages")
    assert alpha.actions[0].parameters == {
        "config": "{{ event.payload.config }}",
        "overrides": "{{ event.payload.overrides }}",
    }

    assert main(["deploy", "alpha.yaml"]) == 0  # again, without a schedule: the update keeps none
    assert ask(lambda client: client.read_deployment_by_name("croco-languages/alpha")).schedules == []
    assert [a.name for a in ask(lambda client: client.read_automations())].count("croco alpha: new languages") == 1

    capsys.readouterr()
    assert main(["undeploy", "alpha"]) == 0
    assert capsys.readouterr().out.split()[1::2] == [
        "croco-pipeline/alpha",
        "croco-evaluate/alpha",
        "croco-languages/alpha",
    ]
    names = [a.name for a in ask(lambda client: client.read_automations())]
    assert "croco alpha: new languages" not in names and "croco beta: new languages" in names
    assert main(["undeploy", "alpha"]) == 2
    assert "croco: error: the Prefect server has no croco deployments named alpha" in capsys.readouterr().err
    assert main(["undeploy", "beta"]) == 0


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (
            ["--pool", "nowhere"],
            "has no work pool nowhere; create it with `prefect work-pool create nowhere --type process`",
        ),
        (["--schedule", "daily"], "--schedule 'daily' is not a cron expression; write five fields, e.g. '0 3 * * *'"),
    ],
)
def test_deploy_refuses_a_missing_pool_and_a_schedule_that_is_no_cron(tmp_path, pool, arguments, error, capsys):
    assert main(["deploy", str(demo_named(tmp_path / "gamma.yaml", "gamma")), *arguments]) == 2
    assert error in capsys.readouterr().err
    assert not [d for d in ask(lambda client: client.read_deployments()) if d.name == "gamma"]


def test_notify_refuses_what_a_worker_elsewhere_could_not_read(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    demo_named(tmp_path / "delta.yaml", "delta")
    (tmp_path / "extra.jsonl").write_text("")
    assert main(["plan", "delta.yaml", "--notify"]) == 2
    assert capsys.readouterr().err.strip() == (
        "croco: error: --notify: the config delta.yaml is a relative path, which the worker would look for in its "
        f"own folder; give it as an absolute path ({tmp_path / 'delta.yaml'}) or a URI"
    )
    override = "data.sources=[{path: extra.jsonl}]"
    assert main(["plan", str(tmp_path / "delta.yaml"), override, "--notify"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"croco: error: --notify: the override {override} names extra.jsonl, a relative path the worker would look "
        f"for in its own folder; give it as an absolute path ({tmp_path / 'extra.jsonl'})"
    )
    assert main(["plan", str(tmp_path / "delta.yaml"), "--notify"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "nothing to announce: no earlier run of delta"


def test_a_relative_config_that_is_not_there_names_the_folder_it_was_looked_for_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CrocoError) as refused:
        load_run_config("tiny.yaml", None)
    assert str(refused.value) == (
        f"config file tiny.yaml does not exist in {tmp_path}, this run's working folder (a deployment's is the "
        "folder it was deployed from); give the config as an absolute path or a URI (s3://...)"
    )


def test_notify_sends_its_event_before_the_process_ends_and_says_so_once(prefect_server, tmp_path):
    import subprocess
    import sys

    import httpx

    send = (
        "from croco.events import languages_added; "
        "languages_added('epsilon', {'config': '/teams/epsilon.yaml', 'overrides': ['languages=[en,da]']}, ['da'])"
    )
    env = {"PREFECT_API_URL": prefect_server, "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", send], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr  # no EventsWorker warning
    query = {"event": {"name": ["croco.config.languages-added"]}, "resource": {"id": ["croco.config.epsilon"]}}
    for _ in range(30):  # the server stores events in batches
        found = httpx.post(f"{prefect_server}/events/filter", json={"filter": query}).json()["events"]
        if found:
            break
        time.sleep(1)
    assert [event["payload"] for event in found] == [
        {"config": "/teams/epsilon.yaml", "overrides": ["languages=[en,da]"], "languages": ["da"]}
    ]
