"""The `croco` command: `croco run CONFIG` calls the pipeline flow in this process, `croco STAGE CONFIG` runs one stage."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml

from croco.config import config_reference, load_config
from croco.errors import CrocoError
from croco.languages import LANGUAGES
from croco.redaction import redact_value, refuse_credentials
from croco.tasks import ON_DEMAND_DOCS, STAGE_DOCS

log = logging.getLogger("croco")

EPILOG = """examples:
  croco run configs/demo.yaml                      run every stage (finished units are cache hits)
  croco run configs/demo.yaml generate.num_samples=8 languages=[en,da]
  croco plan configs/demo.yaml                     what is cached and what would run, per stage and language
  croco generate configs/demo.yaml                 one stage (and the finished work it reads)
  croco judge configs/demo.yaml judge.ties=win     recount the arena tables from the stored judgments
  croco runs configs/demo.yaml                     the runs kept in the config's storage, and which are still going
  croco report configs/demo.yaml                   write the newest completed run's report again, print its HTML file
  croco compare --storage runs/demo RUN_ID demo     a run against the newest completed run of config `demo`
  croco gc configs/demo.yaml --keep 3 --dry-run    what gc would delete, keeping the 3 newest completed runs
  croco config configs/eurollm-9b.yaml             check a config and print it with all defaults filled in
  croco deploy configs/my-run.yaml --schedule "0 3 * * *"   its deployments on the Prefect server, refreshed daily
  croco image /scratch/project_x/croco-rocm.sif    build the cluster image (apptainer build) as a logged flow run
  croco audit-reward configs/demo.yaml             how well the reward model ranks answers in each language vs English
"""

AUDIT_DESCRIPTION = """\
The reward transfer audit. English preference pairs (a prompt, a clearly better and a
clearly worse answer) are translated into the config's languages by its translator (translate.model,
else the policy), and the reward model scores both answers under the translated prompt. Per language:

  accuracy        the share of pairs whose chosen answer scores above the rejected one
  margin rho      Spearman's correlation of the pairs' margins (chosen minus rejected)
                  with their English margins
  wrong language  the share of pairs where the untranslated English chosen answer
                  outscores the translated one, both under the translated prompt

