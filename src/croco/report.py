"""The run report: a Markdown page and plots per run in `<root>/runs/<name>/<run_id>/`, built from the stage
versions; the newest completed run's page is copied to `<root>/runs/<name>/report.md`, where a person looks first.

It is also published as a Prefect artifact of the flow run, so the UI's run page shows it.
"""

from __future__ import annotations

import io
import json
import posixpath
import re

import pyarrow as pa
import pyarrow.compute as pc

from croco.config import CrocoConfig
from croco.fidelity import percent
from croco.fileio import stable_hash
from croco.plan import Plan
from croco.records import SAMPLE, SAMPLE_KEY, SCORE
from croco.redaction import redact_value
from croco.storage import Storage, Version
from croco.summaries import summary_line

REPORT_FILE = "report.md"
REWARD_PLOT = "rewards.png"
# Settings the report's header names on their own; every other one is listed where it differs from its default.
NAMED_SETTINGS = ("name", "storage", "languages", "models")
# The target of a relative Markdown link or image: a file of the run's folder or, with ../, a version's file.
RELATIVE_LINK = re.compile(r"(\]\()(?![a-z][a-z0-9+.-]*:|/|#)([^)\s]+)(\))")


def report_folder(storage: Storage, cfg: CrocoConfig) -> str:
    """Where a person looks first: the config's folder, with a copy of its newest completed run's report."""
    return f"{storage.root}/runs/{cfg.name}"


def run_folder(storage: Storage, cfg: CrocoConfig, run_id: str) -> str:
    """One run's report, plots and tables: concurrent runs of one config each write their own."""
    return f"{report_folder(storage, cfg)}/{run_id}"


def write_report(
    cfg: CrocoConfig, plan: Plan, storage: Storage, manifests: dict[str, dict], sections: dict[str, str], run: dict
) -> tuple[str, str]:
    """(report path, Markdown) of run record `run`; `sections` are titled tables computed by the flow (arena win
    rates, EuroEval), their links relative to the run's folder."""
    folder = run_folder(storage, cfg, run["run_id"])
    up = "../../../"  # from runs/<name>/<run_id>/ back to the storage root, where the versions are
    lines = [f"# croco run `{cfg.name}`", "", *_header(cfg, storage, run), "", "## Stages", ""]
    lines += [f"- {summary_line(unit, manifests[unit.id])}" for unit in plan.units]
    lines += [f"- {unit_id}: skipped, {why}" for unit_id, why in plan.skipped.items()]
    # Only the columns shown, and texts only for the samples quoted: a run may hold 100 million samples.
    generated = {u.language: storage.version_at(u.version_path) for u in plan.of("generate")}
    scored = [storage.version_at(u.version_path) for u in plan.of("score")]
    if generated:
        samples = pa.concat_tables(
            v.read(SAMPLE, columns=["prompt_id", "language", "sample_index", "finish_reason", "completion_tokens"])
            for v in generated.values()
        )
        lines += ["", "## Samples", "", *_sample_table(samples)]
    if scored:
        scores = pa.concat_tables(v.read(SCORE, columns=[*SAMPLE_KEY, "reward"]) for v in scored)
        lines += ["", "## Rewards", "", *_reward_table(scores), "", f"![rewards per language]({REWARD_PLOT})"]
        storage.put(f"{folder}/{REWARD_PLOT}", _plot_rewards(scores))
        lines += ["", "## Best and worst answer of the first prompt, per language", ""]
        lines += _extremes(generated, samples, scores)
    for unit in plan.of("pair"):
        lines += ["", "## Pairs", "", "| product | records |", "|---|---:|"]
        lines += [f"| {name} | {count} |" for name, count in manifests[unit.id]["products"].items()]
    lines += _fidelity_section(plan, manifests)
    for stage in ("sft", "dpo"):
        for unit in plan.of(stage):
            lines += ["", *_training_section(stage, manifests[unit.id], up + unit.version_path + "/files/")]
    for title, markdown in sections.items():
        lines += ["", f"## {title}", "", markdown.strip()]
    text = "\n".join(lines) + "\n"
    storage.put(f"{folder}/{REPORT_FILE}", text.encode())
    return storage.uri_of(f"{folder}/{REPORT_FILE}"), text


def show_as_newest(storage: Storage, cfg: CrocoConfig, run_id: str, text: str) -> str:
    """Copy a run's report to the config's folder, its links made relative to there; the copy's path."""
    relocated = RELATIVE_LINK.sub(lambda link: link[1] + posixpath.normpath(f"{run_id}/{link[2]}") + link[3], text)
    path = f"{report_folder(storage, cfg)}/{REPORT_FILE}"
    storage.put(path, relocated.encode())
    return storage.uri_of(path)


