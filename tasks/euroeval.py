"""Stage: EuroEval benchmarks of one evaluated model in one language, run in EuroEval's own process.

EuroEval lives in its own Python environment (`euroeval.python`: 17+ needs Python 3.12 and
pins its own vLLM, which must not share a process with other vLLM use). Before the model
loads, the language's datasets are checked against that installation's registry. A unit is
one (language, model); it runs in a local work folder named after its version, where the
model is a folder named after it (an adapter merged into its base first, and kept there).
EuroEval appends to euroeval_benchmark_results.jsonl in that folder and skips what the file
already holds, so a killed unit resumes. An API key (`euroeval.api_key_env`) reaches
EuroEval's process in its environment, never on its command line. Results of both the flat
format (before 17.0) and the 17.0+ Every Eval Ever format become EUROEVAL_SCORE rows;
`summarize` compares every model's rows with the baseline's, with EuroEval's 95% intervals.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import subprocess
from pathlib import Path
from typing import Any

from croco.caching import stage_task
from croco.config import CrocoConfig, EngineConfig, ModelConfig
from croco.contestants import adapter_input, contestant_names, identity, resolve
from croco.embedded import resolve_model
from croco.errors import CrocoError
from croco.languages import LANGUAGES
from croco.plan import Unit
from croco.records import EUROEVAL_SCORE
from croco.redaction import api_key, redact, remember
from croco.storage import Version

log = logging.getLogger("croco")

NAME = "euroeval"
CODE_VERSION = "1"
LOADS_MODEL = True
RESULTS_FILE = "euroeval_benchmark_results.jsonl"
LOG_FILE = "euroeval.log"
SHARD = "00000"

# croco's default benchmark list: per language, sentiment, linguistic acceptability, reading
# comprehension, common sense and knowledge where EuroEval has them. The paper's list named
# datasets EuroEval does not have (mmlu-fi, ifeval-nl, multiloko-da, include-da/sv/no,
# hellaswag-pt; English names carry no suffix; Norwegian uses -nb/-nn); these are the real names.
DATASETS: dict[str, list[str]] = {
    "da": ["angry-tweets", "scala-da", "multi-wiki-qa-da", "hellaswag-da", "danske-talemaader"],
    "en": ["sst5", "scala-en", "squad", "hellaswag", "life-in-the-uk"],
    "nl": ["dbrd", "scala-nl", "squad-nl", "hellaswag-nl", "mmlu-nl"],
    "fr": ["allocine", "scala-fr", "fquad", "hellaswag-fr", "mmlu-fr"],
    "de": ["sb10k", "scala-de", "germanquad", "hellaswag-de", "mmlu-de"],
    "it": ["sentipolc16", "scala-it", "squad-it", "hellaswag-it", "mmlu-it"],
    "es": ["sentiment-headlines-es", "scala-es", "mlqa-es", "hellaswag-es", "mmlu-es"],
    "no": ["norec", "scala-nb", "scala-nn", "norquad", "nrk-quiz-qa"],
    "sv": ["swerec", "scala-sv", "multi-wiki-qa-sv", "hellaswag-sv", "mmlu-sv"],
    "pt": ["sst2-pt", "scala-pt", "multi-wiki-qa-pt", "goldenswag-pt", "mmlu-pt"],
    "fi": ["scandisent-fi", "scala-fi", "tydiqa-fi", "hellaswag-fi"],
}

# EuroEval runs offline wherever it can: no cost-map fetch by litellm, no hub lookups once prefetched.
OFFLINE_SAFE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# The API key reaches EuroEval's process in its environment: a command line shows in the process list.
API_KEY_VARIABLE = "CROCO_EUROEVAL_API_KEY"
CLI_SCRIPT = (
    f"import os, sys; from euroeval.cli import benchmark; key = os.environ.pop({API_KEY_VARIABLE!r}, None); "
    "sys.exit(benchmark(sys.argv[1:] + (['--api-key', key] if key else [])))"
)
VERSION_SCRIPT = "from importlib.metadata import version; print(version('euroeval'))"
REGISTRY_SCRIPT = """
import json, sys
from pathlib import Path
from importlib.metadata import version
from euroeval.dataset_configs import get_all_dataset_configs
configs = get_all_dataset_configs(custom_datasets_file=Path(sys.argv[1]))
print(json.dumps({"version": version("euroeval"), "datasets": {c.name: [l.code for l in c.languages] for c in configs.values()}}))
"""


def enabled(cfg: CrocoConfig) -> bool:
    return cfg.euroeval.enabled


def dataset_table(cfg: CrocoConfig) -> dict[str, list[str]]:
    """The datasets of every run language that has some (euroeval.datasets, or croco's table)."""
    table = cfg.euroeval.datasets if cfg.euroeval.datasets is not None else DATASETS
    return {code: table[code] for code in cfg.languages if table.get(code)}


def units(cfg: CrocoConfig) -> list[tuple[str, str]]:
    """One unit per language with datasets and evaluated model; the other languages are `skipped`."""
    table = dataset_table(cfg)
    if not table:
        raise CrocoError(
            f"EuroEval has no datasets for {', '.join(cfg.languages)}; set euroeval.datasets for at least one of them"
        )
    return [(code, name) for code in table for name in contestant_names(cfg)]


def skipped(cfg: CrocoConfig) -> dict[str, str]:
    """Why each run language without datasets is not benchmarked (the plan counts and reports them)."""
    table = dataset_table(cfg)
    where = (
        "euroeval.datasets"
        if cfg.euroeval.datasets is not None
        else "croco's EuroEval table (`croco euroeval-datasets`)"
    )
    return {
        code: f"EuroEval has no datasets in {_named(code)}"
        if LANGUAGES[code].euroeval_code is None
        else f"{where} lists no datasets for {_named(code)}; set euroeval.datasets.{code} to benchmark it"
        for code in cfg.languages
        if code not in table
    }


def inputs(cfg: CrocoConfig, language: str, model: str) -> list[str]:
    return adapter_input(model)


def settings(cfg: CrocoConfig, language: str, model: str) -> dict[str, Any]:
    return {
        "language": language,
        "datasets": dataset_table(cfg)[language],
        "identity": identity(
            cfg, model, EngineConfig(device=cfg.euroeval.device)
        ),  # with the name: two names for one model are two versions
        # The installed EuroEval's version shapes the scores; the interpreter's path does not.
        "euroeval": {
            **cfg.euroeval.model_dump(include={"few_shot", "iterations", "split", "extra_args"}),
            "version": cfg.euroeval.version or installed_version(cfg.euroeval.python),
        },
    }


@functools.lru_cache(maxsize=None)
def installed_version(python: str) -> str:
    """EuroEval's version in that interpreter (without importing it), or "not installed": the run then stops with why."""
    try:
        done = subprocess.run([python, "-c", VERSION_SCRIPT], capture_output=True, text=True, timeout=120)
    except OSError:
        return "not installed"
    return done.stdout.strip() if done.returncode == 0 else "not installed"


def _named(code: str) -> str:
    return f"{LANGUAGES[code].name} ({code})"


def check_datasets(cfg: CrocoConfig, table: dict[str, list[str]]) -> str:
    """Every name must exist in the installed EuroEval for its language; returns EuroEval's version."""
    custom = _option(cfg.euroeval.extra_args, "--custom-datasets-file") or "custom_datasets.py"
    registry = json.loads(run_in_euroeval(cfg, REGISTRY_SCRIPT, [custom]).strip().splitlines()[-1])
    for code, names in table.items():
        language = LANGUAGES[code].euroeval_code
        valid = sorted(n for n, langs in registry["datasets"].items() if _in_language(language, langs))
        for name in names:
            if name not in valid:
                raise CrocoError(
                    f"EuroEval {registry['version']} has no dataset {name!r} for {_named(code)}; "
                    f"set euroeval.datasets.{code} to names from: {', '.join(valid)}"
                )
    return registry["version"]


def _in_language(language: str, languages: list[str]) -> bool:
    """Whether a dataset of `languages` counts for `language`; Norwegian (no) covers Bokmål (nb) and Nynorsk (nn)."""
    return language in languages or (language == "no" and bool({"nb", "nn"} & set(languages)))


@stage_task
def euroeval(cfg: CrocoConfig, unit: Unit, out: Version, inputs: dict[str, Version]) -> dict[str, Any]:
    """Benchmark one evaluated model with EuroEval in one language."""
    code, name = unit.language, unit.model
    datasets = dataset_table(cfg)[code]
    version = check_datasets(cfg, {code: datasets})
    if cfg.euroeval.version and version != cfg.euroeval.version:
        raise CrocoError(
            f"euroeval.version is {cfg.euroeval.version} but {cfg.euroeval.python} has EuroEval {version}; "
            "set euroeval.version to the installed one (the key names the version that scores)"
        )
    workdir = out.work_folder()  # EuroEval's results file (to resume from), its log and the model folder
    model = model_folder(name, resolve(cfg, name, inputs), workdir)
    log.info("euroeval: %s in %s (%s)", name, LANGUAGES[code].name, ", ".join(datasets))
    log_file = workdir / LOG_FILE
    status = _benchmark(cfg, model, code, datasets, workdir, log_file)
    out.put_file(LOG_FILE, redact(log_file.read_text(encoding="utf-8", errors="replace")).encode())
    see = f"see {log_file} (kept as {out.file_uri(LOG_FILE)})"
    if status != 0:
        raise CrocoError(f"EuroEval exited with status {status} for {name} in {code}; {see}")
    rows = scores(read_results(workdir / RESULTS_FILE), model, name, code, datasets)
    missing = set(datasets) - {r["dataset"] for r in rows}
    if missing:  # EuroEval exits 0 when it skips a model or dataset it cannot load
        raise CrocoError(f"EuroEval wrote no results for {name} on {', '.join(sorted(missing))}; {see}")
    out.write_shard(SHARD, rows, EUROEVAL_SCORE)
    return {"records_in": len(datasets), "records_out": len(rows), "skipped": {}, "euroeval_version": version}


def model_folder(name: str, model: ModelConfig, workdir: Path) -> str:
    """Give EuroEval the model as <workdir>/<name>: a merged folder for an adapter, links to the files otherwise.

    A folder of its own keeps EuroEval's temporary files out of the model's real folder and
    names the model in the results by its croco name.
    """
    folder = workdir / name
    if model.adapter:
        if not (folder / "config.json").exists():
            from croco.merge import merge_adapter

            merge_adapter(Path(model.adapter), folder)
        return name
    source = Path(resolve_model(model.path))
    if not source.is_dir():
        return model.path  # a hub id: EuroEval downloads it (run `croco prefetch` first on offline clusters)
    folder.mkdir(exist_ok=True)
    for item in source.iterdir():
        link = folder / item.name
        if not link.exists():
            link.symlink_to(item.resolve())
    return name


def _benchmark(cfg: CrocoConfig, model: str, code: str, names: list[str], workdir: Path, log_file: Path) -> int:
    """Run EuroEval on one model and one language's datasets in `workdir`, its output going to `log_file`; its exit status."""
    settings_ = cfg.euroeval
    arguments = [
        "--model",
        model,
        "--language",
        LANGUAGES[code].euroeval_code,
        *[a for n in names for a in ("--dataset", n)],
    ]
    arguments += ["--evaluate-test-split"] if settings_.split == "test" else []
    arguments += ["--few-shot" if settings_.few_shot else "--zero-shot", "--num-iterations", str(settings_.iterations)]
    arguments += ["--save-results", "--no-progress-bar", "--raise-errors"]
    arguments += [] if settings_.device == "auto" else ["--device", settings_.device]
    extra, key = _extra_args(cfg)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w", encoding="utf-8") as sink:
        return run_in_euroeval(cfg, CLI_SCRIPT, [*arguments, *extra], cwd=workdir, sink=sink, key=key)


def _extra_args(cfg: CrocoConfig) -> tuple[list[str], str | None]:
    """(euroeval.extra_args, the API key): a custom datasets file made absolute (EuroEval runs in its work folder),
    and a key passed as `--api-key` taken out, so that it never shows in the process list; euroeval.api_key_env wins."""
    arguments = list(cfg.euroeval.extra_args)
    if _option(arguments, "--custom-datasets-file"):
        index = arguments.index("--custom-datasets-file") + 1
        arguments[index] = str(Path(arguments[index]).resolve())
    passed = _take_api_key(arguments)
    if passed:
        remember(passed)
        log.warning(
            "euroeval.extra_args holds an API key: it is masked and kept off the command line, but belongs in the environment variable named by euroeval.api_key_env"
        )
    return arguments, api_key(cfg.euroeval.api_key_env, "euroeval.api_key_env") or passed


def _take_api_key(arguments: list[str]) -> str | None:
    """Remove `--api-key KEY` or `--api-key=KEY` from a command line; the key."""
    for index, argument in enumerate(arguments):
        if argument.startswith("--api-key="):
            del arguments[index]
            return argument.partition("=")[2]
        if argument == "--api-key" and index + 1 < len(arguments):
            key = arguments[index + 1]
            del arguments[index : index + 2]
            return key
    return None


def run_in_euroeval(
    cfg: CrocoConfig,
    script: str,
    arguments: list[str],
    cwd: Path | None = None,
    sink=None,
    purpose: str = "read EuroEval's dataset registry",
    key: str | None = None,
):
    """Run a script in EuroEval's interpreter (with the API `key` in its environment): its stdout when `sink` is None
    (failing with `purpose`), else its exit status."""
    command = [cfg.euroeval.python, "-c", script, *arguments]
    env = {**os.environ, **OFFLINE_SAFE_ENV, **({API_KEY_VARIABLE: key} if key else {})}
    try:
        if sink is None:
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise CrocoError(f"could not {purpose} with {cfg.euroeval.python}: {last}")
            return done.stdout
        return subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd).returncode
    except FileNotFoundError:
        raise CrocoError(
            f"euroeval.python {cfg.euroeval.python!r} does not exist; install EuroEval in its own environment "
            "(`make euroeval-env`, or a Python 3.12 venv with `pip install euroeval`) and point euroeval.python at its interpreter"
        ) from None


