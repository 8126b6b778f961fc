"""The cluster image built as a flow run (croco.execution.image): the build's output is the run's log, and the
image's path and sha256 (what unit manifests record of the image their jobs ran in) its artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from croco.execution.image import build_image, default_definition
from croco.summaries import publish_markdown


@flow(name="croco-image", description="Build the Apptainer/Singularity image croco's SLURM jobs run in.")
def image(output: str, definition: str | None = None, builder: str = "apptainer", force: bool = False) -> dict:
    """Build the cluster image.

    Args:
        output: Where the image goes, e.g. /scratch/project_x/croco-rocm.sif.
        definition: The Apptainer definition file; croco's infra/apptainer/croco-rocm.def if not given.
        builder: apptainer or singularity.
        force: Build again over an existing image.
    """
    built = build_image(Path(output), Path(definition) if definition else default_definition(), builder, force)
    publish_markdown(
        f"### croco image\n\n- path: `{built['path']}`\n- sha256: `{built['sha256']}`\n",
        "croco-image",
        f"croco image {built['path']}",
    )
    return built
