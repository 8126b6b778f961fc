"""The run report, one per run in `<root>/reports/<name>/<run_id>/`: report.md with its plots and tables beside it,
and report.html, the same page with every image inside it (it opens anywhere, with no network). The newest completed
run's pages are copied to `<root>/reports/<name>/`, where a person looks first.

The report is built from the run record and the versions it names, so `croco report RUN` rebuilds it at any time.
The Prefect artifact of the flow run is the Markdown with its images inside (data URIs): nothing in the UI links to
a file it cannot reach.
"""

from __future__ import annotations

import base64
import io
import json
import posixpath
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from croco.config import CrocoConfig
from croco.fidelity import percent
from croco.fileio import stable_hash
from croco.plan import Plan, Unit, stage_modules
from croco.records import DPO, SAMPLE, SAMPLE_KEY, SCORE
from croco.redaction import redact_value
from croco.storage import Storage, Version
from croco.summaries import summary_line

REPORT_FILE = "report.md"
HTML_FILE = "report.html"
REWARD_PLOT = "rewards.png"
MARGIN_PLOT = "margins.png"
# Settings the report's header names on their own; every other one is listed where it differs from its default.
NAMED_SETTINGS = ("name", "storage", "languages", "models")
# A relative Markdown link or image: its target is a file of the run's folder or, with ../, a version's file.
RELATIVE_LINK = re.compile(r"(!?)\[([^\]]*)\]\((?![a-z][a-z0-9+.-]*:|/|#)([^)\s]+)\)")
# Every section of a report, in order: (anchor, title, the stages it shows). A section none of whose stages ran says so.
SECTIONS = (
    ("config", "Config and versions", ()),
    ("data-flow", "Data flow", ()),  # every unit of the run, and every skip
    ("rewards", "Rewards and chosen-rejected margins", ("score", "pair")),
    ("training", "Training", ("sft", "dpo")),
    ("arena", "Arena win rates", ("judge",)),
    ("euroeval", "EuroEval", ("euroeval",)),
    ("fidelity", "Language fidelity", ("translate", "generate", "pair", "arena")),
    ("reward-audit", "Reward transfer audit", ("audit_score",)),
)


@dataclass
class Page:
    """A titled page of sections (anchor, title, Markdown body): one Markdown file, one HTML file, one artifact."""

    title: str
    sections: list[tuple[str, str, str]]

    def markdown(self) -> str:
        return f"# {self.title}\n\n" + "".join(f"## {title}\n\n{body.strip()}\n\n" for _, title, body in self.sections)

    def html(self, storage: Storage, folder: str) -> str:
        """The page as one HTML file, its images inside it, its other relative links named by their full URI."""
        from importlib.resources import files

        import jinja2
        from markdown_it import MarkdownIt
        from markupsafe import Markup

        # No raw HTML passes: a model's answer quoted in the report stays text.
        render = MarkdownIt("commonmark", {"html": False}).enable("table").render
        source = files("croco").joinpath("templates/page.html.j2").read_text(encoding="utf-8")
        template = jinja2.Environment(autoescape=True).from_string(source)
        sections = [
            (anchor, title, Markup(render(inline(body, storage, folder)))) for anchor, title, body in self.sections
        ]
        return template.render(title=self.title, sections=sections)

    def write(self, storage: Storage, folder: str, name: str) -> tuple[str, str, str]:
        """Write `<name>.md` and `<name>.html` into `folder`; (their URIs, the Markdown with its images inside)."""
        markdown = self.markdown()
        storage.put(f"{folder}/{name}.md", markdown.encode())
        storage.put(f"{folder}/{name}.html", self.html(storage, folder).encode())
        uris = (storage.uri_of(f"{folder}/{name}.md"), storage.uri_of(f"{folder}/{name}.html"))
        return *uris, inline(markdown, storage, folder)


def inline(markdown: str, storage: Storage, folder: str) -> str:
    """Relative images as data URIs and other relative links as the full URI of their target (as code: a browser
    shown the page from elsewhere, or the Prefect UI, could not follow them)."""

    def replace(link: re.Match) -> str:
        is_image, text, target = link.groups()
        path = posixpath.normpath(f"{folder}/{target}")
        if not is_image:
            return f"{text} (`{storage.uri_of(path)}`)"
        encoded = base64.b64encode(storage.fs.cat_file(path)).decode()
        return f"![{text}](data:image/png;base64,{encoded})"

    return RELATIVE_LINK.sub(replace, markdown)


