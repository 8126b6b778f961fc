"""Stage 7: judge one evaluated model's arena answers in one language against the baseline's.

A unit is one model in one language, like the arena's, so adding a model to `evaluate.models`
judges only that model's answers.

By default each pair is judged in both orders (arena-hard-auto, MT-Bench) and the results say
how often the two orders disagree; `judge.orders: coin` is the paper's protocol, one order per
question by a seeded coin. Judgments are written in shards of a fixed size, so a killed run
resumes from its finished shards. An answer without a baseline answer to the same question is
not judged; it is written to the skipped records with its reason and counted. The win-rate
tables are computed across languages by `results`, which the evaluation flow calls after the
judge units: changing the tie rule or the bootstrap settings recomputes the tables without
asking the judge again.
"""

from __future__ import annotations

import io
import logging
import random
from collections import Counter
from typing import Any

from tqdm.auto import tqdm

from croco.arena_stats import LC_FOLDS, summarize
from croco.caching import stage_task
from croco.config import CrocoConfig
from croco.fileio import stable_hash
from croco.judging import Battle, Verdict, judges_with_training_reward, make_judge
from croco.plan import Unit
from croco.records import ARENA_ANSWER, BATTLE_SKIPPED, JUDGMENT
from croco.storage import Version

log = logging.getLogger("croco")

NAME = "judge"
CODE_VERSION = "3"  # 3: one version per evaluated model and language
LOADS_MODEL = True
JUDGMENTS_PER_SHARD = 64  # fixed, so a resumed run cuts its work exactly as the killed one did
UNMATCHED_SHARD = "unmatched"  # no judgments, only the skipped records of answers without a baseline answer
CIRCULAR_WARNING = (
    "**Warning: the judge is the reward model the training pairs were chosen with (models.reward), so these win rates "
    "favour the tuned models by construction; judge with an LLM (judge.kind: llm) or another reward model (judge.model) "
    "for numbers to trust.**"
)
VERDICT_SETTINGS = ("kind", "orders", "allow_ties", "temperature", "max_new_tokens", "max_len")


def enabled(cfg: CrocoConfig) -> bool:
    return cfg.arena.enabled and cfg.judge.enabled


def units(cfg: CrocoConfig) -> list[tuple[str, str]]:
    from croco.tasks import arena

    return [(code, name) for code, name in arena.units(cfg) if name != cfg.evaluate.baseline]


def inputs(cfg: CrocoConfig, language: str, model: str) -> list[str]:
    return [f"arena/{language}/{model}", f"arena/{language}/{cfg.evaluate.baseline}"]


def settings(cfg: CrocoConfig, language: str, model: str) -> dict[str, Any]:
    verdicts = {key: getattr(cfg.judge, key) for key in VERDICT_SETTINGS}
    return {
        "language": language,
        "model": model,
        "judge": make_judge(cfg).identity(),
        "settings": verdicts,
        "baseline": cfg.evaluate.baseline,
        "seed": cfg.seed,
    }


def battles(cfg: CrocoConfig, answers: list[dict]) -> tuple[list[tuple[dict, Battle]], list[dict]]:
    """(record fields, battle) for every evaluated model against the baseline, in the orders asked for; and a
    skipped record for every answer the baseline has no answer to compare with."""
    baseline = cfg.evaluate.baseline
    theirs = {(a["language"], a["question_id"]): a for a in answers if a["model"] == baseline}
    found, unmatched = [], []
    for a in answers:
        if a["model"] == baseline:
            continue
        other = theirs.get((a["language"], a["question_id"]))
        if other is None:
            detail = f"{baseline} has no answer to question {a['question_id']}"
            unmatched.append(
                {k: a[k] for k in ("model", "language", "question_id")}
                | {"baseline": baseline, "reason": "no_baseline_answer", "detail": detail}
            )
            continue
        fields = {k: a[k] for k in ("model", "language", "question_id", "subcategory")}
        fields |= {"baseline": baseline, "model_length": len(a["output"]), "baseline_length": len(other["output"])}
        for order in _orders(cfg, a["language"], a["question_id"]):
            key = (a["model"], baseline, a["language"], a["question_id"], order)
            found.append(({**fields, "order": order}, Battle(a["prompt"], a["output"], other["output"], order, key)))
    return found, unmatched


def _orders(cfg: CrocoConfig, language: str, question_id: str) -> list[str]:
    if cfg.judge.kind == "reward":
        return ["none"]  # a reward model scores each answer on its own
    if cfg.judge.orders == "both":
        return ["model_first", "baseline_first"]
    coin = random.Random(stable_hash([cfg.seed, language, question_id])).random() < 0.5
    return ["model_first" if coin else "baseline_first"]


@stage_task
def judge(cfg: CrocoConfig, unit: Unit, out: Version, inputs: dict[str, Version]) -> dict[str, Any]:
    answers = [a for version in inputs.values() for a in version.read(ARENA_ANSWER).to_pylist()]
    todo, unmatched = battles(cfg, answers)
    shards = {
        f"{i // JUDGMENTS_PER_SHARD:05d}": todo[i : i + JUDGMENTS_PER_SHARD]
        for i in range(0, len(todo), JUDGMENTS_PER_SHARD)
    }
    finished = out.finished_shards()
    if unmatched and UNMATCHED_SHARD not in finished:
        out.write_shard(UNMATCHED_SHARD, [], JUDGMENT, unmatched, BATTLE_SKIPPED)
    missing = [name for name in shards if name not in finished]
    judge_ = make_judge(cfg)
    with tqdm(
        total=sum(len(shards[n]) for n in missing),
        unit="judgment",
        desc=f"judge {unit.language} {unit.model}",
        dynamic_ncols=True,
    ) as bar:
        for name in missing:
            verdicts = judge_.judge([battle for _, battle in shards[name]], bar.update)
            out.write_shard(
                name, [_record(fields, verdict) for (fields, _), verdict in zip(shards[name], verdicts)], JUDGMENT
            )
    records = out.read(JUDGMENT, columns=["unparseable"]).to_pylist()
    skipped = Counter(out.read(BATTLE_SKIPPED, columns=["reason"], skipped=True)["reason"].to_pylist())
    return {
        "records_in": len(todo) + len(unmatched),
        "records_out": len(records),
        "skipped": dict(skipped + Counter(r["unparseable"] for r in records if r["unparseable"])),
        "judged_now": sum(len(shards[n]) for n in missing),
        "models": [unit.model],
    }


