"""Shared fixtures: tiny random models (2 layers, 64 dims) on SmolLM2's real tokenizer, and configs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import yaml  # noqa: E402

from croco.config import CrocoConfig, parse_config  # noqa: E402
from croco.embedded import POLICY, PREFIX, resolve_model  # noqa: E402
from croco.plan import build_plan  # noqa: E402
from croco.storage import Storage, Version  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """Prefect's test harness (a temporary local server, about 12 s, once per session) where a server is not
    the point; every test has its own storage root, so the cache records are its own too. Yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    """The embedded SmolLM2 converted to safetensors (built once per machine in the croco cache)."""
    return Path(resolve_model(PREFIX + POLICY))


@pytest.fixture(scope="session")
def tiny_models(smollm_dir: Path, tmp_path_factory) -> dict[str, str]:
    """A random tiny causal LM and a random tiny one-logit classifier that share SmolLM2's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    root = tmp_path_factory.mktemp("tiny")
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    paths = {}
    for name, model in (
        ("policy", LlamaForCausalLM(LlamaConfig(**common))),
        ("reward", LlamaForSequenceClassification(LlamaConfig(**common, num_labels=1))),
    ):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


@pytest.fixture(scope="session")
def demo_reward(smollm_dir: Path, tmp_path_factory) -> tuple[str, dict]:
    """The demonstration reward model, fitted afresh for this test session (a few minutes on 2 cores)."""
    from croco.demo_reward import build_reward_model

    out = tmp_path_factory.mktemp("demo-reward")
    return str(out), build_reward_model(smollm_dir, out)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
        encoding="utf-8",
    )
    return path


def prompt_record(prompt_id: str, language: str, text: str = "Say something kind.") -> dict:
    return {"prompt_id": prompt_id, "language": language, "messages": [{"role": "user", "content": text}]}


TINY_TRAINING = {
    "max_length": 128,
    "max_prompt_length": 96,
    "gradient_accumulation": 1,
    "save_steps": 2,
    "eval_fraction": 0.2,
}


def make_config(root: Path | str, models: dict[str, str], sources: list[dict], **sections) -> CrocoConfig:
    raw = {
        "storage": {"root": str(root)},
        "languages": ["en", "da"],
        "models": {"policy": {"path": models["policy"]}, "reward": {"path": models["reward"]}},
        "data": {"sources": sources},
        "generate": {"num_samples": 2, "max_new_tokens": 6, "prompts_per_shard": 2, "engine": {"batch_size": 4}},
        "score": {"engine": {"batch_size": 4}},
        "sft": TINY_TRAINING,
        "dpo": TINY_TRAINING,
    }
    if "arena" not in sections:
        raw["arena"] = {"enabled": False}  # its default prompts live on the hub; arena tests give their own
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse_config(raw)


def save_config(cfg: CrocoConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def run(cfg: CrocoConfig, stages: list[str] | None = None, languages: list[str] | None = None) -> dict:
    """The pipeline flow on this config, in this process; its result (run id, report, versions, which units were cached)."""
    from croco.flows.pipeline import pipeline

    storage = Storage(cfg.storage.root)
    beside = (
        Path(storage.root + ".yaml") if storage.local else Path(tempfile.mkdtemp(prefix="croco-config-")) / "s3.yaml"
    )
    path = save_config(cfg, beside)
    return pipeline(config=str(path), stages=stages, languages=languages)


def version(cfg: CrocoConfig, unit_id: str) -> Version:
    """The version of one unit (e.g. generate/en, pair/all, arena/da/policy) of this config."""
    return Storage(cfg.storage.root).version_at(build_plan(cfg).by_id[unit_id].version_path)


def read(
    cfg: CrocoConfig, stage: str, schema: pa.Schema, columns: list[str] | None = None, skipped: bool = False
) -> pa.Table:
    """Every unit of one stage, concatenated."""
    storage = Storage(cfg.storage.root)
    return pa.concat_tables(
        storage.version_at(u.version_path).read(schema, columns, skipped=skipped) for u in build_plan(cfg).of(stage)
    )


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    records = [prompt_record(f"p{i}", lang, f"Question {i} in {lang}?") for lang in ("en", "da") for i in range(3)]
    return write_jsonl(tmp_path / "prompts.jsonl", records)


@contextlib.contextmanager
def background(command: list[str], ready_url: str | None, log: Path, cwd: Path | None = None, env: dict | None = None):
    """Run a server process until the block ends; ready once `ready_url` answers (at once without one)."""
    with open(log, "wb") as out:  # a file, not a pipe: an unread pipe fills up and blocks the server
        server = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env or {**os.environ, "HF_HUB_OFFLINE": "1"},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while ready_url:
            assert server.poll() is None, f"{command[:4]} exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{command[:4]} not ready after 120 s: {log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(ready_url, timeout=2):
                    break
            except OSError:
                time.sleep(0.25)
        yield
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the whole group: servers and workers start children
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def prefect_client_environment(prefect_home: Path) -> dict:
    """The environment of a user's shell with Prefect and croco on PATH and its own PREFECT_HOME, pointing at no
    server: no PREFECT_API_URL, and not the logging settings importing croco put in this process's environment."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PREFECT_HOME": str(prefect_home),
        "HF_HUB_OFFLINE": "1",
    }
    for inherited in ("PREFECT_API_URL", "PREFECT_LOGGING_EXTRA_LOGGERS", "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"):
        env.pop(inherited, None)
    return env


