"""croco: cross-lingual contrastive preference tuning of language models on their own generations.

Python API:
    from croco import load_config, run_pipeline
    cfg = load_config("configs/demo.yaml", ["generate.num_samples=8"])
    run_pipeline(cfg)                    # every stage; run_pipeline(cfg, only=["score"]) for one
"""

from croco.config import CrocoConfig, load_config
from croco.errors import CrocoError

__all__ = ["CrocoConfig", "CrocoError", "STAGE_NAMES", "load_config", "run_pipeline"]


def __getattr__(name: str):
    # The pipeline imports torch and transformers; load it only when asked for.
    if name in ("run_pipeline", "STAGE_NAMES"):
        from croco import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'croco' has no attribute {name!r}")
