"""Language fidelity of answers and translations: which language each one is in, and per unit how many are in the
language they should be.

Every sample and arena answer records `detect`'s language and confidence and its line pass rate (croco.records,
DETECTED); a unit's manifest then holds `fidelity(...)` of its answers, which the summaries and the report show.
Every translated message records its language, confidence and length against the English (`translation_check`); a
translate unit's manifest holds `translation_fidelity(...)`.
"""

from __future__ import annotations

from typing import Any

from croco.langid import UNKNOWN, detect, line_pass_rate, target_code

# Below this many characters of English a length ratio says little ("Hi!" -> "Dia dhuit!"): not checked.
MIN_CHARS_FOR_RATIO = 20
COPY, OFF_TARGET, LENGTH_RATIO = "copy", "off_target", "length_ratio"  # bad translations, in the order they are checked


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


def translation_check(
    source: str, translation: str, language: str, min_ratio: float, max_ratio: float
) -> dict[str, Any]:
    """The language `translation` (of English `source` into croco language `language`) is detected in, its length
    against the source's, and what is wrong with it, if anything: `copy` (the source again, up to case and spacing),
    `off_target` (confidently another language) or `length_ratio` (outside [min_ratio, max_ratio]); else None."""
    found = detect(translation)
    ratio = len(translation.strip()) / len(source.strip()) if len(source.strip()) >= MIN_CHARS_FOR_RATIO else None
    if " ".join(translation.casefold().split()) == " ".join(source.casefold().split()):
        problem = COPY
    elif found.language not in (target_code(language), UNKNOWN):
        problem = OFF_TARGET
    elif ratio is not None and not min_ratio <= ratio <= max_ratio:
        problem = LENGTH_RATIO
    else:
        problem = None
    return {
        "detected_language": found.language,
        "detected_confidence": found.confidence,
        "length_ratio": ratio,
        "problem": problem,
    }


def translation_fidelity(language: str, checks: list[dict[str, Any]], flagged: list[str | None]) -> dict[str, Any]:
    """Of one language's translated messages (`checks`, from translation_check) and conversations (`flagged`: each
    one's first problem or None): the share of messages detected in `language`, and the bad ones by problem."""
    target = target_code(language)
    problems = [check["problem"] for check in checks]
    return {
        "messages": len(checks),
        "on_target": sum(c["detected_language"] == target for c in checks) / len(checks) if checks else None,
        "copies": problems.count(COPY),
        "off_target": problems.count(OFF_TARGET),
        "extreme_length_ratio": problems.count(LENGTH_RATIO),
        "conversations": len(flagged),
        "conversations_flagged": {p: flagged.count(p) for p in (COPY, OFF_TARGET, LENGTH_RATIO) if p in flagged},
    }
