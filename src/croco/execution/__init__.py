"""Where a unit's work runs, behind one small interface: in this process (`local`, the default) or, for a
cluster, as a job that runs `croco unit` against the same storage root while the flow waits on it."""

from __future__ import annotations

from typing import Any, Protocol

from croco.caching import Work, run_here
from croco.config import CrocoConfig
from croco.plan import Unit


class Backend(Protocol):
    def run(self, cfg: CrocoConfig, unit: Unit, work: Work) -> dict[str, Any]:
        """Bring the unit's version to committed (resuming what an earlier attempt finished) and return its
        manifest, or raise: a CrocoError for what a retry cannot fix, any other error for what it may."""
        ...


class Local:
    """The unit's work in the flow's own process: tiny runs, laptops, tests."""

    def run(self, cfg: CrocoConfig, unit: Unit, work: Work) -> dict[str, Any]:
        return run_here(cfg, unit, work)


def runs_here(cfg: CrocoConfig, stage: str) -> bool:
    """Whether `stage`'s units run in the flow's own process."""
    return cfg.execution.for_stage(stage).kind == "local"


def backend_for(cfg: CrocoConfig, stage: str) -> Backend:
    """The backend `execution` names for this stage (`execution.stages.STAGE` over the section's default)."""
    if not runs_here(cfg, stage):
        from croco.execution.slurm_backend import SlurmBackend

        return SlurmBackend()
    return Local()