def _option(arguments: list[str], flag: str) -> str | None:
    return arguments[arguments.index(flag) + 1] if flag in arguments[:-1] else None


def read_results(path: Path) -> list[dict]:
    """EuroEval's results file as flat rows: model, dataset, languages, metric, score, 95% half-width."""
    rows: list[dict] = []
    if not path.exists():
        return rows
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue  # EuroEval starts every record with a newline, so the file opens with a blank line
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CrocoError(f"{path} line {number} is not JSON ({exc.msg})") from None
        rows += _from_eee(record) if "schema_version" in record else _from_flat(record)
    return rows


def _from_flat(record: dict) -> list[dict]:
    """Before 17.0: results.total holds test_<metric> and test_<metric>_se."""
    total = record["results"]["total"]
    base = {
        "model": record["model"],
        "dataset": record["dataset"],
        "languages": record["languages"],
        "few_shot": record.get("few_shot"),
    }
    return [
        {**base, "metric": key.removeprefix("test_"), "score": value, "ci95": _finite(total.get(f"{key}_se"))}
        for key, value in total.items()
        if key.startswith("test_") and not key.endswith("_se")
    ]


def _from_eee(record: dict) -> list[dict]:
    """17.0 and later: Every Eval Ever records, one evaluation_results entry per metric."""
    details = record["eval_library"]["additional_details"]
    few_shot = details.get("few_shot")
    base = {
        "model": record["model_info"]["name"],
        "dataset": details["dataset"],
        "languages": json.loads(details["languages"]),
        "few_shot": None if few_shot is None else few_shot == "true",
    }
    rows = []
    for result in record["evaluation_results"]:
        interval = (result["score_details"].get("uncertainty") or {}).get("confidence_interval")
        half = (interval["upper"] - interval["lower"]) / 2 if interval else None
        rows.append(
            {
                **base,
                "metric": result["evaluation_name"].removeprefix("test_"),
                "score": result["score_details"]["score"],
                "ci95": half,
            }
        )
    return rows