40 pairs ship with croco; use your own JSON/JSONL file or dataset with the fields pair_id,
prompt, chosen and rejected with audit.pairs=FILE. Writes a Markdown table and a plot
into the run's report (and its Prefect artifact). Finished translations and scores are
cache hits: auditing another reward model (models.reward.path=...) translates nothing again.
"""


RUN_HELP = "a config file (its newest completed run), or with --storage a run id or config name"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="croco",
        description="Cross-lingual contrastive preference tuning on self-generations.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"croco {metadata.version('croco')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser, optional: bool = False) -> None:
        sub.add_argument(
            "config",
            nargs="?" if optional else None,
            help="YAML run config (see configs/ and the README's config reference)",
        )
        sub.add_argument(
            "overrides", nargs="*", metavar="KEY=VALUE", help="override any config key, e.g. generate.num_samples=8"
        )

    run = commands.add_parser("run", help="run the pipeline flow (every enabled stage) in this process")
    with_config(run)
    for name, summary in STAGE_DOCS.items():
        sub = commands.add_parser(name, help=summary)
        with_config(sub, optional=name == "pair")  # pair also has a form that takes files instead
        if name == "pair":
            _add_migration_arguments(sub)
    audit = commands.add_parser(
        "audit-reward",
        help="measure how well the config's reward model ranks answers in each of its languages, against English",
        description=AUDIT_DESCRIPTION,
        epilog="examples:\n  croco audit-reward configs/demo.yaml\n"
        "  croco audit-reward configs/demo.yaml models.reward.path=Skywork/Skywork-Reward-V2-Llama-3.1-8B\n"
        "  croco audit-reward configs/demo.yaml audit.pairs=my_pairs.jsonl audit.limit=20 languages=[da,de]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    with_config(audit)
    plan = commands.add_parser("plan", help="print, per stage and language, what is cached and what would run")
    with_config(plan)
    plan.add_argument(
        "--notify",
        action="store_true",
        help="emit the Prefect event croco.config.languages-added if the config has new languages; it carries the "
        "config (an absolute path or URI) and the overrides, and starts that config's croco-languages deployment",
    )
    deploy = commands.add_parser(
        "deploy",
        help="create or update the config's deployments croco-pipeline/NAME, croco-evaluate/NAME, croco-languages/NAME",
        description="Create or update the config's three deployments on the Prefect server (PREFECT_API_URL), named "
        "after the config's `name`, with its absolute path or URI as their parameter. Runs start in this folder (where "
        "the config's relative paths resolve). croco-languages/NAME carries the schedule and the trigger that "
        "`croco plan CONFIG --notify` fires.",
    )
    deploy.add_argument("config", help="YAML run config: a local path (made absolute) or a URI (s3://...)")
    deploy.add_argument(
        "--schedule", metavar="CRON", help="run croco-languages/NAME on this cron schedule (UTC), e.g. '0 3 * * *'"
    )
    deploy.add_argument("--pool", default="croco", metavar="NAME", help="the process work pool (default: croco)")
    undeploy = commands.add_parser("undeploy", help="delete the deployments (and trigger) of the config named NAME")
    undeploy.add_argument("name", help="the config's `name`")
    runs = commands.add_parser(
        "runs", help="list the runs recorded in the config's storage, newest first: running, completed, failed, or died"
    )
    with_config(runs)
    gc = commands.add_parser(
        "gc",
        help="delete this config's runs older than its N newest completed runs, and the versions only they used",
        description="Delete the run records of this config that started before its N newest completed runs, and the committed "
        "versions that no kept run used. Kept: every run from the N-th newest completed one on (a newer failed or died run "
        "too: its finished units are its rerun's cache hits), every run still going (its heartbeat is fresh) wherever it "
        "runs, every run of another config in the storage, and versions without a manifest (work in progress).",
    )
    with_config(gc)
    gc.add_argument(
        "--keep",
        type=int,
        required=True,
        metavar="N",
        help="keep the N newest completed runs of this config and every version they used (N >= 1)",
    )
    gc.add_argument(
        "--dry-run", action="store_true", help="only list the versions and run records that would be deleted"
    )
    report = commands.add_parser(
        "report", help="write a run's report again (report.md and the self-contained report.html) and print its path"
    )
    report.add_argument("run", metavar="RUN", help=RUN_HELP)
    report.add_argument("--storage", metavar="ROOT", help="storage root of a RUN given by run id or config name")
    compare = commands.add_parser(
        "compare",
        help="one table and one chart per metric across runs, marking differences the intervals do not support",
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help=RUN_HELP + "; the first is the reference")
    compare.add_argument("--storage", metavar="ROOT", help="storage root of the RUNs given by run id or config name")
    image = commands.add_parser(
        "image", help="build the cluster image (apptainer build) as a Prefect flow run; print its path and sha256"
    )
    image.add_argument("output", metavar="IMAGE.sif", help="where the image goes")
    image.add_argument("--definition", metavar="FILE", help="the definition file (default: croco's croco-rocm.def)")
    image.add_argument("--builder", choices=("apptainer", "singularity"), default="apptainer")
    image.add_argument("--force", action="store_true", help="build again over an existing image")
    show = commands.add_parser("config", help="validate a config and print it with every default filled in")
    show.add_argument("config", nargs="?", help="YAML run config")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    show.add_argument("--reference", action="store_true", help="print the reference of every config key (Markdown)")
    merge = commands.add_parser("merge", help="fold a LoRA adapter into its base model and save a full model folder")
    merge.add_argument(
        "adapter",
        type=Path,
        help="adapter folder, e.g. runs/demo/dpo/all/<key>/files/adapter (`croco plan` shows the key)",
    )
    merge.add_argument(
        "--out",
        type=Path,
        help="output folder (default: merged/<stage>-<key> here for an adapter of a croco version, else merged/ beside the adapter)",
    )
    merge.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="weight dtype of the merged model",
    )
    prefetch = commands.add_parser(
        "prefetch", help="download the config's hub models, arena prompts and EuroEval datasets (for offline clusters)"
    )
    with_config(prefetch)
    commands.add_parser("languages", help="list the language codes croco knows")
    unit = commands.add_parser(
        "unit",
        help="do one unit's work against the storage root and commit its version (what a SLURM job runs)",
        description="Do exactly one unit's work, resuming from its finished shards, and commit its version; reads "
        "nothing from Prefect. The flow's SLURM backend writes the config and runs this in each job.",
    )
    unit.add_argument("stage", choices=[*STAGE_DOCS, *ON_DEMAND_DOCS])
    unit.add_argument("language", help="language code, or `all` for pair and training")
    unit.add_argument("key", help="the unit's key as the flow computed it; the job checks that it computes the same")
    unit.add_argument("--model", help="the evaluated model, for arena, judge and euroeval units")
    unit.add_argument("--config", required=True, help="the config the flow wrote for the job")
    unit.add_argument(
        "--shares",
        type=int,
        help="one task of a job array: do only this task's share of the shards (positions p with p %% SHARES == "
        "the task's index) and leave the commit to the flow",
    )
    unit.add_argument(
        "--share-index",
        type=int,
        default=os.environ.get("SLURM_ARRAY_TASK_ID"),
        help="the task's index (default: SLURM_ARRAY_TASK_ID)",
    )
    return parser


def _add_migration_arguments(sub: argparse.ArgumentParser) -> None:
    sub.usage = "%(prog)s CONFIG [KEY=VALUE ...] [--force]\n       %(prog)s --scored FILE... --originals FILE... --out DIR [--target ...] [--prompt-source ...]"
    old = sub.add_argument_group(
        "pairs from the original research code's files (one scored and one originals JSONL per language)"
    )
    old.add_argument(
        "--scored",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="scored JSONL files, one per language (language from the file name)",
    )
    old.add_argument(
        "--originals",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="original prompt JSONL files, one per language, in parallel line order",
    )
    old.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder for sft_in_language.jsonl, dpo_in_language.jsonl, sft_all_languages.jsonl, dpo_all_languages.jsonl",
    )
    old.add_argument(
        "--target", choices=["mean_minus_2sigma", "mean_plus_k_std", "q1", "min"], default="mean_minus_2sigma"
    )
    old.add_argument("--k", type=float, default=-2.0, help="k of mean_plus_k_std")
    old.add_argument("--prompt-source", choices=["chosen", "rejected", "random"], default="chosen")
    old.add_argument("--seed", type=int, default=42, help="seed of --prompt-source random")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # weight-loading bars drown croco's own progress
    # In a flow, Prefect's logging prints croco's lines (and sends them to the run's logs).
    with contextlib.nullcontext() if _runs_a_flow(args) else _lines_to_stderr():
        return _main(args)


@contextlib.contextmanager
def _lines_to_stderr():
    """croco's log lines on this stderr while the command runs; not after: a line logged later (a thread at exit, the
    next command in the same process) would find that stream closed and print a logging error instead."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


