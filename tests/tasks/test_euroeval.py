"""EuroEval: the results file in both formats, the units, the dataset check, and one real run offline.

The real run needs EuroEval installed in its own environment: `make test` builds
.venv-euroeval (EuroEval 16.11, the last release for Python 3.11); CROCO_EUROEVAL_PYTHON
points elsewhere. Without one, those tests are skipped and say why.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, background, free_port, make_config, run, transformers_serve
from croco import runs
from croco.config import ModelConfig
from croco.errors import CrocoError
from croco.plan import build_plan, describe
from croco.records import EUROEVAL_SCORE
from croco.storage import Storage
from croco.tasks import euroeval

DATA = Path(__file__).parent / "euroeval_data"
FLAT = {  # a record as EuroEval 16.11 wrote it on this machine
    "dataset": "angry-tweets",
    "task": "classification",
    "languages": ["da"],
    "model": "policy",
    "results": {
        "raw": [],
        "total": {"test_mcc": 10.0, "test_mcc_se": 2.0, "test_macro_f1": 40.0, "test_macro_f1_se": float("nan")},
    },
    "few_shot": True,
    "validation_split": False,
    "euroeval_version": "16.11.0",
}
EEE = {  # the same kind of record in the Every Eval Ever schema EuroEval writes from 17.0
    "schema_version": "0.2.1",
    "model_info": {"name": "dpo", "id": "dpo"},
    "eval_library": {
        "name": "euroeval",
        "version": "17.0.0",
        "additional_details": {"dataset": "angry-tweets", "languages": '["da"]', "few_shot": "true"},
    },
    "evaluation_results": [
        {
            "evaluation_name": "test_mcc",
            "score_details": {"score": 13.5, "uncertainty": {"confidence_interval": {"lower": 12.0, "upper": 15.0}}},
        },
        {"evaluation_name": "test_macro_f1", "score_details": {"score": 41.0}},
    ],
}


def test_both_result_formats_become_one_comparison(tmp_path, tiny_models, prompts_file):
    results = tmp_path / "euroeval_benchmark_results.jsonl"
    results.write_text(
        "".join("\n" + json.dumps(r) for r in (FLAT, EEE))
    )  # EuroEval's own layout: a newline before each record
    rows = euroeval.read_results(results)
    assert [(r["model"], r["metric"], r["score"], r["ci95"]) for r in rows] == [
        ("policy", "mcc", 10.0, 2.0),
        ("policy", "macro_f1", 40.0, None),
        ("dpo", "mcc", 13.5, 1.5),
        ("dpo", "macro_f1", 41.0, None),
    ]
    # Each model's rows go into its own version, as the units write them; the summary compares them.
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], languages=["da"])
    storage = Storage(cfg.storage.root)
    versions = {}
    for name, key in (("dpo", "k2"), ("policy", "k1")):  # the baseline last: the table still lists it first
        version = storage.version("euroeval", "da", key)
        version.write_shard(euroeval.SHARD, euroeval.scores(rows, name, name, "da", ["angry-tweets"]), EUROEVAL_SCORE)
        version.commit({"euroeval_version": "16.11.0"})
        versions[f"euroeval/da/{name}"] = version
    lines = euroeval.summarize(cfg, versions)
    assert lines[0].startswith("EuroEval 16.11.0, test split, few-shot")
    assert lines[4:] == [
        "| da | angry-tweets | macro_f1 | policy | 40.00 | – |  |",
        "| da | angry-tweets | macro_f1 | dpo | 41.00 | – | +1.00 |",
        "| da | angry-tweets | mcc | policy | 10.00 | 2.00 |  |",
        "| da | angry-tweets | mcc | dpo | 13.50 | 1.50 | +3.50 |",
    ]


def test_languages_without_datasets_are_counted_skips_with_their_reason(tmp_path, tiny_models, prompts_file):
    cfg = make_config(
        tmp_path / "store",
        tiny_models,
        [{"path": str(prompts_file)}],
        languages=["da", "ga", "en", "nb"],
        evaluate={"run_adapters": [], "models": {"twin": {"path": tiny_models["policy"]}}},
        euroeval={"enabled": True},
    )
    assert list(euroeval.dataset_table(cfg)) == ["da", "en"]
    assert euroeval.units(cfg) == [("da", "policy"), ("da", "twin"), ("en", "policy"), ("en", "twin")]
    plan = build_plan(cfg, ["euroeval"])
    assert plan.skipped == {
        "euroeval/ga": "EuroEval has no datasets in Irish (ga)",
        "euroeval/nb": "croco's EuroEval table (`croco euroeval-datasets`) lists no datasets for Norwegian Bokmål (nb); set euroeval.datasets.nb to benchmark it",
    }
    skips = [row for row in describe(plan, Storage(cfg.storage.root)) if row["state"].startswith("skipped")]
    assert [row["unit"] for row in skips] == [
        "euroeval/ga",
        "euroeval/nb",
    ]  # `croco plan` and the run's plan table show them
    # Two names for one model are two versions: each holds rows under its own name.
    assert plan.by_id["euroeval/da/policy"].key != plan.by_id["euroeval/da/twin"].key


@pytest.mark.parametrize("code", ["dk", "ga"])
def test_a_datasets_key_that_is_no_euroeval_language_is_a_config_error(tmp_path, tiny_models, prompts_file, code):
    with pytest.raises(
        CrocoError,
        match=rf"^config: key euroeval\.datasets: '{code}' is not a language EuroEval has datasets for; use one of en, da, ",
    ):
        make_config(
            tmp_path / "store",
            tiny_models,
            [{"path": str(prompts_file)}],
            languages=["da"],
            euroeval={"enabled": True, "datasets": {code: ["angry-tweets"]}},
        )


def euroeval_python() -> str:
    found = os.environ.get("CROCO_EUROEVAL_PYTHON") or str(REPO / ".venv-euroeval" / "bin" / "python")
    if not Path(found).exists():
        pytest.skip(
            f"EuroEval is not installed: no interpreter at {found} (run `make euroeval-env` or set CROCO_EUROEVAL_PYTHON)"
        )
    probe = subprocess.run([found, "-c", "import euroeval"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"EuroEval does not import with {found}: {probe.stderr.strip().splitlines()[-1:]}")
    return found


def euroeval_config(tmp_path, tiny_models, prompts_file, smollm_dir, python, datasets, extra_args=()):
    return make_config(
        tmp_path / "store",
        {**tiny_models, "policy": str(smollm_dir)},
        [{"path": str(prompts_file)}],
        languages=["da"],
        evaluate={"run_adapters": []},
        euroeval={
            "enabled": True,
            "python": python,
            "datasets": datasets,
            "iterations": 2,
            "extra_args": ["--custom-datasets-file", str(DATA / "custom_datasets.py"), *extra_args],
        },
    )


def test_unknown_dataset_names_stop_before_any_model_loads(
    tmp_path, tiny_models, prompts_file, smollm_dir, monkeypatch
):
    monkeypatch.setenv("CROCO_CACHE", str(tmp_path / "cache"))
    cfg = euroeval_config(
        tmp_path, tiny_models, prompts_file, smollm_dir, euroeval_python(), {"da": ["angry-tweets", "multiloko-da"]}
    )
    unit = build_plan(cfg, ["euroeval"]).by_id["euroeval/da/policy"]
    with pytest.raises(
        CrocoError,
        match=r"EuroEval 16\.\d+\.\d+ has no dataset 'multiloko-da' for Danish \(da\); set euroeval.datasets.da to names from: .*angry-tweets",
    ):
        euroeval.euroeval.fn(cfg, unit)
    assert not (tmp_path / "cache" / "work").exists()  # stopped before the model folder was made


@pytest.mark.slow
def test_real_euroeval_offline_on_a_local_dataset_and_a_local_server(
    tmp_path, tiny_models, prompts_file, smollm_dir, monkeypatch
):
    python = euroeval_python()
    monkeypatch.setenv("CROCO_CACHE", str(tmp_path / "cache"))  # the work folder; smollm_dir is resolved already
    proxy_port = free_port()
    cfg = euroeval_config(
        tmp_path,
        tiny_models,
        prompts_file,
        smollm_dir,
        python,
        {"da": ["croco-tiny-sentiment-da"]},
        ["--api-base", f"http://127.0.0.1:{proxy_port}/v1", "--api-key", "unused"],
    )
    plan = build_plan(cfg, ["euroeval"])
    unit = plan.by_id["euroeval/da/policy"]
    storage = Storage(cfg.storage.root)
    version = storage.version_at(unit.version_path)
    workdir = version.work_folder()
    for metric in (
        DATA / "metrics"
    ).iterdir():  # EuroEval loads metrics by name; offline they must sit in its working folder
        shutil.copytree(metric, workdir / metric.name)
    # The folder EuroEval is told about (<workdir>/policy), made first so the server can serve it under that name.
    euroeval.model_folder("policy", ModelConfig(path=str(smollm_dir)), workdir)
    with transformers_serve("policy", tmp_path / "serve.log", cwd=workdir) as url:
        proxy = [sys.executable, str(DATA / "strip_stop_proxy.py"), str(proxy_port), url.removesuffix("/v1")]
        with background(proxy, f"http://127.0.0.1:{proxy_port}/health", tmp_path / "proxy.log"):
            reference = euroeval.euroeval.fn(cfg, unit)
    assert reference["version"] == unit.version_path
    scores = version.read(EUROEVAL_SCORE).to_pylist()
    assert {(s["model"], s["language"], s["dataset"]) for s in scores} == {("policy", "da", "croco-tiny-sentiment-da")}
    assert {s["metric"] for s in scores} == {"mcc", "macro_f1"} and all(
        0 <= s["score"] <= 100 for s in scores if s["metric"] == "macro_f1"
    )
    manifest = version.manifest()
    assert (
        manifest["euroeval_version"].startswith("16.") and manifest["records_in"] == 1 and manifest["records_out"] == 2
    )
    assert b"Completed 1 benchmarks" in storage.fs.cat_file(
        version.file_uri(euroeval.LOG_FILE)
    )  # EuroEval's log, kept in the version
    assert "| da | croco-tiny-sentiment-da | mcc | policy |" in "\n".join(euroeval.summarize(cfg, {unit.id: version}))
    # Committed and intact: the next run of this unit is a cache hit and runs nothing.
    assert [row["state"] for row in describe(plan, storage)] == ["cached"]


FAKE_CLI = '''
import json
from pathlib import Path


def benchmark(args):
    """Writes a result per dataset, what its process was given (command line and key), and prints the key it got."""
    key = args[args.index("--api-key") + 1] if "--api-key" in args else None
    model = args[args.index("--model") + 1]
    total = {"test_mcc": 10.0, "test_mcc_se": 1.0}
    with open("euroeval_benchmark_results.jsonl", "a") as results:
        for dataset in (args[i + 1] for i, a in enumerate(args) if a == "--dataset"):
            results.write("\\n" + json.dumps({"dataset": dataset, "languages": ["da"], "model": model, "results": {"total": total}, "few_shot": True}))
    cmdline = Path("/proc/self/cmdline").read_bytes().replace(b"\\0", b" ").decode()
    Path("seen.json").write_text(json.dumps({"cmdline": cmdline, "api_key": key}))
    print(f"benchmarking {model} with API key {key}")
    return 0
'''
FAKE_REGISTRY = """
from types import SimpleNamespace


