"""EuroEval: the results file in both formats, the units, the dataset check, and one real run offline.

The real run needs EuroEval installed in its own environment: `make test` builds
.venv-euroeval (EuroEval 16.11, the last release for Python 3.11); CROCO_EUROEVAL_PYTHON
points elsewhere. Without one, those tests are skipped and say why.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from croco.config import ModelConfig
from croco.errors import CrocoError
from croco.plan import build_plan, describe
from croco.records import EUROEVAL_SCORE
from croco.storage import Storage
from croco.tasks import euroeval

from conftest import REPO, background, free_port, make_config, transformers_serve

DATA = Path(__file__).parent / "euroeval_data"
FLAT = {  # a record as EuroEval 16.11 wrote it on this machine
    "dataset": "angry-tweets", "task": "classification", "languages": ["da"], "model": "policy",
    "results": {"raw": [], "total": {"test_mcc": 10.0, "test_mcc_se": 2.0, "test_macro_f1": 40.0, "test_macro_f1_se": float("nan")}},
    "few_shot": True, "validation_split": False, "euroeval_version": "16.11.0",
}
EEE = {  # the same kind of record in the Every Eval Ever schema EuroEval writes from 17.0
    "schema_version": "0.2.1",
    "model_info": {"name": "dpo", "id": "dpo"},
    "eval_library": {"name": "euroeval", "version": "17.0.0", "additional_details": {"dataset": "angry-tweets", "languages": "[\"da\"]", "few_shot": "true"}},
    "evaluation_results": [
        {"evaluation_name": "test_mcc", "score_details": {"score": 13.5, "uncertainty": {"confidence_interval": {"lower": 12.0, "upper": 15.0}}}},
        {"evaluation_name": "test_macro_f1", "score_details": {"score": 41.0}},
    ],
}


def test_both_result_formats_become_one_comparison(tmp_path, tiny_models, prompts_file):
    results = tmp_path / "euroeval_benchmark_results.jsonl"
    results.write_text("".join("\n" + json.dumps(r) for r in (FLAT, EEE)))  # EuroEval's own layout: a newline before each record
    rows = euroeval.read_results(results)
    assert [(r["model"], r["metric"], r["score"], r["ci95"]) for r in rows] == [
        ("policy", "mcc", 10.0, 2.0), ("policy", "macro_f1", 40.0, None), ("dpo", "mcc", 13.5, 1.5), ("dpo", "macro_f1", 41.0, None),
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


def test_units_skip_languages_without_datasets_and_name_them(tmp_path, tiny_models, prompts_file, caplog):
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], languages=["da", "ga", "en"],
                      evaluate={"run_adapters": [], "models": {"twin": {"path": tiny_models["policy"]}}}, euroeval={"enabled": True})
    assert list(euroeval.dataset_table(cfg)) == ["da", "en"]
    with caplog.at_level(logging.WARNING, logger="croco"):
        found = euroeval.units(cfg)
    assert found == [("da", "policy"), ("da", "twin"), ("en", "policy"), ("en", "twin")]
    assert "Irish (ga) has no datasets" in caplog.text
    # Two names for one model are two versions: each holds rows under its own name.
    plan = build_plan(cfg, ["euroeval"])
    assert plan.by_id["euroeval/da/policy"].key != plan.by_id["euroeval/da/twin"].key


def euroeval_python() -> str:
    found = os.environ.get("CROCO_EUROEVAL_PYTHON") or str(REPO / ".venv-euroeval" / "bin" / "python")
    if not Path(found).exists():
        pytest.skip(f"EuroEval is not installed: no interpreter at {found} (run `make euroeval-env` or set CROCO_EUROEVAL_PYTHON)")
    probe = subprocess.run([found, "-c", "import euroeval"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"EuroEval does not import with {found}: {probe.stderr.strip().splitlines()[-1:]}")
    return found


def euroeval_config(tmp_path, tiny_models, prompts_file, smollm_dir, python, datasets, extra_args=()):
    return make_config(
        tmp_path / "store", {**tiny_models, "policy": str(smollm_dir)}, [{"path": str(prompts_file)}], languages=["da"],
        evaluate={"run_adapters": []},
        euroeval={"enabled": True, "python": python, "datasets": datasets, "iterations": 2, "extra_args": ["--custom-datasets-file", str(DATA / "custom_datasets.py"), *extra_args]},
    )


def test_unknown_dataset_names_stop_before_any_model_loads(tmp_path, tiny_models, prompts_file, smollm_dir, monkeypatch):
    monkeypatch.setenv("CROCO_CACHE", str(tmp_path / "cache"))
    cfg = euroeval_config(tmp_path, tiny_models, prompts_file, smollm_dir, euroeval_python(), {"da": ["angry-tweets", "multiloko-da"]})
    unit = build_plan(cfg, ["euroeval"]).by_id["euroeval/da/policy"]
    with pytest.raises(CrocoError, match=r"EuroEval 16\.\d+\.\d+ has no dataset 'multiloko-da' for Danish \(da\); set euroeval.datasets.da to names from: .*angry-tweets"):
        euroeval.euroeval.fn(cfg, unit)
    assert not (tmp_path / "cache" / "work").exists()  # stopped before the model folder was made


@pytest.mark.slow
def test_real_euroeval_offline_on_a_local_dataset_and_a_local_server(tmp_path, tiny_models, prompts_file, smollm_dir, monkeypatch):
    python = euroeval_python()
    monkeypatch.setenv("CROCO_CACHE", str(tmp_path / "cache"))  # the work folder; smollm_dir is resolved already
    proxy_port = free_port()
    cfg = euroeval_config(tmp_path, tiny_models, prompts_file, smollm_dir, python, {"da": ["croco-tiny-sentiment-da"]},
                          ["--api-base", f"http://127.0.0.1:{proxy_port}/v1", "--api-key", "unused"])
    plan = build_plan(cfg, ["euroeval"])
    unit = plan.by_id["euroeval/da/policy"]
    storage = Storage(cfg.storage.root)
    version = storage.version_at(unit.version_path)
    workdir = version.work_folder()
    for metric in (DATA / "metrics").iterdir():  # EuroEval loads metrics by name; offline they must sit in its working folder
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
    assert {s["metric"] for s in scores} == {"mcc", "macro_f1"} and all(0 <= s["score"] <= 100 for s in scores if s["metric"] == "macro_f1")
    manifest = version.manifest()
    assert manifest["euroeval_version"].startswith("16.") and manifest["records_in"] == 1 and manifest["records_out"] == 2
    assert b"Completed 1 benchmarks" in storage.fs.cat_file(version.file_uri(euroeval.LOG_FILE))  # EuroEval's log, kept in the version
    assert "| da | croco-tiny-sentiment-da | mcc | policy |" in "\n".join(euroeval.summarize(cfg, {unit.id: version}))
    # Committed and intact: the next run of this unit is a cache hit and runs nothing.
    assert [row["state"] for row in describe(plan, storage)] == ["cached"]
