"""The team's Prefect server under load: PostgreSQL from infra/prefect/postgres.sh behind infra/prefect-server.sh, the
deployments from deployments/prefect.yaml, one process worker, and four configs' croco-languages runs triggered at
once. SQLite's "database is locked" showed up on the long-running server while a triggered run started its tasks."""

import asyncio
from pathlib import Path

import pytest
from test_deployments import BIN, prefect, wait_for_completed

from conftest import REPO, background, make_config, prompt_record, save_config, write_jsonl
from croco import runs
from croco.storage import Storage

LANGUAGES = "croco-languages/croco-languages"


@pytest.mark.slow
def test_postgres_server_runs_four_triggered_runs_at_once_without_tracebacks(
    tmp_path, tiny_models, prefect_postgres_server
):
    env = prefect_postgres_server.env
    rows = [prompt_record(f"p{i}", lang, f"Question {i} in {lang}?") for lang in ("en", "da") for i in range(2)]
    sources = [{"path": str(write_jsonl(tmp_path / "prompts.jsonl", rows))}]
    configs = {}
    for team in ("a", "b", "c", "d"):
        cfg = make_config(
            tmp_path / team, tiny_models, sources, name=team, sft={"enabled": False}, dpo={"enabled": False}
        )
        configs[str(save_config(cfg, tmp_path / f"{team}.yaml"))] = cfg

    prefect(env, "work-pool", "create", "croco", "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    worker_log = tmp_path / "worker.log"  # the flow runs' own output too: a process worker passes it on
    with background([str(BIN / "prefect"), "worker", "start", "--pool", "croco"], None, worker_log, env=env, cwd=REPO):
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            for config in configs:  # as fast as a trigger would: the worker's next poll picks all of them up
                run_deployment(LANGUAGES, parameters={"config": config}, timeout=0)
        finished = wait_for_completed(env, LANGUAGES, len(configs), timeout=900)

    assert sorted(r.parameters["config"] for r in finished) == sorted(configs)
    assert max(r.start_time for r in finished) < min(r.end_time for r in finished), "the runs did not overlap"
    for cfg in configs.values():
        [record] = runs.records(Storage(cfg.storage.root))
        assert record["status"] == "completed" and record["languages"] == ["en", "da"]
    assert completed_flow_runs_in(prefect_postgres_server.database) == len(configs)  # PostgreSQL, not a SQLite file
    for log in (prefect_postgres_server.log, worker_log):
        text = Path(log).read_text()
        assert "database is locked" not in text and "Traceback" not in text, f"{log}: {text[-4000:]}"


def completed_flow_runs_in(database_url: str) -> int:
    import asyncpg

    async def count() -> int:
        connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return await connection.fetchval("SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'")
        finally:
            await connection.close()

    return asyncio.run(count())
