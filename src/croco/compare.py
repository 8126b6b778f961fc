"""Runs side by side: per metric one table and one chart across runs, from their run records and the versions and
report tables those name. A run after the first whose 95% interval overlaps the first run's is marked: the
intervals do not support a difference there (overlap is the cautious reading; it misses some real differences).

A run is named by its config file (the newest completed run of that config, in the config's storage) or, with a
storage root, by its run id or its config's name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from croco.errors import CrocoError
from croco.report import Page, png, report_folder, run_folder
from croco.runs import records
from croco.storage import Storage

UNSUPPORTED = "≈"
Z95 = 1.96


@dataclass(frozen=True)
class Value:
    value: float
    low: float | None = None  # the 95% interval, where the metric has one
    high: float | None = None

    def cell(self) -> str:
        interval = "" if self.low is None else f" [{self.low:.2f}, {self.high:.2f}]"
        return f"{self.value:.2f}{interval}"

    def overlaps(self, other: "Value") -> bool | None:
        if self.low is None or other.low is None:
            return None
        return self.low <= other.high and other.low <= self.high


def locate(run: str, storage_uri: str | None = None) -> tuple[Storage, dict]:
    """The storage and record of a run named by a config file or URI (its newest completed run), or by a run id or
    config name in the storage at `storage_uri`."""
    if run.endswith((".yaml", ".yml")):
        from croco.flows.execute import load_run_config
        from croco.storage import storage_of

        cfg = load_run_config(run, None)
        storage, wanted = storage_of(cfg), cfg.name
    elif storage_uri:
        storage, wanted = Storage(storage_uri), run
    else:
        raise CrocoError(
            f"{run} is not a config file (.yaml): to name a run by its id or config name, give its storage root"
        )
    every = records(storage)
    found = [r for r in every if r["run_id"] == wanted] or [
        r for r in every if r["name"] == wanted and r["status"] == "completed"
    ]
    if not found:
        raise CrocoError(
            f"no run with id {wanted} and no completed run of a config named {wanted} in {storage.uri}/runs "
            "(`croco runs CONFIG` lists them)"
        )
    if found[0]["status"] != "completed":
        raise CrocoError(
            f"run {found[0]['run_id']} is {found[0]['status']}, not completed: its versions may be missing"
        )
    return storage, found[0]


def metrics(storage: Storage, record: dict) -> dict[str, dict[str, Value]]:
    """Per metric, per row label (a language, a model and language, ...), the run's value."""
    from croco.report import plan_of

    plan = plan_of(record)
    manifest = {u.id: storage.version_at(u.version_path).manifest() for u in plan.units}
    found: dict[str, dict[str, Value]] = {}
    for unit in plan.of("score"):
        stats, n = manifest[unit.id]["reward_stats"], manifest[unit.id]["records_out"]
        if stats and n:
            half = Z95 * stats["stddev"] / math.sqrt(n)
            found.setdefault("mean reward", {})[unit.language] = Value(
                stats["mean"], stats["mean"] - half, stats["mean"] + half
            )
    for unit in plan.of("generate"):
        fidelity = manifest[unit.id].get("fidelity")
        if fidelity and fidelity["answers"]:
            found.setdefault("samples in the prompt's language %", {})[unit.language] = _wilson(
                fidelity["on_target"], fidelity["answers"]
            )
    for stage in ("sft", "dpo"):
        for unit in plan.of(stage):
            found.setdefault("final training loss", {})[stage] = Value(manifest[unit.id]["final_loss"])
    judged = f"{run_folder(storage, record['name'], record['run_id'])}/judge_results.json"
    if plan.of("judge") and storage.fs.exists(judged):
        for row in json.loads(storage.fs.cat_file(judged)):
            if row["subcategory"] == "all" and row["win_rate"] is not None:
                low, high = (None, None) if row["ci_low"] is None else (100 * row["ci_low"], 100 * row["ci_high"])
                found.setdefault("arena win rate %", {})[f"{row['model']} {row['language']}"] = Value(
                    100 * row["win_rate"], low, high
                )
    if plan.of("euroeval"):
        from croco.records import EUROEVAL_SCORE

        for unit in plan.of("euroeval"):
            for row in storage.version_at(unit.version_path).read(EUROEVAL_SCORE).to_pylist():
                half = row["ci95"]
                label = f"{row['model']} {row['language']} {row['dataset']} {row['metric']}"
                found.setdefault("EuroEval score", {})[label] = Value(
                    row["score"],
                    None if half is None else row["score"] - half,
                    None if half is None else row["score"] + half,
                )
    return found


