"""The `trainchain` command: each job of the chain is one subcommand.

Jenkins, the local runner and the tests all run these same functions. Every
command returns an exit status; errors become one clear line and a hint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainchain import __version__
from trainchain.core import keys
from trainchain.core.errors import TrainchainError
from trainchain.core.settings import Settings, for_command
from trainchain.core.status import ExitCode

log = logging.getLogger("trainchain")


def _out(text: str = "") -> None:
    print(text, flush=True)


def _settings(args: argparse.Namespace) -> Settings:
    return for_command(args.home)


def _hand_on(args: argparse.Namespace, values: dict[str, str]) -> None:
    """--properties FILE: the values the next Jenkins job receives as parameters."""
    if getattr(args, "properties", None):
        from trainchain.adapters import properties

        path = properties.write(args.properties, values)
        log.info("wrote %s for the next job", path)


def _source(args: argparse.Namespace, settings: Settings) -> tuple[Path, str | None, str | None]:
    """SOURCE [--ref] [--subdir]: a model folder used in place, or a repository pulled (job 1)."""
    from trainchain.chain.run import resolve_source

    return resolve_source(args.source, args.ref, settings, args.subdir)


def _prepare(args: argparse.Namespace, settings: Settings) -> Any:
    """SOURCE pulled if need be, loaded and checked with the command's overrides."""
    from trainchain.chain.context import prepare

    path, repository, commit = _source(args, settings)
    return prepare(
        path,
        settings,
        data=args.data,
        executor=args.executor,
        threshold=getattr(args, "threshold", None),
        max_trials=getattr(args, "max_trials", None),
        timeout=getattr(args, "timeout", None),
        image=args.image,
        repository=repository,
        commit=commit,
    )


# ---- job 1 ------------------------------------------------------------------
def cmd_pull(args: argparse.Namespace) -> int:
    from trainchain.adapters.gitrepo import pull

    settings = _settings(args)
    result = pull(args.repo, args.ref, settings.workspaces)
    _hand_on(args, {"REPOSITORY": args.repo, "COMMIT": result.commit})
    if args.json:
        _out(
            json.dumps(
                {
                    "path": str(result.path),
                    "commit": result.commit,
                    "repository": result.repository,
                    "ref": result.ref,
                }
            )
        )
    else:
        _out(f"workspace: {result.path}")
        _out(f"commit:    {result.commit}")
    return 0


# ---- job 2 ------------------------------------------------------------------
def cmd_detect(args: argparse.Namespace) -> int:
    from trainchain.core.config import load_config
    from trainchain.core.detect import detect, format_text

    path = Path(args.source) / args.subdir
    if args.ref is not None or not path.is_dir():  # not a folder here: a repository to pull
        path = _source(args, _settings(args))[0]
    config = None
    if (path / "trainchain.yaml").is_file():
        config = load_config(path).model
    result = detect(path, config)
    _hand_on(args, {"FAMILY": str(result.family), "IMAGE": result.image})
    _out(json.dumps(result.to_dict(), indent=2) if args.json else format_text(result))
    return 0


# ---- job 3 ------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from trainchain.adapters.tracking import Tracker
    from trainchain.chain.giveup import give_up_callback
    from trainchain.chain.training import TrialContext, run_trial
    from trainchain.core.space import parse_overrides
    from trainchain.executors import get_executor

    settings = _settings(args)
    prep = _prepare(args, settings)
    model = prep.loaded.model
    params = model.defaults() | parse_overrides(model, args.set or [])
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    chain_id = f"train-{model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    ctx = TrialContext(
        loaded=prep.loaded,
        settings=settings,
        tracker=tracker,
        executor=get_executor(
            prep.lineage.executor, model, settings, on_give_up=give_up_callback(settings)
        ),
        lineage=prep.lineage,
        chain_id=chain_id,
        experiment_id=tracker.experiment_id(model.name),
        data_dir=prep.data_dir,
        val_metric=model.goal.val_metric,
    )
    _out(f"train: {model.name} with " + ", ".join(f"{k}={v}" for k, v in params.items()))
    outcome = run_trial(ctx, 0, params, on_line=lambda line: _out(f"  | {line}"))
    if not outcome.ok:
        from trainchain.core.errors import TrainingError

        raise TrainingError(
            f"training {model.name} failed: {outcome.error}",
            hint=f"the full log is under {settings.runs_dir / chain_id}",
            log_tail=outcome.log_tail,
        )
    _out("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(outcome.metrics.items())))
    if outcome.estimate is not None:
        _out(f"{model.goal.val_metric}: {outcome.estimate.describe(4)}")
    _out(f"mlflow run: {outcome.run_id} ({settings.tracking_uri})")
    _hand_on(args, {"RUN_ID": outcome.run_id or ""})
    return 0


# ---- job 4 ------------------------------------------------------------------
def _print_summary(report: Any) -> None:
    op = ">=" if report.direction == "maximize" else "<="
    used = sum(1 for t in report.trials if t.state != "INTERRUPTED")
    _out(f"goal:      {report.goal_metric} {op} {report.threshold}: {report.verdict_text}")
    _out(f"search:    {report.search_figure()}")
    _out(f"confirm:   {report.confirmation_figure()}")
    _out(f"held-out:  {report.heldout_figure()}")
    _out(f"trials:    {used} of {report.max_trials}")
    if report.warm_start:
        _out(f"warm:      {report.warm_start}")
    if report.best_params:
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in report.best_params.items()
        )
        _out(f"best:      #{report.best_trial}: {shown}")


