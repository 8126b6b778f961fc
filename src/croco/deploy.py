"""`croco deploy` and `croco undeploy`: one config's three deployments on a Prefect server.

Each config gets `croco-pipeline/NAME`, `croco-evaluate/NAME` and `croco-languages/NAME` (NAME: the config's
`name`), with the config's absolute path or URI as their parameter. The schedule and the trigger belong to the
languages deployment: each config is brought up to date on its own, and an event announcing new languages for one
config (`croco plan CONFIG --notify`) starts only that config's run. The flows are imported from the installed croco;
a run's working folder is the folder `croco deploy` ran in, where a config's relative paths (a `storage.root` such
as runs/demo) resolve as they do for `croco run` there.
"""

from __future__ import annotations

from pathlib import Path

from croco.errors import CrocoError
from croco.events import LANGUAGES_ADDED, needs_a_server, resource_id

FLOWS = {
    "croco-pipeline": "croco.flows.pipeline.pipeline",
    "croco-evaluate": "croco.flows.evaluate.evaluate",
    "croco-languages": "croco.flows.languages.languages",
}
# The flow run's process sets up Prefect's logging before it imports croco: name croco's logger here, so the stage
# logs reach the run's logs in the UI (as deployments/prefect.yaml does).
JOB_ENV = {"env": {"PREFECT_LOGGING_EXTRA_LOGGERS": "croco"}}


def absolute_config(config: str) -> str:
    """The config as every machine names it: a URI as given, a local path made absolute."""
    return config if "://" in config else str(Path(config).expanduser().resolve())


def deploy(name: str, config: str, schedule: str | None, pool: str) -> list[str]:
    """Create or update NAME's three deployments; returns their full names."""
    from prefect.client.orchestration import get_client
    from prefect.deployments.runner import RunnerDeployment
    from prefect.exceptions import ObjectNotFound
    from prefect.runner.storage import LocalStorage
    from prefect.settings import PREFECT_API_URL

    needs_a_server("croco deploy")
    schedules = _schedules(schedule)
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise CrocoError(
                f"the Prefect server at {PREFECT_API_URL.value()} has no work pool {pool}; create it with "
                f"`prefect work-pool create {pool} --type process` (or name yours with --pool)"
            ) from None
    names = []
    for flow_name, entrypoint in FLOWS.items():
        languages = flow_name == "croco-languages"
        deployment = RunnerDeployment.from_storage(
            storage=LocalStorage(str(Path.cwd())),  # the pull step sets the run's working folder
            entrypoint=entrypoint,
            name=name,
            parameters={"config": config},
            schedules=schedules if languages else None,
            triggers=[_new_languages_trigger(name)] if languages else None,
            work_pool_name=pool,
            job_variables=JOB_ENV,
        )
        deployment.apply()  # an update replaces the schedules: redeployed without --schedule, it keeps none
        names.append(f"{flow_name}/{name}")
    return names


def undeploy(name: str) -> list[str]:
    """Delete NAME's deployments (their automations go with them); returns the full names deleted."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    needs_a_server("croco undeploy")
    deleted = []
    with get_client(sync_client=True) as client:
        for flow_name in FLOWS:
            try:
                found = client.read_deployment_by_name(f"{flow_name}/{name}")
            except ObjectNotFound:
                continue
            client.delete_resource_owned_automations(f"prefect.deployment.{found.id}")
            client.delete_deployment(found.id)
            deleted.append(f"{flow_name}/{name}")
    if not deleted:
        raise CrocoError(
            f"the Prefect server has no croco deployments named {name}; `prefect deployment ls` lists them"
        )
    return deleted


def _schedules(cron: str | None) -> list:
    from prefect.schedules import Cron

    if cron is None:
        return []
    try:
        return [Cron(cron, timezone="UTC")]
    except ValueError:
        raise CrocoError(
            f"--schedule {cron!r} is not a cron expression; write five fields, e.g. '0 3 * * *' (daily at 03:00 UTC)"
        ) from None


def _new_languages_trigger(name: str):
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"croco {name}: new languages",
        description=f"Runs croco-languages/{name} when `croco plan --notify` announces new languages for the config "
        f"named {name} (event {LANGUAGES_ADDED} from resource {resource_id(name)}), with the config and "
        "overrides the event carries.",
        match={"prefect.resource.id": resource_id(name)},
        expect={LANGUAGES_ADDED},
        parameters={"config": "{{ event.payload.config }}", "overrides": "{{ event.payload.overrides }}"},
    )
