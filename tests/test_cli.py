import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_redaction import PLANTED, stored_flow_runs

from conftest import REPO, make_config, prompt_record, save_config, write_jsonl
from croco.cli import main
from croco.config import STAGE_NAMES
from croco.errors import CrocoError
from croco.tasks import STAGE_DOCS


@pytest.mark.parametrize("command", ["run", *STAGE_DOCS, "audit-reward", "config", "plan", "runs", "gc"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert "KEY=VALUE" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("generate.num_sampels=2", "{config}: unknown key generate.num_sampels; did you mean generate.num_samples?"),
        (
            "models.policy.path=../escape",
            "{config}: key models.policy.path: names neither a folder that exists here nor a Hugging Face id such as org/name (got '../escape')",
        ),
        (
            "languages=[en, da",
            "override 'languages=[en, da' is not valid YAML (expected ',' or ']', but got '<stream end>'); write the value as in a config file, e.g. languages=[en,da]",
        ),
    ],
)
def test_user_errors_are_one_line_without_traceback(override, error):
    config = REPO / "configs" / "demo.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "croco.cli", "run", str(config), override], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["croco: error: " + error.format(config=config)]


@pytest.mark.parametrize("command", ["config", "plan"])
def test_config_refuses_an_evaluated_model_name_that_plan_would_refuse_with_the_same_sentence(command, capsys):
    config = REPO / "configs" / "demo.yaml"
    assert main([command, str(config), "evaluate.models={../escape: {path: org/model}}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"croco: error: {config}: key evaluate.models.../escape: a model name may hold only letters, digits, '_', '.' "
        "and '-' (got '../escape')"
    ]


def test_output_into_a_pipe_closed_early_ends_quietly():
    """`croco config --reference | head`: no BrokenPipeError traceback."""
    croco = subprocess.Popen(
        [sys.executable, "-m", "croco.cli", "config", "--reference"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    fcntl.fcntl(croco.stdout, fcntl.F_SETPIPE_SZ, 4096)  # smaller than the reference: croco writes after the close
    assert croco.stdout.readline().startswith("| key |")
    croco.stdout.close()
    assert croco.wait(timeout=120) == 128 + signal.SIGPIPE
    assert croco.stderr.read() == ""


def test_a_line_logged_after_a_command_finds_no_closed_stream(tmp_path):
    """croco's handler is the command's: a line logged once the command is over (a thread at exit, the next command
    in the same process, whose stderr was a capture since closed) prints no `--- Logging error ---`."""
    script = (
        "import logging, sys\n"
        "from croco.cli import main\n"
        f"captured = open({str(tmp_path / 'stderr.txt')!r}, 'w')\n"
        "real, sys.stderr = sys.stderr, captured\n"
        "main(['languages'])\n"
        "captured.close()\n"
        "sys.stderr = real\n"
        "logging.getLogger('croco').warning('logged after the command')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "logged after the command\n"


def test_a_user_error_inside_a_flow_run_is_its_sentence_and_the_run_log_keeps_the_traceback(
    tmp_path, tiny_models, prefect_server
):
    cfg = make_config(
        tmp_path / "store",
        tiny_models,
        [{"path": str(tmp_path / "missing.jsonl")}],
        sft={"enabled": False},
        dpo={"enabled": False},
    )
    config = save_config(cfg, tmp_path / "cfg.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "croco.cli", "run", str(config)],
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Encountered exception" not in result.stderr, result.stderr
    assert (
        result.stderr.splitlines()[-1]
        == f"croco: error: data file {tmp_path / 'missing.jsonl'} does not exist (data.sources)"
    )
    [flow_run] = [run for run in stored_flow_runs(prefect_server) if run.parameters.get("config") == str(config)]
    assert any("Traceback" in line.message for line in run_logs(prefect_server, flow_run.id))


def test_only_a_user_error_loses_its_traceback_on_the_terminal():
    from croco.cli import _UserErrorFilter

    def reported(error: Exception, logger: str) -> bool:
        try:
            raise error
        except Exception:
            record = logging.getLogger(logger).makeRecord(
                logger,
                logging.ERROR,
                __file__,
                1,
                "Encountered exception during execution: %r",
                (error,),
                sys.exc_info(),
            )
        return _UserErrorFilter().filter(record)

    assert not reported(CrocoError("a sentence"), "prefect.flow_runs") and not reported(
        CrocoError("a sentence"), "prefect.task_runs"
    )
    assert reported(ValueError("a bug"), "prefect.flow_runs") and reported(CrocoError("not a run's report"), "croco")


def test_a_credential_in_an_override_is_refused_before_any_flow_run_exists(tmp_path, prefect_server, capsys):
    config = tmp_path / "cli.yaml"
    shutil.copy(REPO / "configs" / "demo.yaml", config)
    for override, secret in PLANTED.items():
        assert main(["run", str(config), override]) == 2
        error = capsys.readouterr().err
        assert (
            "holds a credential, which Prefect would store with the flow run; put the key in the environment variable"
            in error
            and secret not in error
        )
    assert not [run for run in stored_flow_runs(prefect_server) if run.parameters.get("config") == str(config)]


def test_a_killed_run_leaves_no_temporary_prefect_server(tmp_path, tiny_models, prompts_file):
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], generate={"num_samples": 64})
    config = save_config(cfg, tmp_path / "cfg.yaml")
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(tmp_path / "prefect-home")
    }
    log = tmp_path / "croco.log"
    with open(log, "wb") as out:
        croco = subprocess.Popen(
            [sys.executable, "-m", "croco.cli", "run", str(config)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    servers = []
    try:
        deadline = time.monotonic() + 300
        while b"Beginning flow run" not in log.read_bytes():  # the temporary server is up: a flow run was created on it
            assert croco.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        servers = [
            pid
            for pid in children(croco.pid)
            if b"prefect.server.api.server:create_app" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert servers and croco.poll() is None
        croco.kill()
        croco.wait()
        deadline = time.monotonic() + 15
        while any(map(alive, servers)) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not [pid for pid in servers if alive(pid)]
    finally:
        croco.kill()
        for pid in filter(alive, servers):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("entry", ["croco prompts CONFIG", "pipeline(config, stages=['prompts'])"])
def test_a_first_run_with_no_server_sends_no_telemetry_and_prints_no_traceback(tmp_path, tiny_models, entry):
    """A fresh PREFECT_HOME and no server: croco's temporary server (the CLI's) or Prefect's (the Python API's)
    creates its SQLite database; its telemetry heartbeat, writing there meanwhile, printed "database is locked"."""
    rows = [prompt_record("p0", "en"), prompt_record("p0", "da")]
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(write_jsonl(tmp_path / "prompts.jsonl", rows))}])
    config = str(save_config(cfg, tmp_path / "cfg.yaml"))
    home = tmp_path / "prefect-home"
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(home)
    }
    python = (
        ["-m", "croco.cli", "prompts", config]
        if entry.startswith("croco")
        else ["-c", f"from croco.flows.pipeline import pipeline; pipeline(config={config!r}, stages=['prompts'])"]
    )
    done = subprocess.run([sys.executable, *python], env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output[-3000:]
    with sqlite3.connect(home / "prefect.db") as database:
        settings = {key for (key,) in database.execute("SELECT key FROM configuration")}
    assert "TELEMETRY_SESSION" not in settings  # the heartbeat's first write; it never ran


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def run_logs(api_url: str, flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            return await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))

    with temporary_settings({PREFECT_API_URL: api_url}):
        return asyncio.run(read())


def test_config_prints_the_resolved_config(capsys):
    assert main(["config", str(REPO / "configs" / "demo.yaml"), "generate.num_samples=3"]) == 0
    out = capsys.readouterr().out
    assert "num_samples: 3" in out and "top_p: 1.0" in out


def test_languages_lists_the_registry(capsys):
    assert main(["languages"]) == 0
    assert "ga  Irish" in capsys.readouterr().out


def test_readme_config_reference_is_current():
    from croco.config import config_reference

    readme = (REPO / "README.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "\n<!-- config-reference:end -->"
    assert readme[readme.index(start) + len(start) : readme.index(end)] == config_reference(), (
        "regenerate it with `croco config --reference`"
    )


def test_help_lists_every_stage_in_pipeline_order():
    from croco.plan import stage_modules
    from croco.tasks import ON_DEMAND_DOCS, STAGE_DOCS

    assert [*STAGE_DOCS, *ON_DEMAND_DOCS] == STAGE_NAMES == [module.NAME for module in stage_modules()]


def test_prefetch_of_the_demo_has_nothing_to_download():
    assert main(["prefetch", str(REPO / "configs" / "demo.yaml")]) == 0


def test_plan_runs_and_gc_show_what_is_stored(tmp_path, tiny_models, prompts_file, capsys):
    from conftest import make_config, run, save_config

    cfg = make_config(
        tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], sft={"enabled": False}, dpo={"enabled": False}
    )
    path = save_config(cfg, tmp_path / "cfg.yaml")
    assert main(["plan", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        [unit, "run"]
        for unit in ("prompts/en", "prompts/da", "generate/en", "generate/da", "score/en", "score/da", "pair/all")
    ]
    run(cfg, stages=["generate"])
    assert main(["plan", str(path), "generate.max_new_tokens=2"]) == 0
    states = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert states["prompts/en"] == "cached" and states["generate/en"] == "run"
    run(cfg, stages=["generate"], languages=["en"])
    assert main(["runs", str(path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["gc", str(path), "--keep", "1"]) == 0
    assert (
        capsys.readouterr().out.splitlines()[-1] == "deleted 2 versions and 1 run records; kept 2 versions"
    )  # prompts/da and generate/da: only the older run used them


def test_config_output_masks_keys_and_url_passwords(capsys):
    secret_overrides = [
        "generate.engine={name: openai, base_url: 'http://user:url-password-1@127.0.0.1:8000/v1', api_key_env: CROCO_KEY}",
        "euroeval.extra_args=[--api-key, pasted-key-2]",
    ]
    assert main(["config", str(REPO / "configs" / "demo.yaml"), *secret_overrides]) == 0
    out = capsys.readouterr().out
    assert "url-password-1" not in out and "pasted-key-2" not in out
    assert "base_url: http://***@127.0.0.1:8000/v1" in out and "api_key_env: CROCO_KEY" in out
