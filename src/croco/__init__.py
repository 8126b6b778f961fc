"""croco: cross-lingual contrastive preference tuning of language models on their own generations.

Python API (the flows are plain Prefect flows; called directly they run in this process):
    from croco.flows.pipeline import pipeline
    pipeline(config="configs/demo.yaml", overrides=["generate.num_samples=8"])
    pipeline(config="configs/demo.yaml", stages=["score"])     # one stage and the finished work it reads
"""

import logging
import os

from croco.config import CrocoConfig, load_config
from croco.errors import CrocoError
from croco.redaction import RedactSecrets

# Stage logs (the "croco" logger) go to the Prefect run's logs, so the UI shows them.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "croco")
# Outside a flow run (croco plan, gc, merge, or a task's .fn) those lines only go to the terminal.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
logging.getLogger("croco").setLevel(logging.INFO)
logging.getLogger("croco").addFilter(RedactSecrets())  # no key or URL password reaches a terminal or a run's logs

__all__ = ["CrocoConfig", "CrocoError", "load_config"]
