"""The pipeline's stages, one module each, in the order they run (croco.plan lists them).

Each module is a `Stage`: it holds the stage's Prefect task (croco.caching.stage_task: cached on
the unit key, retried, callable as `task.fn(cfg, unit)` without a server) and says, for
croco.plan, which units the stage has (`units`), which versions a unit reads (`inputs`), and
what shapes its output (`settings`, with `CODE_VERSION`, bumped whenever the stage's output
would change). A stage that cannot run in some of the run's languages also says why (`skipped`:
language -> reason); the plan, the run's log and the report count and show those.
"""

from typing import Any, Protocol

from croco.config import CrocoConfig
from croco.storage import ALL_LANGUAGES


class Stage(Protocol):
    """What a stage module defines (a module satisfies a Protocol by its attributes)."""

    NAME: str  # also the name of its task attribute: `croco.tasks.generate.generate`
    CODE_VERSION: str
    LOADS_MODEL: bool  # its units load a model where they run, so at most `execution.local_parallel` run in-process

    def enabled(self, cfg: CrocoConfig) -> bool: ...

    def units(self, cfg: CrocoConfig) -> list[tuple[str, str | None]]:
        """(language, evaluated model or None) of every unit."""
        ...

    def inputs(self, cfg: CrocoConfig, language: str, model: str | None) -> list[str]:
        """The unit ids whose versions this unit reads."""
        ...

    def settings(self, cfg: CrocoConfig, language: str, model: str | None) -> dict[str, Any]:
        """Everything that shapes the unit's output (hashed into its key)."""
        ...


# One line per stage for `croco --help`, without importing the stages (and torch with them).
STAGE_DOCS = {
    "prompts": "load and validate the prompts (JSON/JSONL or a datasets dataset)",
    "translate": "translate the English prompts of sources marked `translate` into the run's other languages",
    "generate": "sample answers to every prompt from the policy",
    "score": "score every answer with the reward model",
    "pair": "build SFT and DPO training sets from the scored answers (or from the original code's files)",
    "sft": "train a LoRA adapter on the chosen answers (TRL SFTTrainer)",
    "dpo": "train a LoRA adapter on the chosen/rejected pairs (TRL DPOTrainer)",
    "arena": "answer the m-ArenaHard prompts with the policy and every tuned model",
    "judge": "judge arena answers against the baseline and compute win rates with bootstrap intervals",
    "euroeval": "benchmark every evaluated model with EuroEval, each in its own process",
}
# Stages that run only when asked for by name (`croco audit-reward`), never as part of the pipeline.
ON_DEMAND_DOCS = {
    "audit_translate": "translate the reward audit's English preference pairs into each language",
    "audit_score": "score both answers of every audit pair with the reward model",
}


def throughput(samples: int, tokens: int, seconds: float) -> dict[str, float]:
    """Rates over the work this invocation did (shards resumed from disk are not counted)."""
    if not samples or seconds <= 0:
        return {}
    return {
        "samples_per_s": round(samples / seconds, 3),
        "tokens_per_s": round(tokens / seconds, 2),
        "seconds": round(seconds, 2),
    }


def per_language(cfg: CrocoConfig) -> list[tuple[str, None]]:
    return [(code, None) for code in cfg.languages]


def with_english(cfg: CrocoConfig) -> list[tuple[str, None]]:
    """English and the run's languages: stages that compare every language with English."""
    return [(code, None) for code in ["en", *(code for code in cfg.languages if code != "en")]]


def across_languages(cfg: CrocoConfig) -> list[tuple[str, None]]:
    return [(ALL_LANGUAGES, None)]


def always(cfg: CrocoConfig) -> bool:
    return True
