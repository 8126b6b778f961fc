"""EuroEval: the results file in both formats, the dataset check, and one real run offline.

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

from croco.config import ModelConfig
from croco.errors import CrocoError
from croco.pipeline import run_pipeline
from croco.records import EUROEVAL_SCORE
from croco.stages.euroeval import check_datasets, comparison, dataset_table, model_folder, read_results
from croco.store import StageStore

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


def test_both_result_formats_become_one_comparison(tmp_path):
    results = tmp_path / "euroeval_benchmark_results.jsonl"
    results.write_text("".join("\n" + json.dumps(r) for r in (FLAT, EEE)))  # EuroEval's own layout: a newline before each record
    rows = read_results(results)
    assert [(r["model"], r["metric"], r["score"], r["ci95"]) for r in rows] == [
        ("policy", "mcc", 10.0, 2.0), ("policy", "macro_f1", 40.0, None), ("dpo", "mcc", 13.5, 1.5), ("dpo", "macro_f1", 41.0, None),
    ]
    table = comparison(rows, {"policy": "policy", "dpo": "dpo"}, {"da": ["angry-tweets"]}, "policy")
    mcc = {r["model"]: r for r in table if r["metric"] == "mcc"}
    assert mcc["dpo"]["difference"] == pytest.approx(3.5) and mcc["policy"]["difference"] is None


def test_default_table_skips_languages_euroeval_lacks(tmp_path, tiny_models, prompts_file):
    cfg = make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], languages=["da", "ga", "en"])
    assert list(dataset_table(cfg)) == ["da", "en"]


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
        tmp_path / "run", {**tiny_models, "policy": str(smollm_dir)}, [{"path": str(prompts_file)}], languages=["da"],
        evaluate={"run_adapters": []},
        euroeval={"enabled": True, "python": python, "datasets": datasets, "iterations": 2, "extra_args": ["--custom-datasets-file", str(DATA / "custom_datasets.py"), *extra_args]},
    )


def test_unknown_dataset_names_stop_before_any_model_loads(tmp_path, tiny_models, prompts_file, smollm_dir):
    cfg = euroeval_config(tmp_path, tiny_models, prompts_file, smollm_dir, euroeval_python(), {"da": ["angry-tweets", "multiloko-da"]})
    with pytest.raises(CrocoError, match=r"EuroEval 16\.\d+\.\d+ has no dataset 'multiloko-da' for Danish \(da\); set euroeval.datasets.da to names from: .*angry-tweets"):
        check_datasets(cfg, dataset_table(cfg))


@pytest.mark.slow
def test_real_euroeval_offline_on_a_local_dataset_and_a_local_server(tmp_path, tiny_models, prompts_file, smollm_dir):
    python = euroeval_python()
    models_dir = tmp_path / "run" / "euroeval" / "models"
    models_dir.mkdir(parents=True)
    for metric in (DATA / "metrics").iterdir():  # EuroEval loads metrics by name; offline they must sit in its working folder
        shutil.copytree(metric, models_dir / metric.name)
    # The folder EuroEval is told about (models/policy), made first so the server can serve it under that name.
    model_folder("policy", ModelConfig(path=str(smollm_dir)), models_dir)
    proxy_port = free_port()
    with transformers_serve("policy", tmp_path / "serve.log", cwd=models_dir) as url:
        cfg = euroeval_config(tmp_path, tiny_models, prompts_file, smollm_dir, python, {"da": ["croco-tiny-sentiment-da"]},
                              ["--api-base", f"http://127.0.0.1:{proxy_port}/v1", "--api-key", "unused"])
        proxy = [sys.executable, str(DATA / "strip_stop_proxy.py"), str(proxy_port), url.removesuffix("/v1")]
        with background(proxy, f"http://127.0.0.1:{proxy_port}/health", tmp_path / "proxy.log"):
            manifest = run_pipeline(cfg, only=["euroeval"])[-1].manifest
    store = StageStore(cfg.run_dir, "euroeval")
    scores = store.read(EUROEVAL_SCORE).to_pylist()
    assert {(s["model"], s["language"], s["dataset"]) for s in scores} == {("policy", "da", "croco-tiny-sentiment-da")}
    assert {s["metric"] for s in scores} == {"mcc", "macro_f1"} and all(0 <= s["score"] <= 100 for s in scores if s["metric"] == "macro_f1")
    assert manifest["euroeval_version"].startswith("16.")
    assert "| da | croco-tiny-sentiment-da | mcc | policy |" in (store.path / "results.md").read_text()
    # A rerun finds every unit done and runs nothing.
    assert run_pipeline(cfg, only=["euroeval"])[-1].ran is False