def report_folder(storage: Storage, name: str) -> str:
    """Where a person looks first: the config's folder, with a copy of its newest completed run's report."""
    return f"{storage.root}/reports/{name}"


def run_folder(storage: Storage, name: str, run_id: str) -> str:
    """One run's report, plots and tables: concurrent runs of one config each write their own."""
    return f"{report_folder(storage, name)}/{run_id}"


def plan_of(record: dict) -> Plan:
    """The units a run record names, in the order the stages run."""
    order = {module.NAME: i for i, module in enumerate(stage_modules())}
    units = []
    for unit_id, path in record["versions"].items():
        stage, language, *model = unit_id.split("/")
        units.append(Unit(stage, language, path.rsplit("/", 1)[1], model[0] if model else None))
    return Plan(sorted(units, key=lambda u: order[u.stage]), record.get("skipped") or {})


def write_report(cfg: CrocoConfig, storage: Storage, record: dict) -> tuple[str, str, str]:
    """Write run `record`'s report.md, report.html and the plots and tables they show; (their URIs, the Markdown
    with its images inside, for the Prefect artifact)."""
    folder = run_folder(storage, cfg.name, record["run_id"])
    plan = plan_of(record)
    manifests = {unit.id: storage.version_at(unit.version_path).manifest() for unit in plan.units}
    stages = set(plan.stages())
    content = {
        "config": lambda: _config_section(cfg, storage, record, plan),
        "data-flow": lambda: _data_flow_section(plan, manifests, storage),
        "rewards": lambda: _rewards_section(plan, storage, folder),
        "training": lambda: _training_sections(plan, manifests),
        "arena": lambda: _arena_section(cfg, plan, storage, folder),
        "euroeval": lambda: _euroeval_section(cfg, plan, storage),
        "fidelity": lambda: _fidelity_section(plan, manifests),
        "reward-audit": lambda: _audit_section(cfg, plan, storage, folder),
    }
    sections = [
        (anchor, title, "\n".join(content[anchor]() if not shows or stages & set(shows) else _not_run(plan, shows)))
        for anchor, title, shows in SECTIONS
    ]
    return Page(f"croco run `{cfg.name}`", sections).write(storage, folder, "report")


def rebuild(storage: Storage, record: dict) -> str:
    """Write a recorded run's report again, from its record and versions; the HTML file's URI."""
    from croco.config import parse_config

    return write_report(parse_config(record["config"]), storage, record)[1]


def show_as_newest(storage: Storage, name: str, run_id: str) -> str:
    """Copy a run's report to the config's folder (the Markdown's links made relative to there); the HTML copy's URI."""
    folder, front = run_folder(storage, name, run_id), report_folder(storage, name)
    text = storage.fs.cat_file(f"{folder}/{REPORT_FILE}").decode()
    relocated = RELATIVE_LINK.sub(
        lambda link: f"{link[1]}[{link[2]}]({posixpath.normpath(f'{run_id}/{link[3]}')})", text
    )
    storage.put(f"{front}/{REPORT_FILE}", relocated.encode())
    storage.put(f"{front}/{HTML_FILE}", storage.fs.cat_file(f"{folder}/{HTML_FILE}"))
    return storage.uri_of(f"{front}/{HTML_FILE}")


def _not_run(plan: Plan, stages: tuple[str, ...]) -> list[str]:
    skipped = [f"- {unit_id}: {why}" for unit_id, why in plan.skipped.items() if unit_id.split("/")[0] in stages]
    return [f"Not run in this run: no {', '.join(stages)} unit was part of it.", "", *skipped]


def _config_section(cfg: CrocoConfig, storage: Storage, record: dict, plan: Plan) -> list[str]:
    """Which run this is and what it ran: its id, start, languages, models, the settings that differ from the
    defaults, and every unit's version, run now or reused from an earlier run."""
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
    cached = record.get("cached") or {}  # records of older croco versions say nothing of it
    used = {True: "reused", False: "ran"}
    lines = [
        f"Run `{record['run_id']}`, started {record['started_at']}, storage `{storage.uri}`.",
        "",
        f"Languages: {', '.join(cfg.languages)}. Models: {models}.",
        "",
        f"Config digest `{stable_hash(record['config'])}`; settings other than the defaults: {settings or 'none'}.",
        "",
        "| unit | version | this run |",
        "|---|---|---|",
    ]
    return lines + [f"| {u.id} | `{u.version_path}` | {used.get(cached.get(u.id), '–')} |" for u in plan.units]


