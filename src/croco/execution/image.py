"""Building the cluster image (`apptainer build`, or singularity's) as a prefect-shell ShellOperation, so the build's
output is in the flow run's log; the result is what a unit's manifest records of the image it ran in."""

from __future__ import annotations

import shlex
from importlib import resources
from pathlib import Path

from croco.errors import CrocoError
from croco.fileio import remembered_sha256

BUILDERS = ("apptainer", "singularity")


def default_definition() -> Path:
    """The definition shipped with croco: ROCm, vLLM and croco (infra/apptainer/croco-rocm.def)."""
    return Path(str(resources.files("croco.infra") / "apptainer" / "croco-rocm.def"))


def build_image(image: Path, definition: Path, builder: str = "apptainer", force: bool = False) -> dict[str, str]:
    """Build `image` from `definition` with `builder`; its {path, sha256}. A failed build raises with the tail of
    what the builder printed (ShellOperation's own error says only the exit status)."""
    from prefect_shell import ShellOperation

    if builder not in BUILDERS:
        raise CrocoError(f"Image builder {builder!r} is not one of {', '.join(BUILDERS)}.")
    if not definition.is_file():
        raise CrocoError(f"Image definition {definition} does not exist; give the path of an Apptainer .def file.")
    if image.exists() and not force:
        raise CrocoError(f"Image {image} exists already; pass --force to build it again.")
    argv = [builder, "build", *(["--force"] if force else []), str(image), str(definition)]
    with ShellOperation(commands=[shlex.join(argv) + " 2>&1"], stream_output=True) as operation:
        process = operation.trigger()
        try:
            process.wait_for_completion()
        except RuntimeError:
            tail = "\n".join(process.fetch_result()[-20:]) or "no output"
            raise CrocoError(f"{builder} build of {image} from {definition} failed:\n{tail}") from None
    if not image.is_file():
        raise CrocoError(f"{builder} build ended without writing {image}.")
    return {"path": str(image.resolve()), "sha256": remembered_sha256([image])[image]}
