import subprocess
import sys

import pytest

from croco.cli import main
from croco.config import STAGE_NAMES

from conftest import REPO


@pytest.mark.parametrize("command", ["run", *STAGE_NAMES, "config", "plan", "runs", "gc"])
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
    from croco.plan import stage_modules
    from croco.tasks import STAGE_DOCS

    assert list(STAGE_DOCS) == STAGE_NAMES == [module.NAME for module in stage_modules()]


def test_prefetch_of_the_demo_has_nothing_to_download():
    assert main(["prefetch", str(REPO / "configs" / "demo.yaml")]) == 0


def test_plan_runs_and_gc_show_what_is_stored(tmp_path, tiny_models, prompts_file, capsys):
    from conftest import make_config, run, save_config

    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], sft={"enabled": False}, dpo={"enabled": False})
    path = save_config(cfg, tmp_path / "cfg.yaml")
    assert main(["plan", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [[unit, "run"] for unit in ("prompts/en", "prompts/da", "generate/en", "generate/da", "score/en", "score/da", "pair/all")]
    run(cfg, stages=["generate"])
    assert main(["plan", str(path), "generate.max_new_tokens=2"]) == 0
    states = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert states["prompts/en"] == "cached" and states["generate/en"] == "run"
    run(cfg, stages=["generate"], languages=["en"])
    assert main(["runs", str(path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["gc", str(path), "--keep", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "deleted 2 versions and 1 run records; kept 2 versions"  # prompts/da and generate/da: only the older run used them


def test_config_output_masks_keys_and_url_passwords(capsys):
    secret_overrides = [
        "generate.engine={name: openai, base_url: 'http://user:url-password-1@127.0.0.1:8000/v1', api_key_env: CROCO_KEY}",
        "euroeval.extra_args=[--api-key, pasted-key-2]",
    ]
    assert main(["config", str(REPO / "configs" / "demo.yaml"), *secret_overrides]) == 0
    out = capsys.readouterr().out
    assert "url-password-1" not in out and "pasted-key-2" not in out
    assert "base_url: http://***@127.0.0.1:8000/v1" in out and "api_key_env: CROCO_KEY" in out