def cmd_tune(args: argparse.Namespace) -> int:
    from trainchain.chain.giveup import give_up_callback
    from trainchain.chain.tune import tune
    from trainchain.core.progress import TuneDisplay
    from trainchain.executors import get_executor

    settings = _settings(args)
    prep = _prepare(args, settings)
    report = tune(
        prep,
        get_executor(
            prep.lineage.executor,
            prep.loaded.model,
            settings,
            on_give_up=give_up_callback(settings),
        ),
        display=TuneDisplay.for_goal(prep.loaded.model.goal, quiet=args.quiet),
        stream_logs=args.verbose,
        wait_lock=args.wait_lock,
    )
    _print_summary(report)
    _out(f"chain:     {report.chain_id}")
    _hand_on(args, {"CHAIN": report.chain_id, "STATUS": report.status.value})
    if args.promote:
        from trainchain.chain.run import conclude

        report = conclude(report, settings)
        _print_registry(report, settings)
    return report.status.exit_code


# ---- promote / rollback / models ------------------------------------------
def _chain_report(settings: Settings, args: argparse.Namespace) -> Any:
    """The chain named by --chain, else the latest (of --model, when given)."""
    from trainchain.adapters.tracking import Tracker
    from trainchain.chain.tune import latest_report, load_report
    from trainchain.core.errors import ConfigError

    if args.chain is not None and not args.chain.strip():
        raise ConfigError(
            "--chain is empty: no chain id was handed on",
            hint="the tune job (job 4) stopped before a chain started; its console says why",
        )
    if not args.chain:
        return latest_report(settings.chains_dir, args.model)
    return load_report(
        settings.chains_dir, args.chain, Tracker(settings.tracking_uri, settings.artifacts)
    )


def cmd_promote(args: argparse.Namespace) -> int:
    from trainchain.adapters.tracking import Tracker
    from trainchain.chain.registry import promote
    from trainchain.chain.tune import save_report

    settings = _settings(args)
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    report = promote(_chain_report(settings, args), tracker)
    save_report(settings.chains_dir, report, tracker)
    if report.registry_version:
        _out(f"registered {report.model_name} v{report.registry_version} (alias challenger)")
    _out(report.promotion_reason)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from trainchain.adapters.tracking import Tracker

    settings = _settings(args)
    old, new = Tracker(settings.tracking_uri, settings.artifacts).rollback(args.name)
    _out(f"{args.name}: champion moved back from v{old} to v{new}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from trainchain.adapters.tracking import Tracker

    settings = _settings(args)
    versions = Tracker(settings.tracking_uri, settings.artifacts).versions(args.name)
    if args.json:
        _out(json.dumps([v.__dict__ for v in versions], indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.name} ({settings.tracking_uri})")
    for col in ("version", "aliases", "val", "test", "commit", "chain", "created"):
        table.add_column(col)
    for v in versions:
        val = next(
            (
                m
                for k, m in v.metrics.items()
                if k.startswith("val_") and not k.endswith(("_std", "_sd"))
            ),
            None,
        )
        test = next((m for k, m in v.metrics.items() if k.startswith("test_")), None)
        table.add_row(
            v.version,
            ", ".join(v.aliases),
            "-" if val is None else f"{val:.4f}",
            "-" if test is None else f"{test:.4f}",
            v.tags.get(keys.COMMIT, "")[:12],
            v.tags.get(keys.CHAIN, ""),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created / 1000)),
        )
    console = Console(highlight=False)
    if not console.is_terminal:  # logs and pipes get the whole table, not 80 columns
        console = Console(highlight=False, width=160)
    console.print(table)
    return 0


