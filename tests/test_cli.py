import subprocess
import sys

import pytest

from croco.cli import main
from croco.pipeline import STAGE_NAMES

from conftest import REPO


@pytest.mark.parametrize("command", ["run", *STAGE_NAMES, "config"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert "KEY=VALUE" in capsys.readouterr().out


def test_user_errors_are_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "croco.cli", "run", str(REPO / "configs" / "demo.yaml"), "generate.num_sampels=2"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"croco: error: {REPO / 'configs' / 'demo.yaml'}: unknown key generate.num_sampels; did you mean generate.num_samples?"
    ]


def test_config_prints_the_resolved_config(capsys):
    assert main(["config", str(REPO / "configs" / "demo.yaml"), "generate.num_samples=3"]) == 0
    out = capsys.readouterr().out
    assert "num_samples: 3" in out and "top_p: 1.0" in out


def test_languages_lists_the_registry(capsys):
    assert main(["languages"]) == 0
    assert "ga  Irish" in capsys.readouterr().out


def test_readme_config_reference_is_current():
    from croco.config import config_reference

    readme = (REPO / "README.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "\n<!-- config-reference:end -->"
    assert readme[readme.index(start) + len(start) : readme.index(end)] == config_reference(), "regenerate it with `croco config --reference`"


def test_help_lists_every_stage_in_pipeline_order():
    from croco.stages import STAGE_DOCS

    assert list(STAGE_DOCS) == STAGE_NAMES


def test_prefetch_of_the_demo_has_nothing_to_download():
    assert main(["prefetch", str(REPO / "configs" / "demo.yaml")]) == 0
