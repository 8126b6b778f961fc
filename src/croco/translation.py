"""Translating texts with any engine: the prompt a translator gets, and which of a run's languages are translated.

Each text is translated on its own, greedily, as one user turn (METHOD.md, "Stage 0 - translate"). TranslateGemma
gets its own format with its language codes (croco.languages: `pt-PT` for Portuguese); any other model gets a plain
instruction. The translate stage uses this for conversations; anything else that needs texts translated (English
preference pairs, say) calls `translate_texts`.
"""

from __future__ import annotations

from typing import Sequence

from croco.config import CrocoConfig, TranslateConfig
from croco.engines import Completion, Generator, Messages, Progress, SamplingParams
from croco.errors import CrocoError
from croco.languages import get_language

SOURCE_LANGUAGE = "en"  # what sources marked `translate` hold
TRANSLATEGEMMA = "<<<source>>>{source}<<<target>>>{target}<<<text>>>{text}"
INSTRUCTION = "Translate this English text into {language}.\n\n{text}"


def prompt_format(settings: TranslateConfig) -> str:
    """`translategemma` or `instruction`: `auto` goes by whether the translator's path names TranslateGemma."""
    if settings.prompt_format != "auto":
        return settings.prompt_format
    path = settings.model.path if settings.model else ""
    return "translategemma" if "translategemma" in path.lower() else "instruction"


def translation_prompt(text: str, source_lang: str, target_lang: str, settings: TranslateConfig) -> Messages:
    """The one user turn that asks the translator for `text` (in croco language `source_lang`) in `target_lang`."""
    target = get_language(target_lang)
    if prompt_format(settings) == "translategemma":
        codes = [get_language(source_lang).translation_code, target.translation_code]
        if None in codes:
            missing = source_lang if codes[0] is None else target_lang
            raise CrocoError(
                f"TranslateGemma has no language code for {get_language(missing).name} ({missing}) in croco's table; "
                "set translate.prompt_format: instruction or leave that language out of translate.languages"
            )
        content = TRANSLATEGEMMA.format(source=codes[0], target=codes[1], text=text)
    elif source_lang == SOURCE_LANGUAGE:
        content = INSTRUCTION.format(language=target.name, text=text)
    else:
        content = INSTRUCTION.replace("English", get_language(source_lang).name).format(language=target.name, text=text)
    return [{"role": "user", "content": content}]


def translate(
    generator: Generator,
    texts: Sequence[str],
    source_lang: str,
    target_lang: str,
    settings: TranslateConfig,
    progress: Progress | None = None,
) -> list[Completion]:
    """One greedy translation of each text, up to `settings.max_new_tokens`, in order."""
    prompts = [translation_prompt(text, source_lang, target_lang, settings) for text in texts]
    greedy = SamplingParams(num_samples=1, max_new_tokens=settings.max_new_tokens, temperature=0.0, top_p=1.0, seed=0)
    return [samples[0] for samples in generator.generate(prompts, greedy, progress)]


def translate_texts(
    generator: Generator, texts: Sequence[str], source_lang: str, target_lang: str, settings: TranslateConfig
) -> list[str]:
    """The translations of `texts` alone (`translate` gives finish reasons and token counts too)."""
    return [completion.text for completion in translate(generator, texts, source_lang, target_lang, settings)]


def translated_languages(cfg: CrocoConfig) -> list[str]:
    """The run's languages whose prompts are translated from the sources marked `translate` (none without one)."""
    if not any(source.translate for source in cfg.data.sources):
        return []
    chosen = cfg.translate.languages
    return [code for code in cfg.languages if code != SOURCE_LANGUAGE and (chosen is None or code in chosen)]


def prompts_unit(cfg: CrocoConfig, language: str) -> str:
    """The unit whose version holds `language`'s prompts: its translation, or the prompts loaded from its sources."""
    return f"translate/{language}" if language in translated_languages(cfg) else f"prompts/{language}"
