"""Stage 7: judge every evaluated model's arena answers against the baseline's, and score them.

By default each pair is judged in both orders (arena-hard-auto, MT-Bench) and the report says
how often the two orders disagree; `judge.orders: coin` is the paper's protocol, one order per
question by a seeded coin. Judgments go through an on-disk cache (RUN_DIR/cache/judgments.sqlite),
written batch by batch, so a killed run resumes where it stopped and changing the statistics
settings recomputes the tables without asking the judge again.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from croco.arena_stats import summarize
from croco.config import CrocoConfig
from croco.contestants import contestants
from croco.fileio import stable_hash, write_atomic
from croco.judging import Battle, JudgmentCache, Verdict, battle_key, make_judge
from croco.records import ARENA_ANSWER, JUDGMENT, SKIPPED
from croco.store import StageStore

log = logging.getLogger("croco")

NAME = "judge"
INPUT = "arena"
CACHE_FILE = Path("cache") / "judgments.sqlite"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOT = "win_rates.png"


def enabled(cfg: CrocoConfig) -> bool:
    return cfg.arena.enabled and cfg.judge.enabled


def settings(cfg: CrocoConfig) -> dict[str, Any]:
    return {"judge": make_judge(cfg).identity(), "settings": cfg.judge.model_dump(), "baseline": cfg.evaluate.baseline, "seed": cfg.seed}


def battles(cfg: CrocoConfig, answers: list[dict]) -> list[tuple[dict, Battle]]:
    """(record fields, battle) for every evaluated model against the baseline, in the orders asked for."""
    baseline = cfg.evaluate.baseline
    theirs = {(a["language"], a["question_id"]): a for a in answers if a["model"] == baseline}
    found = []
    for a in answers:
        other = theirs.get((a["language"], a["question_id"]))
        if a["model"] == baseline or other is None:
            continue
        fields = {k: a[k] for k in ("model", "language", "question_id", "subcategory")}
        fields |= {"baseline": baseline, "model_length": len(a["output"]), "baseline_length": len(other["output"])}
        for order in _orders(cfg, a["language"], a["question_id"]):
            found.append(({**fields, "order": order}, Battle(a["prompt"], a["output"], other["output"], order)))
    return found


def _orders(cfg: CrocoConfig, language: str, question_id: str) -> list[str]:
    if cfg.judge.kind == "reward":
        return ["none"]  # a reward model scores each answer on its own
    if cfg.judge.orders == "both":
        return ["model_first", "baseline_first"]
    coin = random.Random(stable_hash([cfg.seed, language, question_id])).random() < 0.5
    return ["model_first" if coin else "baseline_first"]


def run(cfg: CrocoConfig, out: StageStore, upstream: StageStore | None) -> dict[str, Any]:
    models = contestants(cfg)
    answers = upstream.read(ARENA_ANSWER).to_pylist()
    todo = battles(cfg, answers)
    judge = make_judge(cfg)
    judge_id = stable_hash(judge.identity())
    keys = [battle_key(judge_id, battle) for _, battle in todo]
    cache = JudgmentCache(Path(cfg.run_dir) / CACHE_FILE)
    try:
        verdicts = cache.get(keys)
        cached = len(verdicts)
        missing = [i for i, key in enumerate(keys) if key not in verdicts]
        batch = max(cfg.judge.engine.concurrency, cfg.judge.engine.batch_size) * 2
        with tqdm(total=len(missing), unit="judgment", desc="judge", dynamic_ncols=True) as bar:
            for start in range(0, len(missing), batch):
                chunk = missing[start : start + batch]
                new = dict(zip((keys[i] for i in chunk), judge.judge([todo[i][1] for i in chunk], bar.update)))
                cache.put(new)  # committed before the next batch: a kill loses at most this batch
                verdicts |= new
    finally:
        cache.close()

    records = [_record(fields, verdicts[key]) for (fields, _), key in zip(todo, keys)]
    out.write_shard(0, records, JUDGMENT, [], SKIPPED)
    rows = summarize(records, cfg.judge.ties, cfg.judge.bootstrap_rounds, cfg.seed)
    write_atomic(out.path / RESULTS_JSON, json.dumps(rows, indent=2).encode())
    table = results_table(rows, cfg)
    write_atomic(out.path / RESULTS_MD, ("\n".join(table) + "\n").encode())
    plot_win_rates(rows, out.path / PLOT)
    log.info("judge: win rates against %s, per language (ties count %s)\n%s", cfg.evaluate.baseline, cfg.judge.ties, "\n".join(table))
    unparseable = Counter(r["unparseable"] for r in records if r["unparseable"])
    return {
        "records_in": len(todo),
        "records_out": len(records),
        "skipped": dict(unparseable),
        "judged_now": len(missing),
        "from_cache": cached,
        "models": [m for m in models if m != cfg.evaluate.baseline],
        "results": RESULTS_MD,
        "plot": PLOT,
    }


def _record(fields: dict, verdict: Verdict) -> dict:
    return {**fields, "outcome": verdict.outcome, "unparseable": verdict.unparseable, "judgment": verdict.judgment}


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


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
            f"| {_percent(r.get('length_controlled'))} "
            f"| {wlt} | {r['unparseable']} ({r['unparseable_length']}) | {_percent(r['order_disagreement'])} "
            f"| {r['model_length']:.0f} / {r['baseline_length']:.0f} |"
        )
    overall = [line for line, r in zip(lines, rows) if r["subcategory"] == "all"]
    detail = [line for line, r in zip(lines, rows) if r["subcategory"] != "all"]
    note = (
        f"Against `{cfg.evaluate.baseline}`, judged by {'the reward model' if cfg.judge.kind == 'reward' else 'an LLM'}"
        f"{'' if cfg.judge.kind == 'reward' else f' in {cfg.judge.orders} order' + ('s' if cfg.judge.orders == 'both' else '')}; "
        f"ties count as {cfg.judge.ties}; 95% bootstrap intervals resample questions ({cfg.judge.bootstrap_rounds} rounds). "
        "Lengths are characters; the length-controlled (LC) fit normalises length differences per language."
    )
    return [note, "", *header, *overall, "", "Per subcategory:", "", *header, *detail]


def plot_win_rates(rows: list[dict], path: Path) -> None:
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
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