def results(cfg: CrocoConfig, judged: list[Version]) -> dict[str, Any]:
    """Win rates over every judged language: the rows, the Markdown table and the plot (PNG bytes)."""
    tallied = [
        name for name in JUDGMENT.names if name != "judgment"
    ]  # the judge's texts stay on disk: the tables never show them
    records = [r for version in judged for r in version.read(JUDGMENT, columns=tallied).to_pylist()]
    rows = summarize(records, cfg.judge.ties, cfg.judge.bootstrap_rounds, cfg.seed)
    table = results_table(rows, cfg)
    if judges_with_training_reward(cfg):
        log.warning("judge: %s", CIRCULAR_WARNING.strip("*"))
    log.info(
        "judge: win rates against %s, per language (ties count %s)\n%s",
        cfg.evaluate.baseline,
        cfg.judge.ties,
        "\n".join(table),
    )
    return {"rows": rows, "markdown": "\n".join(table) + "\n", "plot": plot_win_rates(rows)}


def _record(fields: dict, verdict: Verdict) -> dict:
    return {**fields, "outcome": verdict.outcome, "unparseable": verdict.unparseable, "judgment": verdict.judgment}


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _length_controlled(row: dict) -> str:
    if row["win_rate"] is not None and row["length_controlled"] is None:
        return "n/a (too few questions)"
    return _percent(row.get("length_controlled"))


def results_table(rows: list[dict], cfg: CrocoConfig) -> list[str]:
    """Markdown: one line per model and language (all subcategories), then the per-subcategory lines."""
    header = [
        "| model | language | subcategory | win rate % | SE | 95% CI | LC win rate % | W/L/T | unparseable (length) | order disagreement % | mean length model / baseline |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines = []
    for r in rows:
        ci = "–" if r["win_rate"] is None else f"{_percent(r['ci_low'])}–{_percent(r['ci_high'])}"
        wlt = "–" if r["win_rate"] is None else f"{r['wins']}/{r['losses']}/{r['ties']}"
        lines.append(
            f"| {r['model']} | {r['language']} | {r['subcategory']} | {_percent(r['win_rate'])} | {_percent(r.get('standard_error'))} | {ci} "
            f"| {_length_controlled(r)} "
            f"| {wlt} | {r['unparseable']} ({r['unparseable_length']}) | {_percent(r['order_disagreement'])} "
            f"| {r['model_length']:.0f} / {r['baseline_length']:.0f} |"
        )
    overall = [line for line, r in zip(lines, rows) if r["subcategory"] == "all"]
    detail = [line for line, r in zip(lines, rows) if r["subcategory"] != "all"]
    note = (
        f"Against `{cfg.evaluate.baseline}`, judged by {'the reward model' if cfg.judge.kind == 'reward' else 'an LLM'}"
        f"{'' if cfg.judge.kind == 'reward' else f' in {cfg.judge.orders} order' + ('s' if cfg.judge.orders == 'both' else '')}; "
        f"ties count as {cfg.judge.ties}. The unit of the standard error (SE) and of the 95% bootstrap intervals "
        f"({cfg.judge.bootstrap_rounds} rounds) is the question: its judgments in both orders and, in the `all` rows, in every "
        "language (parallel translations) count as one. Lengths are characters; the length-controlled (LC) fit divides length "
        "differences by their spread in each language (characters per word differ) and chooses its penalty on length by "
        f"{LC_FOLDS}-fold cross-validation over questions, as AlpacaEval does; it needs at least {LC_FOLDS} questions."
    )
    warning = [CIRCULAR_WARNING, ""] if judges_with_training_reward(cfg) else []
    return [note, "", *warning, *header, *overall, "", "Per subcategory:", "", *header, *detail]


def plot_win_rates(rows: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shown = [r for r in rows if r["subcategory"] == "all" and r["win_rate"] is not None]
    models = list(dict.fromkeys(r["model"] for r in shown))
    languages = list(dict.fromkeys(r["language"] for r in shown))
    fig, ax = plt.subplots(figsize=(1.1 * len(languages) * max(1, len(models)) + 2, 3.8))
    width = 0.8 / max(1, len(models))
    for m, model in enumerate(models):
        mine = {r["language"]: r for r in shown if r["model"] == model}
        x = np.array([i for i, lang in enumerate(languages) if lang in mine]) + (m - (len(models) - 1) / 2) * width
        rates = np.array([100 * mine[lang]["win_rate"] for lang in languages if lang in mine])
        low = rates - np.array([100 * mine[lang]["ci_low"] for lang in languages if lang in mine])
        high = np.array([100 * mine[lang]["ci_high"] for lang in languages if lang in mine]) - rates
        ax.bar(x, rates, width, yerr=[low, high], capsize=3, label=model)
    ax.axhline(50, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(languages)), languages)
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"win rate vs {shown[0]['baseline'] if shown else 'baseline'} (%)")
    ax.set_title("Arena win rate per language, 95% bootstrap intervals")
    if models:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no parseable judgments", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()
