"""What a person reads about a stage: one log line, and a Prefect artifact on the run page in the UI."""

from __future__ import annotations

import logging
from typing import Any

from croco.fidelity import percent
from croco.plan import Unit

log = logging.getLogger("croco")


def summary_line(unit: Unit, manifest: dict[str, Any]) -> str:
    skipped = manifest.get("skipped") or {}
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
    line = f"{unit.id}: {manifest['records_out']} records out of {manifest['records_in']} in, {sum(skipped.values())} skipped"
    line += f" ({reasons})" if reasons else ""
    line += f", {manifest['wall_s']:.1f} s"
    rates = manifest.get("throughput") or {}
    if rates:
        line += f", {rates['samples_per_s']:.2f} samples/s, {rates['tokens_per_s']:.1f} tokens/s"
    if manifest.get("fidelity"):
        line += f", {fidelity_text(unit, manifest['fidelity'])}"
    return line + "".join(f"; warning: {warning}" for warning in manifest.get("warnings", []))


def fidelity_text(unit: Unit, fidelity: dict[str, Any]) -> str:
    """The language fidelity of a unit's answers: of translations, the share of messages in the target language and
    the bad ones; of samples and arena answers, the share in the prompt's language and the line pass rate; of pairs,
    per language, the in-language chosen and rejected answers in their language."""
    if "messages" in fidelity:
        flagged = ", ".join(f"{p} {n}" for p, n in fidelity["conversations_flagged"].items()) or "none"
        return (
            f"{percent(fidelity['on_target'])} of {fidelity['messages']} messages in {unit.language}, "
            f"{fidelity['copies']} copies, {fidelity['extreme_length_ratio']} extreme length ratios; "
            f"conversations with a bad translation: {flagged}"
        )
    if "on_target" in fidelity:
        return (
            f"{percent(fidelity['on_target'])} in {unit.language}, line pass rate {percent(fidelity['line_pass_rate'])} "
            f"({fidelity['with_long_lines']} of {fidelity['answers']} with a line of 5+ words)"
        )
    return "in language: " + ", ".join(
        f"{code} chosen {percent(rates['chosen_on_target'])} rejected {percent(rates['rejected_on_target'])}"
        for code, rates in fidelity["in_language"].items()
    )


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "-".join(p for p in parts if p).lower().replace("_", "-").replace("/", "-").replace(".", "-")


def in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def publish_summary(unit: Unit, manifest: dict[str, Any]) -> None:
    """The stage's counts, skips by reason and artifact URI as a Markdown artifact of the task run."""
    if not in_prefect_run():
        return
    from prefect.artifacts import create_markdown_artifact

    skipped = manifest.get("skipped") or {}
    lines = [
        f"### {unit.id}",
        "",
        f"- version: `{manifest['uri']}`",
        f"- records: {manifest['records_out']} out of {manifest['records_in']} in",
    ]
    lines += [f"- skipped, {reason}: {count}" for reason, count in sorted(skipped.items())]
    lines += [f"- **warning**: {warning}" for warning in manifest.get("warnings", [])]
    if manifest.get("fidelity"):
        lines.append(f"- language fidelity: {fidelity_text(unit, manifest['fidelity'])}")
    for extra in ("products", "finish_reasons", "reward_stats", "throughput"):
        if manifest.get(extra):
            lines.append(f"- {extra.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in manifest[extra].items()))
    create_markdown_artifact(
        "\n".join(lines) + "\n",
        key=artifact_key("croco", unit.stage, unit.language, unit.model or ""),
        description=f"croco {unit.id}",
    )


def publish_markdown(markdown: str, key: str, description: str) -> None:
    if in_prefect_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown, key=artifact_key(key), description=description)


def publish_table(rows: list[dict[str, Any]], key: str, description: str) -> None:
    if in_prefect_run():
        from prefect.artifacts import create_table_artifact

        create_table_artifact(rows, key=artifact_key(key), description=description)
