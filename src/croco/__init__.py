"""croco: cross-lingual contrastive preference tuning of language models on their own generations.

Python API:
    from croco import load_config, run_pipeline
    cfg = load_config("configs/demo.yaml", ["generate.num_samples=8"])
    run_pipeline(cfg)                    # every stage; run_pipeline(cfg, only=["score"]) for one
"""

from croco.config import CrocoConfig, load_config
from croco.errors import CrocoError
from croco.pipeline import STAGE_NAMES, run_pipeline

__all__ = ["CrocoConfig", "CrocoError", "STAGE_NAMES", "load_config", "run_pipeline"]