# ---- job 5 ------------------------------------------------------------------
def cmd_notify(args: argparse.Namespace) -> int:
    from trainchain.chain.report_mail import send_report

    settings = _settings(args)
    delivery = send_report(_chain_report(settings, args), settings)
    _print_delivery(delivery)
    return 0


def _print_delivery(delivery: Any) -> None:
    if delivery.method == "smtp":
        _out(f"email:     sent to {', '.join(delivery.recipients)} (copy: {delivery.path})")
    else:
        _out(f"email:     {delivery.path}")


# ---- the whole chain ------------------------------------------------------------
def _print_registry(report: Any, settings: Settings) -> None:
    if report.registry_version:
        role = "champion" if report.became_champion else "challenger"
        _out(
            f"registry:  {report.model_name} v{report.registry_version} ({role}); "
            f"{report.promotion_reason}"
        )
    else:
        _out(f"registry:  {report.promotion_reason}")
    from trainchain.adapters.tracking import CHAMPION, Tracker

    champion = Tracker(settings.tracking_uri, settings.artifacts).alias_version(
        report.model_name, CHAMPION
    )
    _out(f"champion:  {report.model_name} v{champion}" if champion else "champion:  none")


def cmd_run(args: argparse.Namespace) -> int:
    from trainchain.chain.run import run_chain

    settings = _settings(args)
    outcome = run_chain(
        args.source,
        settings,
        ref=args.ref,
        subdir=args.subdir,
        data=args.data,
        executor=args.executor,
        threshold=args.threshold,
        max_trials=args.max_trials,
        timeout=args.timeout,
        image=args.image,
        quiet=args.quiet,
        stream_logs=args.verbose,
        wait_lock=args.wait_lock,
    )
    report = outcome.report
    _out("")
    _out(f"model:     {report.model_name} @ {report.commit[:12]} ({report.family})")
    _print_summary(report)
    _print_registry(report, settings)
    if report.error:
        _out(f"error:     {report.error}")
    if outcome.delivery is not None:
        _print_delivery(outcome.delivery)
    return outcome.exit_code


# ---- images -------------------------------------------------------------------
def cmd_images_list(args: argparse.Namespace) -> int:
    from trainchain.adapters.images import list_images
    from trainchain.core.config import load_config
    from trainchain.core.detect import effective_rules

    detection = load_config(args.path).model.detection if args.path else None
    infos = list_images(effective_rules(detection))
    width = max(len(i.image) for i in infos)
    _out(f"{'family':<10} {'image':<{width}}  status")
    for info in infos:
        status = (
            f"built {info.created}, {info.size_mb:.0f} MB"
            if info.present
            else "missing: run scripts/build-images.sh " + info.build_name
        )
        _out(f"{info.family:<10} {info.image:<{width}}  {status}")
    return 0


def cmd_images_build(args: argparse.Namespace) -> int:
    from trainchain.adapters.images import build

    return build(args.families)


# ---- data -------------------------------------------------------------------
def cmd_synth_eeg(args: argparse.Namespace) -> int:
    from trainchain.families.eeg_synth import write_synthetic_dataset

    try:
        files = write_synthetic_dataset(
            Path(args.out),
            subjects=args.subjects,
            difficulty=args.difficulty,
            seed=args.seed,
            trials_per_class=args.trials_per_class,
        )
    except ValueError as err:
        raise TrainchainError(str(err)) from None
    for f in files:
        _out(str(f))
    return 0


def cmd_heldout(args: argparse.Namespace) -> int:
    """A registered version's held-out examples as a JSON request body (for /classify)."""
    import tempfile

    import numpy as np

    from trainchain.adapters.tracking import Tracker
    from trainchain.chain.registry import download_heldout
    from trainchain.core.errors import NotInStore, RegistryError

    if not 1 <= args.n <= 256:
        raise TrainchainError(f"-n {args.n}: expected 1 to 256 examples")
    settings = _settings(args)
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    version = tracker.alias_version(args.model, args.alias)
    run_id = tracker.version_run_id(args.model, version) if version else None
    if run_id is None:
        raise RegistryError(
            f"{args.model} has no version with the alias {args.alias!r} in {settings.tracking_uri}",
            hint=f"`trainchain models {args.model}` lists its versions and aliases",
        )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download_heldout(tracker, run_id, Path(tmp))
        except NotInStore as err:
            raise RegistryError(
                f"{args.model} v{version} has no held-out data ({err.message})",
                hint="the training script writes it with trainchain.contract.task.heldout_path()",
            ) from err
        with np.load(path, allow_pickle=False) as data:
            x, y = data["X"][: args.n], data["y"][: args.n]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(x.astype(float).tolist()), encoding="utf-8")
    shape = " x ".join(str(d) for d in x.shape)
    _out(f"wrote {shape} held-out examples of {args.model} v{version} to {out}")
    _out("their labels: " + ", ".join(str(v) for v in y.tolist()))
    return 0


