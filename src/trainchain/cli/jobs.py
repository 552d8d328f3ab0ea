"""The chain's jobs one by one (pull, detect, train, tune, notify, the watchdog) and
the whole chain (`trainchain run`): parse, call the chain, print."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainchain.cli.common import chain_report, command_settings, hand_on, out, prepare, source
from trainchain.core import keys
from trainchain.core.settings import Settings
from trainchain.core.status import ExitCode


# ---- job 1 ------------------------------------------------------------------
def cmd_pull(args: argparse.Namespace) -> int:
    from trainchain.adapters.gitrepo import pull

    settings = command_settings(args)
    result = pull(args.repo, args.ref, settings.workspaces)
    hand_on(args, {"REPOSITORY": args.repo, "COMMIT": result.commit})
    if args.json:
        out(
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
        out(f"workspace: {result.path}")
        out(f"commit:    {result.commit}")
    return 0


# ---- job 2 ------------------------------------------------------------------
def cmd_detect(args: argparse.Namespace) -> int:
    from trainchain.core.config import load_config
    from trainchain.core.detect import detect, format_text

    path = Path(args.source) / args.subdir
    if args.ref is not None or not path.is_dir():  # not a folder here: a repository to pull
        path = source(args, command_settings(args))[0]
    config = None
    if (path / "trainchain.yaml").is_file():
        config = load_config(path).model
    result = detect(path, config)
    hand_on(args, {"FAMILY": str(result.family), "IMAGE": result.image})
    out(json.dumps(result.to_dict(), indent=2) if args.json else format_text(result))
    return 0


# ---- job 3 ------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from trainchain.chain.training import train_once
    from trainchain.core.space import parse_overrides

    settings = command_settings(args)
    prep = prepare(args, settings)
    model = prep.loaded.model
    params = model.defaults() | parse_overrides(model, args.set or [])
    out(f"train: {model.name} with " + ", ".join(f"{k}={v}" for k, v in params.items()))
    outcome = train_once(prep, settings, params, on_line=lambda line: out(f"  | {line}"))
    out("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(outcome.metrics.items())))
    if outcome.estimate is not None:
        out(f"{model.goal.val_metric}: {outcome.estimate.describe(4)}")
    out(f"mlflow run: {outcome.run_id} ({settings.tracking_uri})")
    hand_on(args, {"RUN_ID": outcome.run_id or ""})
    return 0


# ---- job 4 ------------------------------------------------------------------
def _print_summary(report: Any) -> None:
    from trainchain.core.report import trial_label

    op = ">=" if report.direction == "maximize" else "<="
    used = sum(1 for t in report.trials if t.state != "INTERRUPTED")
    if report.reason:
        out(f"why:       {report.reason}")
    out(f"goal:      {report.goal_metric} {op} {report.threshold}: {report.verdict_text}")
    out(f"search:    {report.search_figure()}")
    out(f"confirm:   {report.confirmation_figure()}")
    out(f"held-out:  {report.heldout_figure()}")
    out(f"trials:    {used} of {report.max_trials}")
    if report.warm_start:
        out(f"warm:      {report.warm_start}")
    if report.best_params:
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in report.used_params.items()
        )
        out(f"best:      {trial_label(report.best_trial)}: {shown}")


def worker_argv(args: argparse.Namespace, settings: Settings, prep: Any) -> list[str]:
    """The `trainchain tune` command line of one more worker of this chain (`--join` is
    added): the same source at the same commit, data, executor, goal and budget."""
    from trainchain.chain.workers import trainchain_command
    from trainchain.core.config import CONFIG_FILE

    pulled = args.ref is not None or not (Path(args.source) / args.subdir / CONFIG_FILE).is_file()
    argv = [*trainchain_command(), "--home", str(settings.home), "tune", args.source]
    if pulled:  # the commit the leader pulled, whatever the branch says by now
        argv += ["--ref", prep.lineage.commit]
    argv += ["--subdir", args.subdir, "--executor", prep.lineage.executor]
    for flag, value in (
        ("--data", args.data),
        ("--image", args.image),
        ("--threshold", args.threshold),
        ("--max-trials", args.max_trials),
        ("--timeout", args.timeout),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _check_workers(args: argparse.Namespace) -> None:
    from trainchain.chain.workers import MAX_WORKERS
    from trainchain.core.errors import ConfigError

    if args.workers < 1:
        raise ConfigError(
            f"--workers {args.workers}: give 1 or more", hint="1 runs the trials one at a time"
        )
    if args.workers > MAX_WORKERS:
        raise ConfigError(
            f"--workers {args.workers} is out of range: at most {MAX_WORKERS} on one host",
            hint="more workers go on more machines: `trainchain tune ... --join CHAIN`",
        )
    join = getattr(args, "join", None)
    if join is None:
        return
    clash = [
        flag
        for flag, given in (
            ("--promote", getattr(args, "promote", False)),
            ("--properties", getattr(args, "properties", None)),
        )
        if given
    ]
    if clash:
        raise ConfigError(
            f"--join makes this process a worker of a chain another process leads; "
            f"{', '.join(clash)} belong to that leader",
            hint="drop them here, or leave out --join to lead a chain",
        )
    if not join.strip():
        raise ConfigError(
            "--join is empty: give a chain id, or `open` (the open chain of this code)",
            hint="the leader prints its chain id (`chain:` line); Jenkins hands it on as CHAIN",
        )


def cmd_tune(args: argparse.Namespace) -> int:
    from trainchain.chain.giveup import give_up_callback
    from trainchain.chain.tune import join_chain, tune
    from trainchain.core.progress import TuneDisplay
    from trainchain.executors import get_executor

    _check_workers(args)
    settings = command_settings(args)
    prep = prepare(args, settings)
    executor = get_executor(
        prep.lineage.executor,
        prep.loaded.model,
        settings,
        on_give_up=give_up_callback(settings),
    )
    display = TuneDisplay.for_goal(prep.loaded.model.goal, quiet=args.quiet)
    if args.join is not None:
        result = join_chain(
            prep,
            executor,
            args.join.strip(),
            display=display,
            stream_logs=args.verbose,
            join_wait=args.join_wait,
            workers=args.workers,
            worker_argv=worker_argv(args, settings, prep) if args.workers > 1 else (),
        )
        out(
            f"worker:    ran {result.trials} trial(s) of chain {result.chain_id}; stopped: "
            f"{result.reason}"
        )
        return 0
    report = tune(
        prep,
        executor,
        display=display,
        stream_logs=args.verbose,
        wait_lock=args.wait_lock,
        workers=args.workers,
        worker_argv=worker_argv(args, settings, prep) if args.workers > 1 else (),
    )
    _print_summary(report)
    out(f"chain:     {report.chain_id}")
    hand_on(args, {"CHAIN": report.chain_id, "STATUS": report.status.value})
    if args.promote:
        from trainchain.chain.run import conclude

        report = conclude(report, settings)
        _print_registry(report, settings)
    return report.status.exit_code


# ---- job 5 ------------------------------------------------------------------
def cmd_notify(args: argparse.Namespace) -> int:
    from trainchain.chain.report_mail import send_report

    settings = command_settings(args)
    delivery = send_report(chain_report(settings, args), settings)
    _print_delivery(delivery)
    return 0


def _print_delivery(delivery: Any) -> None:
    if delivery.method == "smtp":
        out(f"email:     sent to {', '.join(delivery.recipients)} (copy: {delivery.path})")
    else:
        out(f"email:     {delivery.path}")


# ---- the whole chain ------------------------------------------------------------
def _print_registry(report: Any, settings: Settings) -> None:
    if report.registry_version:
        role = "champion" if report.became_champion else "challenger"
        out(
            f"registry:  {report.model_name} v{report.registry_version} ({role}); "
            f"{report.promotion_reason}"
        )
    else:
        out(f"registry:  {report.promotion_reason}")
    from trainchain.adapters.tracking import CHAMPION, Tracker

    champion = Tracker(settings.tracking_uri, settings.artifacts).alias_version(
        report.model_name, CHAMPION
    )
    out(f"champion:  {report.model_name} v{champion}" if champion else "champion:  none")


def cmd_run(args: argparse.Namespace) -> int:
    from trainchain.chain.run import run_chain

    _check_workers(args)
    settings = command_settings(args)
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
        email_failures=args.email_failures,
        pushed_by=args.pushed_by,
        workers=args.workers,
        worker_argv=(lambda prep: worker_argv(args, settings, prep)),
    )
    report = outcome.report
    out("")
    out(f"model:     {report.model_name} @ {report.commit[:12]} ({report.family})")
    _print_summary(report)
    _print_registry(report, settings)
    if report.error:
        out(f"error:     {report.error}")
    if outcome.delivery is not None:
        _print_delivery(outcome.delivery)
    return outcome.exit_code


# ---- job 6 ------------------------------------------------------------------
def cmd_watchdog(args: argparse.Namespace) -> int:
    import signal
    import threading

    from trainchain.adapters.containers import connect, engine_errors
    from trainchain.supervise.restarts import WatchdogPolicy
    from trainchain.supervise.watchdog import Watchdog

    settings = command_settings(args)

    def on_give_up(labels: Any, reason: str) -> None:
        from trainchain.chain.giveup import record_give_up

        out(
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
            out(f"{entry.name}: {entry.action.kind.value} ({done}): {entry.action.reason}")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    out(f"watchdog: supervising trainchain containers (a scan every {args.interval:g} s)")
    try:
        dog.run(args.interval, stop)
    except KeyboardInterrupt:
        stop.set()
    return 0


# ---- parser -------------------------------------------------------------------
def _email(text: str) -> str:
    from trainchain.core.notify import email_address

    address = email_address(text)
    if address is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not an email address: expected name@host")
    return address


def _add_source(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("source", help="a model repository folder, or a git repository to pull")
    sp.add_argument("--ref", help="branch, tag or commit to pull")
    sp.add_argument("--subdir", default="", help="the model's folder inside the repository")


def _add_properties(sp: argparse.ArgumentParser, names: str) -> None:
    sp.add_argument(
        "--properties",
        metavar="FILE",
        help=f"write {names} to FILE (Java properties: the next Jenkins job's parameters)",
    )


def _add_run_opts(sp: argparse.ArgumentParser, budget: bool = True) -> None:
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
        sp.add_argument(
            "--workers",
            type=int,
            default=1,
            metavar="N",
            help="run N trials at a time on this host: this process leads the chain and "
            "starts N-1 workers of the same study (default: 1). On a shared study storage, "
            "more machines join with --join",
        )
        sp.add_argument(
            "--reason",
            metavar="TEXT",
            help="why this chain runs (a drift alert, a person's note): kept in the chain's "
            "report and MLflow tags, shown in its summary and email; one line, at most "
            "500 characters (longer is cut)",
        )


def register(
    add: Callable[[str, Any, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Jobs 1 to 4; `register_rest` adds the others after the registry's commands."""
    sp = add("pull", cmd_pull, "job 1: clone or fetch a model repository at one commit")
    sp.add_argument("repo", help="a path, file:// URL or any URL git accepts")
    sp.add_argument("--ref", help="branch, tag or commit (default: the remote's HEAD)")
    sp.add_argument("--json", action="store_true", help="print the workspace and commit as JSON")
    _add_properties(sp, "REPOSITORY and COMMIT (the full sha)")

    sp = add("detect", cmd_detect, "job 2: decide the model family and training image")
    _add_source(sp)
    sp.add_argument(
        "--json", action="store_true", help="print the family, image and evidence as JSON"
    )
    _add_properties(sp, "FAMILY and IMAGE")

    sp = add("train", cmd_train, "job 3: one training run with the defaults plus --set")
    _add_source(sp)
    _add_properties(sp, "RUN_ID (the MLflow run)")
    sp.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="override a hyperparameter (repeatable)",
    )
    _add_run_opts(sp, budget=False)

    sp = add("tune", cmd_tune, "job 4: tune until the goal or the end of the budget")
    _add_source(sp)
    _add_run_opts(sp)
    sp.add_argument(
        "--promote",
        action="store_true",
        help="then register the best model and promote it if it earns it, as `run` does",
    )
    _add_properties(sp, "CHAIN (the chain id) and STATUS")
    sp.add_argument(
        "--join",
        metavar="CHAIN",
        help="be one more worker of chain CHAIN (an id, or `open`: the open chain of this "
        "code, data and goal) on the same study storage: run its trials until it is "
        "concluded or its budget taken, then exit 0; its leader confirms, registers and "
        "emails. Give the same source and options as the leader",
    )
    sp.add_argument(
        "--join-wait",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="with --join: wait this long for the chain to be open (default: 300)",
    )


def register_rest(
    add: Callable[[str, Any, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Job 5, the whole chain and job 6, in this order in `trainchain --help`."""
    sp = add("notify", cmd_notify, "job 5: email the outcome of a chain")
    sp.add_argument("--chain", help="chain id (default: the latest chain)")
    sp.add_argument("--model", help="the latest chain of this model")

    sp = add("run", cmd_run, "the whole chain: pull, detect, tune, promote, notify")
    _add_source(sp)
    _add_run_opts(sp)
    sp.add_argument(
        "--email-failures",
        action="store_true",
        help="also email a failure the chain cannot report in its own email (the pull, "
        "detection, the configuration): to --pushed-by, else to the configured recipients "
        "(the push triggers set it)",
    )
    sp.add_argument(
        "--pushed-by",
        metavar="EMAIL",
        type=_email,
        help="who pushed the commit: the email of --email-failures goes to them",
    )

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