def _wilson(share: float, n: int) -> Value:
    """A share in percent with its Wilson 95% interval."""
    centre = (share + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(share * (1 - share) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return Value(100 * share, 100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


def compare(runs: list[str], storage_uri: str | None = None) -> tuple[str, str]:
    """Write the comparison of `runs` (two or more) into the first run's storage; (the HTML file's URI, the
    Markdown with its charts inside, for a Prefect artifact)."""
    if len(runs) < 2:
        raise CrocoError(f"compare needs two runs or more (got {len(runs)})")
    located = [locate(run, storage_uri) for run in runs]
    columns = [f"{record['name']} {record['run_id']}" for _, record in located]
    found = [metrics(storage, record) for storage, record in located]
    storage = located[0][0]  # the first run is the reference of every mark; its storage holds the comparison
    folder = f"{storage.root}/reports/compare/{'_vs_'.join(record['run_id'] for _, record in located)}"
    names = list(dict.fromkeys(name for by_run in found for name in by_run))
    sections = [("runs", "Runs", _runs_table(located))]
    for index, name in enumerate(names, 1):
        chart = f"metric-{index}.png"
        storage.put(f"{folder}/{chart}", _chart(name, columns, [by_run.get(name, {}) for by_run in found]))
        table = _table(columns, [by_run.get(name, {}) for by_run in found])
        sections.append((f"metric-{index}", name, "\n".join([*table, "", f"![{name}]({chart})"])))
    if not names:
        sections.append(("metrics", "Metrics", "None of these runs holds a metric croco compares."))
    title = "croco comparison: " + " vs ".join(record["name"] for _, record in located)
    _, html, markdown = Page(title, sections).write(storage, folder, "compare")
    return html, markdown


def _runs_table(located: list[tuple[Storage, dict]]) -> str:
    lines = [
        f"Cells are values with their 95% interval; {UNSUPPORTED} marks a value whose interval overlaps the first run's: "
        "the intervals do not support a difference there.",
        "",
        "| run | config | started | languages | storage | report |",
        "|---|---|---|---|---|---|",
    ]
    for storage, record in located:
        report = f"{report_folder(storage, record['name'])}/{record['run_id']}/report.html"
        lines.append(
            f"| {record['run_id']} | {record['name']} | {record['started_at']} | {', '.join(record['languages'])} "
            f"| `{storage.uri}` | `{storage.uri_of(report)}` |"
        )
    return "\n".join(lines)


def _table(columns: list[str], by_run: list[dict[str, Value]]) -> list[str]:
    labels = list(dict.fromkeys(label for values in by_run for label in values))
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for label in labels:
        reference = by_run[0].get(label)
        cells = []
        for values in by_run:
            value = values.get(label)
            mark = value is not None and reference is not None and value is not reference and value.overlaps(reference)
            cells.append("–" if value is None else value.cell() + (f" {UNSUPPORTED}" if mark else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _chart(name: str, columns: list[str], by_run: list[dict[str, Value]]) -> bytes:
    """One point per run and row label, with its interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(label for values in by_run for label in values))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels) * len(columns) ** 0.5 + 2), 3.6))
    width = 0.6 / len(columns)
    for r, (column, values) in enumerate(zip(columns, by_run)):
        shown = [(i, values[label]) for i, label in enumerate(labels) if label in values]
        x = [i + (r - (len(columns) - 1) / 2) * width for i, _ in shown]
        y = [v.value for _, v in shown]
        errors = [
            [0 if v.low is None else v.value - v.low for _, v in shown],
            [0 if v.high is None else v.high - v.value for _, v in shown],
        ]
        ax.errorbar(x, y, yerr=errors, fmt="o", capsize=4, label=column)
    ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 4 else 0)
    ax.set_title(name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)
