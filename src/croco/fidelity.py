"""Language fidelity of answers: which language each one is in, and per unit how many are in the prompt's language.

Every sample and arena answer records `detect`'s language and confidence and its line pass rate (croco.records,
DETECTED); a unit's manifest then holds `fidelity(...)` of its answers, which the summaries and the report show.
"""

from __future__ import annotations

from typing import Any

from croco.langid import detect, line_pass_rate, target_code


def detected(text: str, language: str) -> dict[str, Any]:
    """The DETECTED columns of an answer to a prompt in croco language `language`."""
    found = detect(text)
    return {
        "detected_language": found.language,
        "detected_confidence": found.confidence,
        "line_pass_rate": line_pass_rate(text, language),
    }


def fidelity(language: str, detected_languages: list[str | None], line_rates: list[float | None]) -> dict[str, Any]:
    """Of the answers to prompts in `language`: how many, the share detected as that language (`on_target`), and the
    mean line pass rate over the `with_long_lines` answers that have a line of five words or more (None if none has)."""
    target = target_code(language)
    rates = [rate for rate in line_rates if rate is not None]
    return {
        "answers": len(detected_languages),
        "on_target": sum(code == target for code in detected_languages) / len(detected_languages)
        if detected_languages
        else None,
        "line_pass_rate": sum(rates) / len(rates) if rates else None,
        "with_long_lines": len(rates),
    }


def percent(share: float | None) -> str:
    return "–" if share is None else f"{100 * share:.0f}%"