def get_all_dataset_configs(custom_datasets_file):
    return {"fake-sentiment-da": SimpleNamespace(name="fake-sentiment-da", languages=[SimpleNamespace(code="da")])}
"""


def fake_euroeval(folder: Path, version: str = "0.0.1") -> str:
    """An interpreter whose `euroeval` is a stand-in that records what its process received."""
    package = folder / "fake-euroeval"
    (package / "euroeval").mkdir(parents=True)
    (package / "euroeval" / "__init__.py").write_text("")
    (package / "euroeval" / "cli.py").write_text(FAKE_CLI)
    (package / "euroeval" / "dataset_configs.py").write_text(FAKE_REGISTRY)
    (package / f"euroeval-{version}.dist-info").mkdir()
    (package / f"euroeval-{version}.dist-info" / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: euroeval\nVersion: {version}\n"
    )
    python = folder / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={package} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return str(python)


def test_api_keys_reach_euroeval_only_through_its_environment_and_nowhere_else(
    tmp_path, tiny_models, prompts_file, monkeypatch, caplog, capfd
):
    key, pasted = "sk-croco-test-0123456789abcdef", "pasted-into-extra-args-42"
    monkeypatch.setenv("CROCO_TEST_EUROEVAL_KEY", key)
    monkeypatch.setenv("CROCO_CACHE", str(tmp_path / "cache"))  # EuroEval's work folder
    cfg = make_config(
        tmp_path / "store",
        tiny_models,
        [{"path": str(prompts_file)}],
        languages=["da", "ga"],
        evaluate={"run_adapters": []},
        euroeval={
            "enabled": True,
            "python": fake_euroeval(tmp_path),
            "datasets": {"da": ["fake-sentiment-da"]},
            "api_key_env": "CROCO_TEST_EUROEVAL_KEY",
            "extra_args": ["--api-key", pasted],
        },  # the second key in the wrong place
    )
    caplog.set_level("INFO")
    result = run(cfg, stages=["euroeval"])
    seen = json.loads(next((tmp_path / "cache" / "work").rglob("seen.json")).read_text())
    assert seen["api_key"] == key and key not in seen["cmdline"] and pasted not in seen["cmdline"]  # `ps` shows neither
    written = [path for path in Path(cfg.storage.root).rglob("*") if path.is_file()]
    assert {"manifest.json", "euroeval.log", "report.md", f"{result['run_id']}.json"} <= {path.name for path in written}
    printed = "".join(capfd.readouterr())
    for secret in (key, pasted):
        assert [path for path in written if secret.encode() in path.read_bytes()] == []
        assert secret not in caplog.text and secret not in printed
    log = (Path(result["versions"]["euroeval/da/policy"]) / "files" / euroeval.LOG_FILE).read_text()
    assert "with API key ***" in log
    # The language EuroEval has no datasets in is a counted skip, in the run record and the report.
    record = runs.records(Storage(cfg.storage.root))[0]
    assert record["skipped"] == {"euroeval/ga": "EuroEval has no datasets in Irish (ga)"}
    assert "- euroeval/ga: skipped, EuroEval has no datasets in Irish (ga)" in Path(result["report"]).read_text()


def test_the_key_holds_euroevals_version_not_where_its_interpreter_is(tmp_path, tiny_models, prompts_file):
    def key(python: str) -> str:
        cfg = make_config(
            tmp_path / "store",
            tiny_models,
            [{"path": str(prompts_file)}],
            languages=["da"],
            evaluate={"run_adapters": []},
            euroeval={"enabled": True, "python": python, "datasets": {"da": ["fake-sentiment-da"]}},
        )
        return build_plan(cfg, ["euroeval"]).by_id["euroeval/da/policy"].key

    here, moved, newer = (
        fake_euroeval(tmp_path / name, version) for name, version in (("a", "0.0.1"), ("b", "0.0.1"), ("c", "0.0.2"))
    )
    assert key(here) == key(moved) != key(newer)


def test_a_named_version_keys_the_units_without_the_interpreter_and_a_unit_checks_it(
    tmp_path, tiny_models, prompts_file
):
    def config(python: str, version: str):
        return make_config(
            tmp_path / "store",
            tiny_models,
            [{"path": str(prompts_file)}],
            languages=["da"],
            evaluate={"run_adapters": []},
            euroeval={"enabled": True, "python": python, "version": version, "datasets": {"da": ["fake-sentiment-da"]}},
        )

    def key(cfg) -> str:
        return build_plan(cfg, ["euroeval"]).by_id["euroeval/da/policy"].key

    installed = fake_euroeval(tmp_path / "job-image", "0.0.2")
    on_login_node = config(str(tmp_path / "no-such-python"), "0.0.2")  # the login node cannot run the job's EuroEval
    assert key(on_login_node) == key(config(installed, "0.0.2")) != key(config(installed, "0.0.1"))
    stale = config(installed, "0.0.1")
    with pytest.raises(CrocoError, match=r"euroeval.version is 0.0.1 but .*job-image/python has EuroEval 0.0.2; set"):
        euroeval.euroeval.fn(stale, build_plan(stale, ["euroeval"]).by_id["euroeval/da/policy"])