def _header(cfg: CrocoConfig, storage: Storage, run: dict) -> list[str]:
    """Which run this is and what it ran: its id, start, languages, models, and the settings that differ from the defaults."""
    models = ", ".join(
        f"{role} `{model.path}{'@' + model.revision if model.revision else ''}`" for role, model in cfg.models if model
    )
    changed = {
        key: value
        for key, value in cfg.model_dump(mode="json", exclude_defaults=True).items()
        if key not in NAMED_SETTINGS
    }
    settings = ", ".join(
        f"`{key}={value if isinstance(value, str) else json.dumps(value)}`"
        for key, value in _flatten(redact_value(changed))
    )
    return [
        f"Run `{run['run_id']}`, started {run['started_at']}, storage `{storage.uri}`.",
        "",
        f"Languages: {', '.join(cfg.languages)}. Models: {models}.",
        "",
        f"Config digest `{stable_hash(run['config'])}`; settings other than the defaults: {settings or 'none'}.",
    ]


def _flatten(value: dict, prefix: str = ""):
    """(dotted key, value) of every leaf; lists are leaves."""
    for key, item in value.items():
        if isinstance(item, dict):
            yield from _flatten(item, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", item


def _training_section(stage: str, manifest: dict, files: str) -> list[str]:
    provenance = (
        "off-policy pairs (another model's samples)" if manifest["settings"]["off_policy"] else "on-policy pairs"
    )
    evaluated = ", ".join(
        f"{k.removeprefix('eval_')} {v:.4g}"
        for k, v in manifest["eval"].items()
        if k.startswith("eval_") and "runtime" not in k and "per_second" not in k
    )
    lines = [
        f"## {stage.upper()}",
        "",
        f"{manifest['records_out']} training examples ({manifest['held_out']} held out), {manifest['steps']} optimizer steps, "
        f"{provenance}; final training loss {manifest['final_loss']:.4f}.",
    ]
    if evaluated:
        lines += ["", f"Held out: {evaluated}."]
    for warning in manifest.get("warnings", []):  # shown before the curves, which look the same either way
        lines += ["", f"**Warning: {warning}.**"]
    lines += ["", f"Adapter: `{manifest['adapter']}`", ""]
    lines += [f"![{plot}]({files}{plot})" for plot in manifest["plots"]]
    return lines


def _fidelity_section(plan: Plan, manifests: dict[str, dict]) -> list[str]:
    """Per language, how many translations are in their language, and answers in the prompt's language
    (croco.fidelity): translations, samples, pairs, arena answers."""
    lines = []
    translated = [u for u in plan.of("translate") if manifests[u.id].get("fidelity")]
    if translated:
        lines += [
            "",
            "Translations (`translate.on_bad` is " + f"`{translated[0].settings['translate']['on_bad']}`):",
            "",
        ]
        lines += _translation_table(translated, manifests)
    generated = [u for u in plan.of("generate") if manifests[u.id].get("fidelity")]
    if generated:
        lines += ["", "Samples:", "", *_answer_table(generated, manifests, "samples")]
    for unit in plan.of("pair"):
        manifest = manifests[unit.id]
        required = manifest["settings"]["pair"]["require_language"]
        lines += [
            "",
            f"Chosen and rejected answers in the language of the prompt they answered (`pair.require_language` is `{required}`):",
            "",
        ]
        lines += [
            "| pairs | language | chosen in language | rejected in language | removed |",
            "|---|---|---:|---:|---|",
        ]
        for scope, by_language in manifest["fidelity"].items():
            for code, rates in by_language.items():
                removed = ", ".join(f"{reason} {n}" for reason, n in rates["removed"].items()) or "none"
                lines.append(
                    f"| {scope} | {code} | {percent(rates['chosen_on_target'])} | {percent(rates['rejected_on_target'])} | {removed} |"
                )
    answered = [u for u in plan.of("arena") if manifests[u.id].get("fidelity")]
    if answered:
        lines += ["", "Arena answers:", "", *_answer_table(answered, manifests, "answers")]
    return ["", "## Language fidelity", *lines] if lines else []


def _translation_table(units, manifests: dict[str, dict]) -> list[str]:
    rows = [
        "| language | messages | in the language | copies | off target | extreme length ratio | conversations flagged | skipped |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for unit in units:
        manifest = manifests[unit.id]
        fidelity = manifest["fidelity"]
        flagged = ", ".join(f"{p} {n}" for p, n in fidelity["conversations_flagged"].items()) or "none"
        skipped = ", ".join(f"{r} {n}" for r, n in sorted(manifest["skipped"].items())) or "none"
        rows.append(
            f"| {unit.language} | {fidelity['messages']} | {percent(fidelity['on_target'])} | {fidelity['copies']} "
            f"| {fidelity['off_target']} | {fidelity['extreme_length_ratio']} | {flagged} of {fidelity['conversations']} | {skipped} |"
        )
    return rows


def _answer_table(units, manifests: dict[str, dict], what: str) -> list[str]:
    rows = [
        f"| {'model | ' if units[0].model else ''}language | {what} | in the prompt's language | line pass rate | {what} with a line of 5+ words |",
        f"|{'---|' if units[0].model else ''}---|---:|---:|---:|---:|",
    ]
    for unit in units:
        fidelity = manifests[unit.id]["fidelity"]
        rows.append(
            f"| {unit.model + ' | ' if unit.model else ''}{unit.language} | {fidelity['answers']} | {percent(fidelity['on_target'])} "
            f"| {percent(fidelity['line_pass_rate'])} | {fidelity['with_long_lines']} |"
        )
    return rows


def _sample_table(samples: pa.Table) -> list[str]:
    rows = [
        "| language | samples | prompts | stopped | hit max_new_tokens | other finish | mean tokens |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_language = samples.group_by("language").aggregate(
        [("sample_index", "count"), ("prompt_id", "count_distinct"), ("completion_tokens", "mean")]
    )
    finishes = samples.group_by(["language", "finish_reason"]).aggregate([("sample_index", "count")]).to_pylist()
    finished = {(r["language"], r["finish_reason"]): r["sample_index_count"] for r in finishes}
    for row in sorted(by_language.to_pylist(), key=lambda r: r["language"]):
        stopped, cut = finished.get((row["language"], "stop"), 0), finished.get((row["language"], "length"), 0)
        other = row["sample_index_count"] - stopped - cut  # a server's content_filter, abort, unknown
        mean = row["completion_tokens_mean"]  # over the samples whose count is known; none when no count is
        rows.append(
            f"| {row['language']} | {row['sample_index_count']} | {row['prompt_id_count_distinct']} | {stopped} "
            f"| {cut} | {other} | {'–' if mean is None else f'{mean:.1f}'} |"
        )
    return rows


def _reward_table(scores: pa.Table) -> list[str]:
    rows = ["| language | scored | mean | std | min | max |", "|---|---:|---:|---:|---:|---:|"]
    stats = scores.group_by("language").aggregate(
        [("reward", "count"), ("reward", "mean"), ("reward", "stddev"), ("reward", "min"), ("reward", "max")]
    )
    for row in sorted(stats.to_pylist(), key=lambda r: r["language"]):
        rows.append(
            f"| {row['language']} | {row['reward_count']} | {row['reward_mean']:.3f} | {row['reward_stddev']:.3f} "
            f"| {row['reward_min']:.3f} | {row['reward_max']:.3f} |"
        )
    return rows


def _extremes(generated: dict[str, Version], samples: pa.Table, scores: pa.Table) -> list[str]:
    """Texts are read only for the samples of each language's first prompt (the smallest id; prompts are stored in
    id order, so it is in the first shard)."""
    first_prompt = {
        r["language"]: r["prompt_id_min"]
        for r in samples.group_by("language").aggregate([("prompt_id", "min")]).to_pylist()
    }
    lines = []
    for language, version in generated.items():
        first = first_prompt.get(language)
        if first is None:
            continue
        texts = version.read_shard(
            version.shard_names()[0],
            SAMPLE,
            columns=[*SAMPLE_KEY, "prompt", "response"],
            filters=[("prompt_id", "=", first)],
        )
        rows = scores.join(texts, keys=list(SAMPLE_KEY), join_type="inner").to_pylist()
        if not rows:
            continue
        pool = sorted(rows, key=lambda r: (-r["reward"], r["sample_index"]))
        lines += [f"**{language} / {first}**: {_quote(pool[0]['prompt'])}", ""]
        lines += [f"- best ({pool[0]['reward']:.2f}): {_quote(pool[0]['response'])}"]
        if len(pool) > 1:
            lines += [f"- worst ({pool[-1]['reward']:.2f}): {_quote(pool[-1]['response'])}"]
        lines.append("")
    return lines


def _quote(text: str, limit: int = 240) -> str:
    flat = " ".join(text.split())
    return (flat[:limit] + "…") if len(flat) > limit else flat


def _plot_rewards(scores: pa.Table) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    languages = sorted(pc.unique(scores["language"]).to_pylist())
    rewards = [scores.filter(pc.equal(scores["language"], code))["reward"].to_numpy() for code in languages]
    fig, ax = plt.subplots(figsize=(1.2 * len(languages) + 2, 3.5))
    ax.boxplot(rewards, tick_labels=languages, showmeans=True)
    ax.set_xlabel("language")
    ax.set_ylabel("reward (raw logit)")
    ax.set_title("Reward of every sample, per language")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()
