"""The run report: a Markdown page and plots in the run folder, built from the stage records."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from croco.config import CrocoConfig
from croco.pipeline import StageResult, summary_line
from croco.records import SAMPLE, SAMPLE_KEY, SCORE
from croco.fileio import write_atomic
from croco.store import StageStore

REPORT_FILE = "report.md"
REWARD_PLOT = "rewards.png"


def write_report(cfg: CrocoConfig, results: list[StageResult]) -> Path:
    run_dir = Path(cfg.run_dir)
    lines = [f"# croco run `{run_dir}`", "", "## Stages", ""]
    lines += [f"- {summary_line(r.name, r.manifest)}{'' if r.ran else ' (finished earlier)'}" for r in results]
    done = {r.name for r in results}
    if "generate" in done:
        lines += ["", "## Samples", "", *_sample_table(StageStore(run_dir, "generate").read(SAMPLE))]
    if "score" in done:
        scores = StageStore(run_dir, "score").read(SCORE)
        lines += ["", "## Rewards", "", *_reward_table(scores), "", f"![rewards per language]({REWARD_PLOT})"]
        _plot_rewards(scores, run_dir / REWARD_PLOT)
        lines += ["", "## Best and worst answer of the first prompt, per language", ""]
        lines += _extremes(StageStore(run_dir, "generate").read(SAMPLE), scores)
    manifests = {r.name: r.manifest for r in results}
    if "pair" in manifests:
        lines += ["", "## Pairs", "", "| product | records |", "|---|---:|"]
        lines += [f"| {name} | {count} |" for name, count in manifests["pair"]["products"].items()]
    for stage in ("sft", "dpo"):
        if stage in manifests:
            lines += ["", *_training_section(stage, manifests[stage])]
    for stage, title in (("judge", "Arena win rates"), ("euroeval", "EuroEval")):
        if stage in manifests:
            manifest = manifests[stage]
            table = (run_dir / stage / manifest["results"]).read_text(encoding="utf-8")
            lines += ["", f"## {title}", "", table.split("\n\nPer subcategory:")[0].strip(), "", f"Full table: `{stage}/{manifest['results']}`"]
            if manifest.get("plot"):
                lines += ["", f"![{title}]({stage}/{manifest['plot']})"]
    path = run_dir / REPORT_FILE
    write_atomic(path, ("\n".join(lines) + "\n").encode())
    return path


def _training_section(stage: str, manifest: dict) -> list[str]:
    provenance = "off-policy pairs (another model's samples)" if manifest["settings"]["off_policy"] else "on-policy pairs"
    evaluated = ", ".join(f"{k.removeprefix('eval_')} {v:.4g}" for k, v in manifest["eval"].items() if k.startswith("eval_") and "runtime" not in k and "per_second" not in k)
    lines = [
        f"## {stage.upper()}",
        "",
        f"{manifest['records_out']} training examples ({manifest['held_out']} held out), {manifest['steps']} optimizer steps, "
        f"{provenance}; final training loss {manifest['final_loss']:.4f}.",
    ]
    if evaluated:
        lines += ["", f"Held out: {evaluated}."]
    lines += ["", f"Adapter: `{manifest['adapter']}`", ""]
    lines += [f"![{plot}]({stage}/{plot})" for plot in manifest["plots"]]
    return lines


def _sample_table(samples: pa.Table) -> list[str]:
    rows = ["| language | samples | prompts | stopped | hit max_new_tokens | mean tokens |", "|---|---:|---:|---:|---:|---:|"]
    by_language = samples.group_by("language").aggregate(
        [("sample_index", "count"), ("prompt_id", "count_distinct"), ("completion_tokens", "mean")]
    )
    for row in sorted(by_language.to_pylist(), key=lambda r: r["language"]):
        reasons = samples.filter(pc.equal(samples["language"], row["language"]))["finish_reason"].to_pylist()
        rows.append(
            f"| {row['language']} | {row['sample_index_count']} | {row['prompt_id_count_distinct']} | {reasons.count('stop')} "
            f"| {reasons.count('length')} | {row['completion_tokens_mean']:.1f} |"
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


def _extremes(samples: pa.Table, scores: pa.Table) -> list[str]:
    joined = scores.join(samples.select([*SAMPLE_KEY, "prompt", "response"]), keys=list(SAMPLE_KEY)).to_pylist()
    lines = []
    for language in sorted({r["language"] for r in joined}):
        rows = [r for r in joined if r["language"] == language]
        first = min(r["prompt_id"] for r in rows)
        pool = sorted((r for r in rows if r["prompt_id"] == first), key=lambda r: (-r["reward"], r["sample_index"]))
        lines += [f"**{language} / {first}**: {_quote(pool[0]['prompt'])}", ""]
        lines += [f"- best ({pool[0]['reward']:.2f}): {_quote(pool[0]['response'])}"]
        if len(pool) > 1:
            lines += [f"- worst ({pool[-1]['reward']:.2f}): {_quote(pool[-1]['response'])}"]
        lines.append("")
    return lines


def _quote(text: str, limit: int = 240) -> str:
    flat = " ".join(text.split())
    return (flat[:limit] + "…") if len(flat) > limit else flat


def _plot_rewards(scores: pa.Table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    languages = sorted(set(scores["language"].to_pylist()))
    rewards = [scores.filter(pc.equal(scores["language"], code))["reward"].to_pylist() for code in languages]
    fig, ax = plt.subplots(figsize=(1.2 * len(languages) + 2, 3.5))
    ax.boxplot(rewards, tick_labels=languages, showmeans=True)
    ax.set_xlabel("language")
    ax.set_ylabel("reward (raw logit)")
    ax.set_title("Reward of every sample, per language")
    fig.tight_layout()
    fig.savefig(path.with_name(path.name + ".tmp.png"), dpi=120)
    plt.close(fig)
    path.with_name(path.name + ".tmp.png").replace(path)