# ---- job 6 ------------------------------------------------------------------
def cmd_watchdog(args: argparse.Namespace) -> int:
    import signal
    import threading

    from trainchain.adapters.containers import connect, engine_errors
    from trainchain.supervise.restarts import WatchdogPolicy
    from trainchain.supervise.watchdog import Watchdog

    settings = _settings(args)

    def on_give_up(labels: Any, reason: str) -> None:
        from trainchain.chain.giveup import record_give_up

        _out(
            f"gave up: {labels.get(keys.MODEL)} trial {labels.get(keys.TRIAL)} "
            f"(run {labels.get(keys.RUN)}): {reason}"
        )
        record_give_up(settings, labels, reason)

    dog = Watchdog(
        connect(),
        locks_dir=settings.locks,
        policy=WatchdogPolicy(heartbeat_limit=args.heartbeat_limit, max_restarts=args.max_restarts),
        on_give_up=on_give_up,
    )
    if args.once:
        with engine_errors("scanning the trainchain containers"):
            entries = dog.scan_once()
        for entry in entries:
            done = "done" if entry.handled else "waiting"
            _out(f"{entry.name}: {entry.action.kind.value} ({done}): {entry.action.reason}")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _out(f"watchdog: supervising trainchain containers (a scan every {args.interval:g} s)")
    try:
        dog.run(args.interval, stop)
    except KeyboardInterrupt:
        stop.set()
    return 0