def _flatten(value: dict, prefix: str = ""):
    """(dotted key, value) of every leaf; lists are leaves."""
    for key, item in value.items():
        if isinstance(item, dict):
            yield from _flatten(item, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", item


def _data_flow_section(plan: Plan, manifests: dict[str, dict], storage: Storage) -> list[str]:
    """Per unit, records in and out and the skips by reason; the samples per language; the pairs per product."""
    lines = [f"- {summary_line(unit, manifests[unit.id])}" for unit in plan.units]
    lines += [f"- {unit_id}: skipped, {why}" for unit_id, why in plan.skipped.items()]
    if plan.of("generate"):
        lines += ["", "Samples:", "", *_sample_table(_samples(plan, storage))]
    for unit in plan.of("pair"):
        lines += ["", "Pairs:", "", "| product | records |", "|---|---:|"]
        lines += [f"| {name} | {count} |" for name, count in manifests[unit.id]["products"].items()]
    return lines


def _samples(plan: Plan, storage: Storage) -> pa.Table:
    # Only the columns shown, and texts only for the samples quoted: a run may hold 100 million samples.
    columns = ["prompt_id", "language", "sample_index", "finish_reason", "completion_tokens"]
    return pa.concat_tables(
        storage.version_at(u.version_path).read(SAMPLE, columns=columns) for u in plan.of("generate")
    )


def _rewards_section(plan: Plan, storage: Storage, folder: str) -> list[str]:
    lines = []
    if plan.of("score"):
        scores = pa.concat_tables(
            storage.version_at(u.version_path).read(SCORE, columns=[*SAMPLE_KEY, "reward"]) for u in plan.of("score")
        )
        storage.put(
            f"{folder}/{REWARD_PLOT}", _boxplot(scores, "reward", "reward (raw logit)", "Reward of every sample")
        )
        lines += [*_stats_table(scores, "reward", "scored"), "", f"![rewards per language]({REWARD_PLOT})", ""]
        generated = {u.language: storage.version_at(u.version_path) for u in plan.of("generate")}
        if generated:
            lines += ["Best and worst answer of the first prompt, per language:", ""]
            lines += _extremes(generated, _samples(plan, storage), scores)
    for unit in plan.of("pair"):
        version = storage.version_at(unit.version_path)
        for product in ("dpo_in_language", "dpo_all_languages"):
            pairs = version.read_shard(product, DPO, columns=["language", "margin"]) if _has(version, product) else None
            if pairs is None or not pairs.num_rows:
                continue
            plot = f"margins-{product}.png"
            title = f"Chosen minus rejected reward, {product}"
            storage.put(f"{folder}/{plot}", _boxplot(pairs, "margin", "margin (reward difference)", title))
            lines += [f"Chosen-rejected margins of `{product}`:", "", *_stats_table(pairs, "margin", "pairs")]
            lines += ["", f"![margins of {product}]({plot})", ""]
    return lines


def _has(version: Version, shard: str) -> bool:
    return shard in version.shard_names()


def _training_sections(plan: Plan, manifests: dict[str, dict]) -> list[str]:
    lines = []
    for stage in ("sft", "dpo"):
        for unit in plan.of(stage):
            files = f"../../../{unit.version_path}/files/"  # from reports/<name>/<run_id>/ back to the storage root
            lines += _training_section(stage, manifests[unit.id], files)
    return lines


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
        f"### {stage.upper()}",
        "",
        f"{manifest['records_out']} training examples ({manifest['held_out']} held out), {manifest['steps']} optimizer steps, "
        f"{provenance}; final training loss {manifest['final_loss']:.4f}.",
    ]
    if evaluated:
        lines += ["", f"Held out: {evaluated}."]
    for warning in manifest.get("warnings", []):  # shown before the curves, which look the same either way
        lines += ["", f"**Warning: {warning}.**"]
    lines += ["", f"Adapter: `{manifest['adapter']}`", ""]
    return lines + [f"![{plot}]({files}{plot})" for plot in manifest["plots"]] + [""]


def _arena_section(cfg: CrocoConfig, plan: Plan, storage: Storage, folder: str) -> list[str]:
    """Win rates with their intervals and order disagreement, from the judge versions; the tables saved beside."""
    from croco.tasks import judge

    found = judge.results(cfg, [storage.version_at(u.version_path) for u in plan.of("judge")])
    storage.put(f"{folder}/judge_results.json", json.dumps(found["rows"], indent=2).encode())
    storage.put(f"{folder}/judge_results.md", found["markdown"].encode())
    storage.put(f"{folder}/win_rates.png", found["plot"])
    overall = found["markdown"].split("\n\nPer subcategory:")[0]
    return [overall, "", "Full table: [judge_results.md](judge_results.md)", "", "![Arena win rates](win_rates.png)"]


