"""The `croco` command: `croco run CONFIG` runs every stage, `croco STAGE CONFIG` runs one."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import metadata

import yaml

from croco.config import config_reference, load_config
from croco.errors import CrocoError
from croco.languages import LANGUAGES
from croco.pipeline import STAGES, run_pipeline
from croco.report import write_report

log = logging.getLogger("croco")

EPILOG = """examples:
  croco run configs/demo.yaml                      run every stage (finished stages are skipped)
  croco run configs/demo.yaml generate.num_samples=8 languages=[en,da]
  croco generate configs/demo.yaml --force         redo one stage (and invalidate the ones after it)
  croco config configs/eurollm-9b.yaml             check a config and print it with all defaults filled in
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="croco",
        description="Cross-lingual contrastive preference tuning on self-generations.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"croco {metadata.version('croco')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("config", help="YAML run config (see configs/ and the README's config reference)")
        sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any config key, e.g. generate.num_samples=8")

    run = commands.add_parser("run", help="run every stage in order, resuming finished work")
    with_config(run)
    run.add_argument("--force", action="store_true", help="redo every stage from scratch")
    for stage in STAGES:
        sub = commands.add_parser(stage.NAME, help=stage.__doc__.strip().splitlines()[0])
        with_config(sub)
        sub.add_argument("--force", action="store_true", help="redo this stage even if finished (later stages are invalidated)")
    show = commands.add_parser("config", help="validate a config and print it with every default filled in")
    show.add_argument("config", nargs="?", help="YAML run config")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    show.add_argument("--reference", action="store_true", help="print the reference of every config key (Markdown)")
    commands.add_parser("languages", help="list the language codes croco knows")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # weight-loading bars drown croco's own progress
    try:
        return _dispatch(args)
    except CrocoError as exc:
        print(f"croco: error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "languages":
        for lang in LANGUAGES.values():
            print(f"{lang.code:3} {lang.name:18} {'low-resource' if lang.low_resource else ''}")
        return 0
    if args.command == "config":
        if args.reference or not args.config:
            print(config_reference())
            return 0
        print(yaml.safe_dump(load_config(args.config, args.overrides).model_dump(), sort_keys=False, allow_unicode=True), end="")
        return 0
    cfg = load_config(args.config, args.overrides)
    only = None if args.command == "run" else [args.command]
    results = run_pipeline(cfg, only=only, force=args.force)
    report = write_report(cfg, results)
    log.info("outputs: %s (one folder per stage: %s)", cfg.run_dir, ", ".join(r.name for r in results))
    log.info("report:  %s", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
