"""The pipeline's stages, one module each, in the order they run (croco.plan lists them).

Each module holds the stage's Prefect task (croco.caching.stage_task: cached on the unit key,
retried, callable as `task.fn(cfg, unit)` without a server) and says, for croco.plan, which
units the stage has (`units`), which versions a unit reads (`inputs`), and what shapes its
output (`settings`, with `CODE_VERSION`, bumped whenever the stage's output would change).
A stage that cannot run in some of the run's languages also says why (`skipped`: language ->
reason); the plan, the run's log and the report count and show those.
"""

from croco.config import CrocoConfig
from croco.storage import ALL_LANGUAGES

# One line per stage for `croco --help`, without importing the stages (and torch with them).
STAGE_DOCS = {
    "prompts": "load and validate the prompts (JSON/JSONL or a datasets dataset)",
    "generate": "sample answers to every prompt from the policy",
    "score": "score every answer with the reward model",
    "pair": "build SFT and DPO training sets from the scored answers (or from the original code's files)",
    "sft": "train a LoRA adapter on the chosen answers (TRL SFTTrainer)",
    "dpo": "train a LoRA adapter on the chosen/rejected pairs (TRL DPOTrainer)",
    "arena": "answer the m-ArenaHard prompts with the policy and every tuned model",
    "judge": "judge arena answers against the baseline and compute win rates with bootstrap intervals",
    "euroeval": "benchmark every evaluated model with EuroEval, each in its own process",
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


def across_languages(cfg: CrocoConfig) -> list[tuple[str, None]]:
    return [(ALL_LANGUAGES, None)]


def always(cfg: CrocoConfig) -> bool:
    return True