def _audit_section(cfg: CrocoConfig, plan: Plan, storage: Storage, folder: str) -> list[str]:
    """The reward transfer audit per language (croco.audit), from its score and translation versions; the table
    and the plot saved beside."""
    from croco.tasks import audit_score

    audited = {u.language: storage.version_at(u.version_path) for u in plan.of("audit_score")}
    translated = {u.language: storage.version_at(u.version_path) for u in plan.of("audit_translate")}
    found = audit_score.results(cfg, audited, translated)
    storage.put(f"{folder}/reward_audit.json", json.dumps(found["rows"], indent=2).encode())
    storage.put(f"{folder}/reward_audit.md", found["markdown"].encode())
    storage.put(f"{folder}/reward_audit.png", found["plot"])
    return [found["markdown"], "", "![Reward transfer audit](reward_audit.png)"]


def _euroeval_section(cfg: CrocoConfig, plan: Plan, storage: Storage) -> list[str]:
    from croco.tasks import euroeval

    return euroeval.summarize(cfg, {u.id: storage.version_at(u.version_path) for u in plan.of("euroeval")})


def _fidelity_section(plan: Plan, manifests: dict[str, dict]) -> list[str]:
    """Per language, how many translations are in their language, and answers in the prompt's language
    (croco.fidelity): translations, samples, pairs, arena answers."""
    lines = []
    translated = [u for u in plan.of("translate") if manifests[u.id].get("fidelity")]
    if translated:
        on_bad = manifests[translated[0].id]["settings"]["translate"]["on_bad"]
        lines += [f"Translations, every message checked (`translate.on_bad` is `{on_bad}`):", ""]
        lines += [*_translation_table(translated, manifests), ""]
    generated = [u for u in plan.of("generate") if manifests[u.id].get("fidelity")]
    if generated:
        lines += ["Samples:", "", *_answer_table(generated, manifests, "samples"), ""]
    for unit in plan.of("pair"):
        manifest = manifests[unit.id]
        required = manifest["settings"]["pair"]["require_language"]
        lines += [
            f"Chosen and rejected answers in the language of the prompt they answered (`pair.require_language` is `{required}`):",
            "",
            "| pairs | language | chosen in language | rejected in language | removed |",
            "|---|---|---:|---:|---|",
        ]
        for scope, by_language in manifest["fidelity"].items():
            for code, rates in by_language.items():
                removed = ", ".join(f"{reason} {n}" for reason, n in rates["removed"].items()) or "none"
                lines.append(
                    f"| {scope} | {code} | {percent(rates['chosen_on_target'])} | {percent(rates['rejected_on_target'])} | {removed} |"
                )
        lines.append("")
    answered = [u for u in plan.of("arena") if manifests[u.id].get("fidelity")]
    if answered:
        lines += ["Arena answers:", "", *_answer_table(answered, manifests, "answers")]
    return lines or ["No unit of this run measured language fidelity."]


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


def _stats_table(table: pa.Table, column: str, counted: str) -> list[str]:
    """Per language: how many values of `column`, their mean, spread and range."""
    rows = [f"| language | {counted} | mean | std | min | max |", "|---|---:|---:|---:|---:|---:|"]
    stats = table.group_by("language").aggregate([(column, name) for name in ("count", "mean", "stddev", "min", "max")])
    for row in sorted(stats.to_pylist(), key=lambda r: r["language"]):
        std = row[f"{column}_stddev"]
        rows.append(
            f"| {row['language']} | {row[f'{column}_count']} | {row[f'{column}_mean']:.3f} | {std or 0:.3f} "
            f"| {row[f'{column}_min']:.3f} | {row[f'{column}_max']:.3f} |"
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


def _boxplot(table: pa.Table, column: str, label: str, title: str) -> bytes:
    """A box per language of `column`'s values, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    languages = sorted(pc.unique(table["language"]).to_pylist())
    values = [table.filter(pc.equal(table["language"], code))[column].to_numpy() for code in languages]
    fig, ax = plt.subplots(figsize=(1.2 * len(languages) + 2, 3.5))
    ax.boxplot(values, tick_labels=languages, showmeans=True)
    ax.set_xlabel("language")
    ax.set_ylabel(label)
    ax.set_title(f"{title}, per language")
    fig.tight_layout()
    return png(fig)


def png(fig) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()
