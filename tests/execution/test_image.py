"""Building the cluster image as a flow run (croco.execution.image) with a stand-in `apptainer build` on PATH: no
Apptainer is installable here, so the stand-in prints as the builder does and writes the image."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from croco.errors import CrocoError
from croco.execution.image import default_definition
from croco.flows.image import image

# `apptainer build [--force] IMAGE DEFINITION`: records its argv, prints a line, and fails where the definition asks.
BUILDER = """#!/bin/bash
printf '%s\\n' "$@" > {record}
echo "INFO:    Starting build..."
if grep -q FAIL "${{@: -1}}"; then echo "FATAL:   While performing build: conveyor failed" >&2; exit 255; fi
cp "${{@: -1}}" "${{@: -2:1}}"
echo "INFO:    Build complete: ${{@: -2:1}}"
"""


@pytest.fixture
def builder_on_path(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    program = folder / "apptainer"
    program.write_text(BUILDER.format(record=tmp_path / "argv"))
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{Path.cwd()}:/usr/bin:/bin")
    return tmp_path / "argv"


def test_the_image_is_built_in_a_flow_run_whose_log_has_the_builders_output(tmp_path, builder_on_path, caplog):
    out = tmp_path / "croco-rocm.sif"
    with caplog.at_level(logging.INFO):
        built = image(output=str(out))
    assert builder_on_path.read_text().split() == ["build", str(out), str(default_definition())]
    assert built == {"path": str(out), "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
    assert "Build complete" in caplog.text
    with pytest.raises(CrocoError, match="exists already; pass --force"):
        image(output=str(out))
    image(output=str(out), force=True)
    assert builder_on_path.read_text().split()[:2] == ["build", "--force"]


def test_a_failed_build_raises_with_what_the_builder_printed(tmp_path, builder_on_path):
    definition = tmp_path / "broken.def"
    definition.write_text("Bootstrap: docker\nFrom: FAIL\n")
    with pytest.raises(CrocoError, match="(?s)apptainer build of .* failed:.*FATAL: +While performing build"):
        image(output=str(tmp_path / "x.sif"), definition=str(definition))
    with pytest.raises(CrocoError, match="does not exist"):
        image(output=str(tmp_path / "x.sif"), definition=str(tmp_path / "missing.def"))