@dataclasses.dataclass
class PrefectServer:
    env: dict  # a client's environment, PREFECT_API_URL pointing at the server
    log: Path  # the server's output
    database: str  # the server's PREFECT_API_DATABASE_CONNECTION_URL


@pytest.fixture(scope="session")
def prefect_postgres_server(tmp_path_factory):
    """A Prefect server as a team runs one: PostgreSQL from infra/prefect/postgres.sh (Debian's package, a data
    folder and port of its own) and infra/prefect-server.sh pointed at it, each on a free port. Skips, saying why,
    where it cannot be set up: not root, or postgresql not installable. The database is deleted at the end."""
    if os.geteuid() != 0:
        pytest.skip("The PostgreSQL server tests need root to run infra/prefect/postgres.sh.")
    postgres = ["bash", str(REPO / "infra" / "prefect" / "postgres.sh")]
    data = tempfile.mkdtemp(prefix="croco-prefect-db-")  # not under tmp_path: the postgres user may not enter it
    started = subprocess.run([*postgres, "start", data, str(free_port())], capture_output=True, text=True)
    try:
        if started.returncode == 2:
            pytest.skip(f"No PostgreSQL on this machine: {started.stderr.strip().splitlines()[-1]}")
        assert started.returncode == 0, f"infra/prefect/postgres.sh start failed: {started.stderr[-2000:]}"
        home = tmp_path_factory.mktemp("prefect-postgres")
        client = prefect_client_environment(home / "prefect-home")
        database = started.stdout.strip()
        server = {**client, "PREFECT_API_DATABASE_CONNECTION_URL": database}  # clients need only the API
        port = free_port()
        command = ["bash", str(REPO / "infra" / "prefect-server.sh"), str(port)]
        with background(command, f"http://127.0.0.1:{port}/api/health", home / "server.log", env=server):
            yield PrefectServer(
                {**client, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}, home / "server.log", database
            )
    finally:
        subprocess.run([*postgres, "stop", data], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def transformers_serve(model: str, log: Path, cwd: Path | None = None):
    """`transformers serve` pinned to one model folder; yields its /v1 URL. The model loads before the port opens."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "transformers.cli.transformers",
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--dtype",
        "float32",
    ]
    with background(command, f"http://127.0.0.1:{port}/health", log, cwd):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="session")
def openai_server(smollm_dir: Path, tmp_path_factory):
    """A real OpenAI-compatible server: `transformers serve` on the embedded SmolLM2, on a free local port."""
    with transformers_serve(str(smollm_dir), tmp_path_factory.mktemp("serve") / "server.log") as url:
        yield url


@contextlib.contextmanager
def scripted_openai_server(reply):
    """An OpenAI-compatible /v1/chat/completions on a free local port whose answers a test writes, for what a real
    server cannot be made to do on demand (a content filter, an aborted sample, no token counts) and to see exactly
    what croco asks. `reply(request)` returns the response's `choices` and `usage`; yields (URL, requests received)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(request)
            body = json.dumps(
                {
                    "id": "scripted",
                    "object": "chat.completion",
                    "created": 0,
                    "model": request["model"],
                    **reply(request),
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", received
    finally:
        server.shutdown()
        server.server_close()


def scripted_choice(index: int, text: str, finish_reason: str | None = "stop") -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}


# Answers croco.langid names with confidence, every line of five words or more in its language.
DANISH_ANSWER = (
    "Himlen er blå, fordi luften spreder det blå lys mere end det røde lys.\n"
    "Det er derfor, at vi kan se en blå himmel om dagen, når solen skinner."
)
ENGLISH_ANSWER = "The sky is blue because the air scatters blue light more than red light."


def run_answering_in_danish_and_english(
    tmp_path: Path, models: dict[str, str], prompts: Path, stages: list[str], **sections
) -> tuple[CrocoConfig, dict]:
    """(config, result) of a run whose policy, a scripted server, answers every prompt twice: in Danish, then in English."""

    def reply(request):
        choices = [scripted_choice(0, DANISH_ANSWER), scripted_choice(1, ENGLISH_ANSWER)]
        return {"choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45}}

    with scripted_openai_server(reply) as (url, _):
        generate = {"engine": {"name": "openai", "base_url": url}}
        cfg = make_config(tmp_path / "store", models, [{"path": str(prompts)}], generate=generate, **sections)
        return cfg, run(cfg, stages=stages)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """infra/s3_server.py, as a user starts it; yields the environment croco reads (endpoint and credentials).
    Defined here, once: s3fs caches a filesystem per process, so a second server would be read through the first's."""

    sys.path.insert(0, str(REPO / "infra"))
    from s3_server import environment

    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "s3.log"
    with background(
        [sys.executable, str(REPO / "infra" / "s3_server.py"), "--port", str(port), "--bucket", "croco"],
        f"http://127.0.0.1:{port}/moto-api/",
        log,
    ):
        yield environment(port)


SLURM_SESSIONS = Path("/tmp/croco-slurm-test-sessions")  # one file per live test session using the test cluster


def slurm_running() -> bool:
    return bool(shutil.which("scontrol")) and subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def slurm_cluster():
    """The one-node SLURM test cluster (infra/slurm/setup-test-cluster.sh, idempotent, run as root); yields its
    default partition. At the end it is stopped only if this session started it and no other live test session
    (another engineer's, a parallel run) still uses it. Skips where it cannot be set up: not root, or no packages."""
    already_up = slurm_running()
    if os.geteuid() == 0:
        setup = subprocess.run(
            ["bash", str(REPO / "infra" / "slurm" / "setup-test-cluster.sh")], capture_output=True, text=True
        )
        if setup.returncode == 2:
            pytest.skip(f"No SLURM test cluster on this machine: {setup.stderr.strip().splitlines()[-1]}")
        assert setup.returncode == 0, f"infra/slurm/setup-test-cluster.sh failed: {setup.stderr[-2000:]}"
    elif not already_up:
        pytest.skip("The SLURM tests need root to start the test cluster (infra/slurm/setup-test-cluster.sh).")
    SLURM_SESSIONS.mkdir(exist_ok=True)
    with contextlib.suppress(PermissionError):
        SLURM_SESSIONS.chmod(0o1777)
    mine = SLURM_SESSIONS / str(os.getpid())
    mine.touch()
    try:
        yield "debug"
    finally:
        mine.unlink()
        if not already_up and not any(pid_alive(int(other.name)) for other in SLURM_SESSIONS.iterdir()):
            subprocess.run(["bash", str(REPO / "infra" / "slurm" / "teardown-test-cluster.sh")], capture_output=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True