def _main(args: argparse.Namespace) -> int:
    try:
        status = _dispatch(args)
        sys.stdout.flush()  # a reader gone early (`croco config --reference | head`) shows here, not at exit
        return status
    except CrocoError as exc:
        print(f"croco: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Stop quietly, as Unix tools do (not SIGPIPE's default action: that would also end croco on a closed socket).
        # Python flushes stdout once more at exit: into /dev/null, not the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _runs_a_flow(args: argparse.Namespace) -> bool:
    return args.command in ("run", "audit-reward") or (args.command in STAGE_DOCS and not getattr(args, "scored", None))


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "languages":
        for lang in LANGUAGES.values():
            print(f"{lang.code:3} {lang.name:18} {'low-resource' if lang.low_resource else ''}")
        return 0
    if args.command == "config":
        if args.reference or not args.config:
            print(config_reference())
            return 0
        shown = redact_value(
            load_config(args.config, args.overrides).model_dump()
        )  # a pasted key or URL password stays off the screen
        print(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True), end="")
        return 0
    if args.command == "merge":
        from croco.merge import merge_adapter

        log.info("merged model: %s", merge_adapter(args.adapter, args.out, args.dtype))
        return 0
    if args.command == "prefetch":
        from croco.prefetch import prefetch

        prefetch(load_config(args.config, args.overrides))
        log.info("prefetch: done; runs can now use HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1")
        return 0
    if args.command == "report":
        from croco.compare import locate
        from croco.report import rebuild

        print(rebuild(*locate(args.run, args.storage)))
        return 0
    if args.command == "compare":
        from croco.compare import compare

        print(compare(args.runs, args.storage)[0])
        return 0
    if args.command == "image":
        from croco.flows.image import image

        _start_temporary_server()
        with _user_errors_without_tracebacks():
            built = image(output=args.output, definition=args.definition, builder=args.builder, force=args.force)
        print(f"{built['path']} sha256:{built['sha256']}")
        return 0
    if args.command == "pair" and args.scored:
        return _migrate(args)
    if args.command == "unit":
        return _unit(args)
    if args.command in ("deploy", "undeploy"):
        return _deploy(args)
    if args.config is None:
        raise CrocoError(f"croco {args.command} needs a CONFIG file")
    if _runs_a_flow(args) or getattr(args, "notify", False):  # what reaches Prefect, before any flow run exists
        refuse_credentials({"config": [args.config], "override": args.overrides})
    cfg = load_config(args.config, args.overrides)
    if args.command in ("plan", "runs", "gc"):
        return _inspect(args, cfg)
    # Imported here: Prefect and the stages (torch with them) are not needed by the commands above.
    from croco.flows.audit import audit_reward
    from croco.flows.pipeline import pipeline

    _start_temporary_server()
    with _user_errors_without_tracebacks():
        if args.command == "audit-reward":
            result = audit_reward(config=args.config, overrides=args.overrides)
        else:
            result = pipeline(
                config=args.config, overrides=args.overrides, stages=None if args.command == "run" else [args.command]
            )
    log.info("versions: %s", cfg.storage.root)
    log.info("report:   %s (and %s, one file to open in a browser)", result["report"], result["html"])
    return 0


