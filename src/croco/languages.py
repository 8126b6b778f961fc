"""The one registry of languages that every stage reads.

Codes differ by tool: TranslateGemma wants `pt-PT`, EuroEval splits Norwegian into
Bokmål and Nynorsk, language-ID models use ISO 639-3 with a script. A stage asks this
table for the code it needs instead of keeping its own list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    code: str  # the ISO 639-1 code croco uses everywhere (configs, records, file names)
    name: str  # English name, used in prompts such as "Please respond in Danish"
    translation_code: str | None  # TranslateGemma's code; None where it has none
    euroeval_code: str | None  # EuroEval's language code; None where EuroEval has no such language
    arena_code: str | None  # language code in m-ArenaHard-v2.1; None where it is not covered
    langid_code: str  # ISO 639-3 + script, as GlotLID and NLLB-style language-ID models name it
    low_resource: bool = False


LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in [
        Language("en", "English", "en", "en", "en", "eng_Latn"),
        Language("da", "Danish", "da", "da", "da", "dan_Latn"),
        Language("nl", "Dutch", "nl", "nl", "nl", "nld_Latn"),
        Language("de", "German", "de", "de", "de", "deu_Latn"),
        Language("fr", "French", "fr", "fr", "fr", "fra_Latn"),
        Language("it", "Italian", "it", "it", "it", "ita_Latn"),
        Language("es", "Spanish", "es", "es", "es", "spa_Latn"),
        Language("pt", "Portuguese", "pt-PT", "pt", None, "por_Latn"),
        Language("sv", "Swedish", None, "sv", None, "swe_Latn"),
        Language("fi", "Finnish", None, "fi", None, "fin_Latn"),
        Language("no", "Norwegian", None, "no", None, "nob_Latn"),
        Language("nb", "Norwegian Bokmål", None, "nb", None, "nob_Latn"),
        Language("nn", "Norwegian Nynorsk", None, "nn", None, "nno_Latn"),
        Language("gl", "Galician", "gl", None, "gl", "glg_Latn", low_resource=True),
        Language("ga", "Irish", "ga", None, "ga", "gle_Latn", low_resource=True),
        Language("mt", "Maltese", "mt", None, "mt", "mlt_Latn", low_resource=True),
        Language("cy", "Welsh", "cy", None, "cy", "cym_Latn", low_resource=True),
    ]
}


# What `generate.respond_in_language` appends to each prompt (after a blank line).
LANGUAGE_INSTRUCTION = "Please respond in {language} and nothing else."


def get_language(code: str) -> Language:
    """Look a language up by croco code, with an error that lists the known codes."""
    try:
        return LANGUAGES[code]
    except KeyError:
        known = ", ".join(sorted(LANGUAGES))
        raise KeyError(f"unknown language code {code!r}; known codes: {known}") from None