# ---- parser -------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - declarations only
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="state folder (default: $TRAINCHAIN_HOME or ~/.trainchain)")
    common.add_argument(
        "-v", "--verbose", action="store_true", help="more logging; stream training output"
    )
    common.add_argument("-q", "--quiet", action="store_true", help="only results and errors")

    p = argparse.ArgumentParser(
        prog="trainchain",
        description="A git push of model code becomes a trained, tuned, registered model, "
        "with a person told by email.",
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"trainchain {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        sp.set_defaults(func=func)
        return sp

    def add_source(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("source", help="a model repository folder, or a git repository to pull")
        sp.add_argument("--ref", help="branch, tag or commit to pull")
        sp.add_argument("--subdir", default="", help="the model's folder inside the repository")

    def add_properties(sp: argparse.ArgumentParser, names: str) -> None:
        sp.add_argument(
            "--properties",
            metavar="FILE",
            help=f"write {names} to FILE (Java properties: the next Jenkins job's parameters)",
        )

    def add_run_opts(sp: argparse.ArgumentParser, budget: bool = True) -> None:
        sp.add_argument("--data", help="data folder (overrides data.path)")
        sp.add_argument("--image", help="training image (default: the detected one)")
        sp.add_argument(
            "--executor",
            default="auto",
            choices=["auto", "docker", "local"],
            help="where training runs: docker, local, or auto (docker when an engine "
            "answers; the default)",
        )
        if budget:
            sp.add_argument("--threshold", type=float, help="goal threshold (overrides goal)")
            sp.add_argument("--max-trials", type=int, help="trial budget (overrides budget)")
            sp.add_argument("--timeout", type=float, help="time budget in seconds")
            sp.add_argument(
                "--wait-lock",
                type=float,
                default=0.0,
                metavar="SECONDS",
                help="when another process is tuning the same model, wait this long for it "
                f"(default: 0, exit {ExitCode.BUSY:d} at once)",
            )

    sp = add("pull", cmd_pull, "job 1: clone or fetch a model repository at one commit")
    sp.add_argument("repo", help="a path, file:// URL or any URL git accepts")
    sp.add_argument("--ref", help="branch, tag or commit (default: the remote's HEAD)")
    sp.add_argument("--json", action="store_true")
    add_properties(sp, "REPOSITORY and COMMIT (the full sha)")

    sp = add("detect", cmd_detect, "job 2: decide the model family and training image")
    add_source(sp)
    sp.add_argument("--json", action="store_true")
    add_properties(sp, "FAMILY and IMAGE")

    sp = add("train", cmd_train, "job 3: one training run with the defaults plus --set")
    add_source(sp)
    add_properties(sp, "RUN_ID (the MLflow run)")
    sp.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="override a hyperparameter (repeatable)",
    )
    add_run_opts(sp, budget=False)

    sp = add("tune", cmd_tune, "job 4: tune until the goal or the end of the budget")
    add_source(sp)
    add_run_opts(sp)
    sp.add_argument(
        "--promote",
        action="store_true",
        help="then register the best model and promote it if it earns it, as `run` does",
    )
    add_properties(sp, "CHAIN (the chain id) and STATUS")

    sp = add(
        "promote", cmd_promote, "register the chain's best model; make it champion if it earns it"
    )
    sp.add_argument("--chain", help="chain id (default: the latest chain)")
    sp.add_argument("--model", help="the latest chain of this model")

    sp = add("rollback", cmd_rollback, "move the champion alias back to the previous champion")
    sp.add_argument("name")

    sp = add("models", cmd_models, "list a registered model's versions, aliases and metrics")
    sp.add_argument("name")
    sp.add_argument("--json", action="store_true")

    sp = add("notify", cmd_notify, "job 5: email the outcome of a chain")
    sp.add_argument("--chain", help="chain id (default: the latest chain)")
    sp.add_argument("--model", help="the latest chain of this model")

    sp = add("run", cmd_run, "the whole chain: pull, detect, tune, promote, notify")
    add_source(sp)
    add_run_opts(sp)

    sp = add("watchdog", cmd_watchdog, "job 6: restart dead or hung training containers")
    sp.add_argument("--once", action="store_true", help="scan once and exit")
    sp.add_argument("--interval", type=float, default=30.0, help="seconds between scans")
    sp.add_argument(
        "--heartbeat-limit",
        type=float,
        default=900.0,
        help="seconds without a report line before a running container counts as hung "
        "(a container's own watchdog.heartbeat_limit wins)",
    )
    sp.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="restarts of a trial before giving up (a container's own watchdog.max_restarts wins)",
    )

    images = add("images", lambda a: 0, "training images: list and build")
    isub = images.add_subparsers(dest="images_command", required=True, metavar="COMMAND")
    sp = isub.add_parser(
        "list", parents=[common], help="each detection rule's image and whether it is built"
    )
    sp.set_defaults(func=cmd_images_list)
    sp.add_argument("path", nargs="?", help="a model repository (its detection rules count)")
    sp = isub.add_parser(
        "build", parents=[common], help="build training images (scripts/build-images.sh)"
    )
    sp.set_defaults(func=cmd_images_build)
    sp.add_argument(
        "families", nargs="*", help="eeg, sklearn, tensorflow or all (default: eeg sklearn)"
    )

    data = add("data", lambda a: 0, "data helpers")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    sp = dsub.add_parser(
        "synth-eeg", parents=[common], help="write synthetic motor-imagery EEG recordings"
    )
    sp.set_defaults(func=cmd_synth_eeg)
    sp.add_argument("--out", required=True, help="folder to write into")
    sp.add_argument("--subjects", type=int, default=1)
    sp.add_argument(
        "--difficulty", choices=["easy", "medium", "hard", "impossible"], default="medium"
    )
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument(
        "--trials-per-class",
        type=int,
        default=144,
        help="cues per class and subject (default 144: one BCI IV 2a session)",
    )
    sp = dsub.add_parser(
        "heldout",
        parents=[common],
        help="write a registered version's held-out examples as a JSON request body",
    )
    sp.set_defaults(func=cmd_heldout)
    sp.add_argument("model", help="registered model name")
    sp.add_argument("--alias", default="champion", help="which version (default: champion)")
    sp.add_argument("-n", type=int, default=1, help="how many examples (default: 1)")
    sp.add_argument("--out", required=True, help="the JSON file to write")

    from trainchain.cli import hooks as hooks_cli
    from trainchain.cli import jenkins as jenkins_cli
    from trainchain.cli import serve as serve_cli

    jenkins_cli.register(add, common)
    hooks_cli.register(add, common)
    serve_cli.register(add, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else (logging.ERROR if args.quiet else logging.WARNING)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    os.environ.setdefault("MNE_LOGGING_LEVEL", "ERROR")
    if getattr(args, "properties", None):
        # a failed step must not leave the values of an earlier build for the next job
        Path(args.properties).unlink(missing_ok=True)
    try:
        return int(args.func(args))
    except TrainchainError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