def _finite(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def scores(results: list[dict], model: str, name: str, code: str, datasets: list[str]) -> list[dict]:
    """EUROEVAL_SCORE rows of one model (`model` as EuroEval knows it) on one language's datasets, under its croco name."""
    language = LANGUAGES[code].euroeval_code
    found = {}  # one row per dataset and metric: the last in the file
    for r in results:
        if r["model"] == model and r["dataset"] in datasets and _in_language(language, r["languages"]):
            found[(r["dataset"], r["metric"])] = {
                "model": name,
                "language": code,
                "dataset": r["dataset"],
                "metric": r["metric"],
                "score": r["score"],
                "ci95": r["ci95"],
            }
    return list(found.values())


def comparison(rows: list[dict], baseline: str) -> list[dict]:
    """Every score row with its difference from the baseline's, by language, dataset and metric (the baseline first)."""

    def task(r: dict) -> tuple[str, str, str]:
        return r["language"], r["dataset"], r["metric"]

    base = {task(r): r["score"] for r in rows if r["model"] == baseline}
    return [
        {**r, "difference": None if r["model"] == baseline or task(r) not in base else r["score"] - base[task(r)]}
        for r in sorted(rows, key=lambda r: (*task(r), r["model"] != baseline))
    ]


def summarize(cfg: CrocoConfig, results: dict[str, Version]) -> list[str]:
    """The Markdown table of every model's scores against the baseline, from the committed euroeval versions by unit id."""
    rows = [row for version in results.values() for row in version.read(EUROEVAL_SCORE).to_pylist()]
    versions = sorted({version.manifest()["euroeval_version"] for version in results.values()})
    return results_table(comparison(rows, cfg.evaluate.baseline), cfg, ", ".join(versions))


def results_table(rows: list[dict], cfg: CrocoConfig, version: str) -> list[str]:
    shots = "few-shot" if cfg.euroeval.few_shot else "zero-shot"
    lines = [
        f"EuroEval {version}, {cfg.euroeval.split} split, {shots}, {cfg.euroeval.iterations} iterations; scores in percent with "
        f"EuroEval's 95% interval; difference against `{cfg.evaluate.baseline}`.",
        "",
        "| language | dataset | metric | model | score | ± 95% | difference |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        ci = "–" if r["ci95"] is None else f"{r['ci95']:.2f}"
        diff = "" if r["difference"] is None else f"{r['difference']:+.2f}"
        lines.append(
            f"| {r['language']} | {r['dataset']} | {r['metric']} | {r['model']} | {r['score']:.2f} | {ci} | {diff} |"
        )
    return lines