class _UserErrorFilter(logging.Filter):
    """Drops a flow or task run's report of a CrocoError: `croco: error:` prints its sentence, and the run's logs
    (Prefect's API handler, unfiltered) keep the traceback. Any other exception keeps its traceback here."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (
            isinstance(error, CrocoError) and record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
        )


@contextlib.contextmanager
def _user_errors_without_tracebacks():
    handlers, only_sentences = (
        logging.getLogger().handlers,
        _UserErrorFilter(),
    )  # Prefect's console handler is the root's
    for handler in handlers:
        handler.addFilter(only_sentences)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(only_sentences)


def _start_temporary_server() -> None:
    """Without PREFECT_API_URL, a flow run goes to a temporary server that Prefect starts in a subprocess and stops
    at exit; a croco killed with SIGKILL (out of memory, a cluster's time limit) never stops it. On Linux croco
    starts that server itself, and the kernel stops it when croco's process ends."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, get_current_settings

    if PREFECT_API_URL.value() or not sys.platform.startswith("linux"):
        return
    parent = os.getpid()

    def die_with_parent() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # croco ended before the line above
            os._exit(1)

    class DiesWithCroco(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            # Prefect 3.9's own command (prefect/server/api/server.py), with the parent-death signal.
            import prefect

            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(prefect.__module_path__.parent),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ]
            env = {
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
            }
            return subprocess.Popen(command, env=env, preexec_fn=die_with_parent)

    # The temporary server is one shared instance: Prefect's client, asking for it later, gets this one, running.
    DiesWithCroco().start()


def _inspect(args: argparse.Namespace, cfg) -> int:
    from croco import runs
    from croco.storage import storage_of

    storage = storage_of(cfg)
    if args.command == "plan":
        from croco.events import carried, languages_added
        from croco.plan import build_plan, describe

        announced = carried(args.config, args.overrides) if args.notify else None  # refused before the plan is built
        rows = describe(build_plan(cfg), storage)
        width = max(len(r["unit"]) for r in rows)
        for row in rows:
            print(f"{row['unit']:{width}}  {row['state']:28}  {row['version']}")
        before = runs.last_languages(storage, cfg.name)
        new = [code for code in cfg.languages if before is not None and code not in before]
        if new:
            print(f"new languages since the last run of {cfg.name}: {', '.join(new)}")
            if announced:
                languages_added(cfg.name, announced, new)
                print(
                    f"announced {', '.join(new)} to the Prefect server: {cfg.name}'s croco-languages deployment runs them"
                )
        elif announced:
            why = "no earlier run" if before is None else "no language is new since the last run"
            print(f"nothing to announce: {why} of {cfg.name}")
        return 0
    if args.command == "runs":
        for run in runs.records(storage):
            print(
                f"{run['run_id']}  {run['name']:12} {runs.state(run):9} {','.join(run['languages']):20} {len(run['versions'])} versions"
            )
        return 0
    collected = runs.gc(storage, cfg.name, args.keep, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for path in collected.versions + collected.records:
        print(f"{verb} {path}")
    print(
        f"{verb} {len(collected.versions)} versions and {len(collected.records)} run records; kept {len(collected.kept)} versions"
    )
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from croco import deploy

    if args.command == "undeploy":
        for name in deploy.undeploy(args.name):
            print(f"deleted {name}")
        return 0
    refuse_credentials({"config": [args.config]})  # deployment parameters are stored as they are
    from croco.flows.execute import load_run_config

    config = deploy.absolute_config(args.config)
    cfg = load_run_config(config, None)
    for name in deploy.deploy(cfg.name, config, args.schedule, args.pool):
        print(f"deployed {name}")
    return 0


def _unit(args: argparse.Namespace) -> int:
    from croco.caching import container_image, run_here
    from croco.models import pick_device
    from croco.plan import build_plan, stage_modules
    from croco.storage import Share

    cfg = load_config(args.config)
    unit_id = "/".join(part for part in (args.stage, args.language, args.model) if part)
    unit = build_plan(cfg, [args.stage]).by_id.get(unit_id)
    if unit is None:
        raise CrocoError(f"{args.config} plans no unit {unit_id}; check the stage, language and --model")
    if unit.key != args.key:
        raise CrocoError(
            f"{unit_id} has key {unit.key} here but {args.key} in the flow that submitted this job: the job's croco or "
            f"{args.stage} code (or the models and data it hashes) differs from the flow's; run the same croco on both"
        )
    planned = cfg.execution.device_class(args.stage)
    if planned == "cuda" and pick_device("auto").type != "cuda":
        raise CrocoError(
            f"{unit_id} was keyed for a GPU (execution asks for gpus_per_node) but this job on {socket.gethostname()} "
            "sees none; check the job's --gpus-per-node and the container's GPU flag (--rocm or --nv)"
        )
    task = next(getattr(module, module.NAME) for module in stage_modules() if module.NAME == args.stage)
    if args.shares is None:
        manifest = run_here(cfg, unit, task.work)
        log.info("%s: committed %s", unit_id, manifest["uri"])
        return 0
    if args.share_index is None or not 0 <= args.share_index < args.shares:
        raise CrocoError(
            f"croco unit {unit_id} --shares {args.shares} needs --share-index (or SLURM_ARRAY_TASK_ID) below it"
        )
    run_here(cfg, unit, task.work, Share(args.share_index, args.shares))
    image = container_image().get("image", "none")  # the flow writes the manifest: the image is recorded here
    log.info("%s: share %d of %d done (image: %s); the flow commits", unit_id, args.share_index, args.shares, image)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from croco.migrate import migrate

    if not args.originals or not args.out:
        raise CrocoError("croco pair --scored also needs --originals and --out")
    report = migrate(args.scored, args.originals, args.out, args.target, args.k, args.prompt_source, args.seed)
    counts = ", ".join(f"{name}: {n}" for name, n in report["products"].items())
    log.info("pair: %s from %s scored samples in %.1f s", counts, report["records_in"], report["wall_s"])
    for reason, n in {**report["rejected_samples"], **report["skipped"]}.items():
        log.info("  not used: %s: %s", reason, n)
    log.info("outputs: %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
