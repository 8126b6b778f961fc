"""Which of croco's languages a text is in, offline, with py3langid's bundled model.

py3langid was chosen on measured accuracy over tests/data/langid/ (benchmarks/bench_langid.py; the
table is in the README): it covers all fifteen languages, where lingua lacks Galician and Maltese,
and it was the most accurate of those that cover them all; its 4.5 MB model ships in the wheel.

The answer is always one of croco's languages or `unknown`. The confidence is that language's
probability in the model's full 97-language distribution, not among croco's fifteen alone: text in
Catalan, Polish or Russian, code and gibberish then get a low confidence and come out `unknown`
instead of being forced onto the nearest croco language (Catalan onto Spanish at 0.81, Russian onto
Norwegian at 0.99, when the model is restricted). Norwegian Bokmål and Nynorsk both count as `no`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from py3langid.langid import MODEL_FILE, LanguageIdentifier

from croco.languages import get_language

LANGID_LANGUAGES = ("da", "nl", "en", "fi", "fr", "gl", "de", "ga", "it", "mt", "no", "pt", "es", "sv", "cy")
UNKNOWN = "unknown"
# Below this a text is `unknown`. At 0.5 (the language holds most of the probability) the held-out set
# keeps 99.3% of texts of five words or more and 72% of shorter ones, names a wrong language for 6 of
# 750 texts (short Danish/Norwegian and Galician/Spanish greetings), and calls every gibberish and
# non-croco-language probe `unknown`. 0.3 keeps 80% of short texts but lets 11 wrong answers through.
MIN_CONFIDENCE = 0.5
NORWEGIAN = {"nb": "no", "nn": "no"}

_identifier: LanguageIdentifier | None = None
_loading = threading.Lock()


@dataclass(frozen=True, slots=True)
class Detection:
    language: str  # a croco code from LANGID_LANGUAGES, or "unknown"
    confidence: float  # probability of the best croco language (also when it is below the threshold)


def croco_code(code: str) -> str:
    """The code under which language identification reports `code` (Bokmål and Nynorsk are `no`)."""
    return NORWEGIAN.get(code, code)


def _model() -> LanguageIdentifier:
    # Loaded once per process (about a second); classifying only reads it, so threads share it.
    global _identifier
    with _loading:
        if _identifier is None:
            _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return _identifier


def detect(text: str, min_confidence: float = MIN_CONFIDENCE) -> Detection:
    """The croco language `text` is written in, or `unknown` when the model is less sure than `min_confidence`."""
    probabilities: dict[str, float] = {}
    for code, probability in _model().rank(text):
        language = croco_code(code)
        if language in LANGID_LANGUAGES:
            probabilities[language] = probabilities.get(language, 0.0) + probability
    language = max(probabilities, key=probabilities.__getitem__)
    confidence = probabilities[language]
    return Detection(language if confidence >= min_confidence else UNKNOWN, confidence)


def detect_many(texts: Iterable[str], min_confidence: float = MIN_CONFIDENCE) -> list[Detection]:
    return [detect(text, min_confidence) for text in texts]


def target_code(language: str) -> str:
    """The code `detect` gives text in croco language `language` (`no` for Bokmål and Nynorsk)."""
    return croco_code(get_language(language).code)


def on_target(text: str, language: str) -> bool:
    """Whether `text` as a whole is detected as `language` (a croco code; `unknown` is not on target)."""
    return detect(text).language == target_code(language)


def line_pass_rate(text: str, language: str, min_words: int = 5) -> float | None:
    """The share of lines of `min_words` words or more detected as `language` (the language-confusion
    line-level pass rate); None when no line is that long."""
    lines = [line for line in text.splitlines() if len(line.split()) >= min_words]
    if not lines:
        return None
    target = target_code(language)
    return sum(found.language == target for found in detect_many(lines)) / len(lines)
