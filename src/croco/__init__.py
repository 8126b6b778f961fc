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
# The temporary server Prefect starts when no server is configured (croco's or Prefect's own, both inheriting this
# environment) sends no telemetry heartbeat: croco needs none, and on a fresh PREFECT_HOME its write into the SQLite
# database, racing the server's own set-up, printed "database is locked" tracebacks.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Its first start creates that database; on a busy machine that took longer than Prefect's 20 s, and the run failed.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
logging.getLogger("croco").setLevel(logging.INFO)
logging.getLogger("croco").addFilter(RedactSecrets())  # no key or URL password reaches a terminal or a run's logs

__all__ = ["CrocoConfig", "CrocoError", "load_config"]
