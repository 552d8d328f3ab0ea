"""`trainchain hooks ...`: push triggers, with or without Jenkins.

``hooks install`` puts a post-receive hook into a bare repository; ``hooks serve``
receives GitHub push webhooks (and, with a token, Alertmanager's drift alerts as retrain
requests); ``hooks retrain`` asks for a retrain from the command line. All queue runs
the same way (:mod:`trainchain.triggers.hooks`): one chain at a time per repository, each
with a log and a status file under
``$TRAINCHAIN_HOME/hooks/runs``; with Jenkins set up, a run is a build of a Jenkins job
that the drainer triggers. This module is an entry point: it reads the environment (the
webhook secret, JENKINS_URL and the Jenkins credentials) and passes it down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainchain.cli.common import ALERT_TOKEN_ENV
from trainchain.cli.common import alert_token as _alert_token
from trainchain.cli.common import command_settings as _settings
from trainchain.cli.common import out as _out
from trainchain.core.errors import ConfigError

SECRET_ENV = "TRAINCHAIN_WEBHOOK_SECRET"  # noqa: S105 - the variable's name, not a secret
LISTEN_BACKLOG = 64


def _data_dir(args: argparse.Namespace) -> str | None:
    """--data made absolute: runs start in the hooks folder, not here."""
    return str(Path(args.data).expanduser().absolute()) if args.data else None


def _python() -> str:
    """This interpreter, absolute but not resolved: a venv's python must stay the venv's."""
    return os.path.abspath(sys.executable)


def _stop_on_sigterm() -> None:
    """SIGTERM stops a runner like Ctrl-C does: the chain it runs is stopped and recorded."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


# ---- hooks serve ----------------------------------------------------------------------
def _listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound here so a busy port is one clear error and
    port 0's pick is known before gunicorn starts (it serves this socket: fd://)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {err.strerror or err}",
            hint="pick another --port, or stop what listens there",
        ) from None
    sock.set_inheritable(True)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    from functools import partial

    from trainchain.serving.server import run_embedded
    from trainchain.triggers.hooks import HookPaths
    from trainchain.triggers.webhook import WebhookConfig, WebhookRuns, create_app, gunicorn_options

    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        raise ConfigError(
            f"{SECRET_ENV} is not set: without it no delivery can be checked as GitHub's",
            hint=f"set {SECRET_ENV} to the secret of the GitHub webhook (make one with "
            "`openssl rand -hex 32`), then start the server again",
        )
    settings = _settings(args)
    jenkins_job = _serve_jenkins_job(args)
    from trainchain.triggers.retrain import target_map

    config = WebhookConfig(
        secret=secret.encode("utf-8"),
        host=args.host,
        port=args.port,
        branches=tuple(args.branch or ()),
        executor=args.executor,
        data=_data_dir(args),
        max_queue=args.max_queue,
        max_body=args.max_body,
        run_timeout=args.run_timeout,
        shutdown_wait=args.shutdown_wait,
        workers=args.workers,
        jenkins_job=jenkins_job,
        jenkins_retries=args.jenkins_retries,
        alert_token=_alert_token(args.alert_token_file),
        retrain=target_map(args.retrain or ()),
        retrain_cooldown=args.retrain_cooldown,
    )
    paths = HookPaths.under(settings.home)
    hidden = (SECRET_ENV, ALERT_TOKEN_ENV)
    env = {k: v for k, v in os.environ.items() if k not in hidden}  # chains never see them
    runs = WebhookRuns(
        paths, home=settings.home, python=_python(), env=env, max_queue=config.max_queue
    )
    if not args.quiet:
        logging.getLogger("trainchain.triggers.webhook").setLevel(logging.INFO)
    sock = _listen(config.host, config.port)
    host, port = sock.getsockname()[:2]
    watched = ", ".join(config.branches) or "each repository's default branch"
    _out(f"hooks serve: listening on http://{host!s}:{port}/ and /github-webhook/")
    if jenkins_job:
        _out(f"hooks serve: pushes to {watched} become builds of the Jenkins job {jenkins_job}")
    _out(f"hooks serve: pushes to {watched} become runs under {paths.runs}")
    if config.alert_token is None:
        _out(f"hooks serve: /alerts is off (no --alert-token-file or {ALERT_TOKEN_ENV})")
    else:
        models = ", ".join(str(t) for t in config.retrain.values()) or "none (give --retrain)"
        _out(
            f"hooks serve: alerts at http://{host!s}:{port}/alerts retrain {models}; "
            f"cooldown {config.retrain_cooldown:g} s"
        )
    for line in runs.resume():  # what a killed server or drainer left behind
        _out(f"hooks serve: {line}")

    def stopping(_arbiter: object) -> None:  # gunicorn's on_exit, in this (master) process
        _out("hooks serve: stopping: no more deliveries")
        for line in runs.close(config.shutdown_wait):
            _out(f"hooks serve: {line}")

    # gunicorn owns the socket from here (it closes the descriptor it is given)
    options = gunicorn_options(config, sock.detach()) | {"on_exit": stopping}
    code = run_embedded(partial(create_app, config, runs), options)
    _out("hooks serve: stopped")
    return code


def _serve_jenkins_job(args: argparse.Namespace) -> str | None:
    """The Jenkins job pushes become builds of (--jenkins-job, or trainchain-1-pull when
    JENKINS_URL is set), as for the post-receive hook; its connection settings are checked
    now (the drainers read them from the environment when they trigger a build)."""
    from trainchain.adapters.jenkins import Connection
    from trainchain.triggers.hooks import DEFAULT_JENKINS_JOB

    job: str | None = args.jenkins_job
    if job is None and os.environ.get("JENKINS_URL"):
        job = DEFAULT_JENKINS_JOB
    if job is not None:
        Connection.from_env(os.environ)
    return job


# ---- hooks install / post-receive -------------------------------------------------------
def _hook_options(args: argparse.Namespace) -> Any:
    from trainchain.triggers.hooks import HookOptions

    return HookOptions(
        branches=tuple(args.branch or ()),
        executor=args.executor,
        data=_data_dir(args),
        jenkins_job=args.jenkins_job,
        url=args.url,
        max_queue=args.max_queue,
        run_timeout=args.run_timeout,
        jenkins_retries=args.jenkins_retries,
    )


def cmd_install(args: argparse.Namespace) -> int:
    from trainchain.triggers.hooks import HookPaths, install_hook

    settings = _settings(args)
    options = _hook_options(args)
    hook, backup = install_hook(
        Path(args.repo), settings.home, _python(), options, force=args.force
    )
    if backup is not None:
        _out(f"moved the hook that was there to {backup}")
    _out(f"installed {hook}")
    watched = ", ".join(options.branches) or "the repository's HEAD branch"
    if options.jenkins_job:
        _out(
            f"a push to {watched} queues a build of the Jenkins job {options.jenkins_job}; "
            f"logs and status under {HookPaths.under(settings.home).runs}"
        )
    else:
        _out(
            f"a push to {watched} queues `trainchain run` (a Jenkins build instead when "
            f"JENKINS_URL is set); logs and status under {HookPaths.under(settings.home).runs}"
        )
    return 0


def cmd_post_receive(args: argparse.Namespace) -> int:
    from trainchain.triggers.hooks import HookPaths, check_bare, post_receive

    settings = _settings(args)
    return post_receive(
        check_bare(Path(args.repo)),
        sys.stdin,
        _hook_options(args),
        paths=HookPaths.under(settings.home),
        python=_python(),
        env=dict(os.environ),
        home=settings.home,
        jenkins_url=os.environ.get("JENKINS_URL") or None,
        out=_out,
    )


# ---- hooks retrain ------------------------------------------------------------------------
def cmd_retrain(args: argparse.Namespace) -> int:
    from trainchain.core.status import ExitCode
    from trainchain.triggers.hooks import HookPaths, enqueue
    from trainchain.triggers.retrain import (
        RetrainOptions,
        parse_target,
        request_retrain,
        retrain_request,
    )

    settings = _settings(args)
    options = RetrainOptions(
        executor=args.executor,
        data=_data_dir(args),
        run_timeout=args.run_timeout,
        jenkins_job=_serve_jenkins_job(args),
        jenkins_retries=args.jenkins_retries,
        cooldown=args.cooldown,
    )
    request = retrain_request(parse_target(args.target), args.reason, "retrain", options)

    def submit(request: Any, cooldown: float) -> Any:
        return enqueue(
            HookPaths.under(settings.home),
            request,
            max_queue=args.max_queue,
            python=_python(),
            env={k: v for k, v in os.environ.items() if k not in (SECRET_ENV, ALERT_TOKEN_ENV)},
            home=settings.home,
            full_hint="ask again once some have run, or give a larger --max-queue",
            cooldown=cooldown,
        )

    answer = request_retrain(submit, request, options.cooldown)
    _out(f"retrain {request.model}: {answer.text}")
    if answer.status is not None:
        _out(f"log: {answer.status.log}")
    return ExitCode.BUSY if answer.outcome == "cooling_down" else 0


# ---- runs --------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from trainchain.triggers.hooks import HookPaths, load_status, recent_runs

    paths = HookPaths.under(_settings(args).home)
    if args.run_id:
        _out(json.dumps(load_status(paths, args.run_id).to_dict(), indent=2))
        return 0
    runs = recent_runs(paths, args.limit)
    if not runs:
        _out(f"no runs under {paths.runs}")
    for run in runs:
        line = f"{run.run_id}  {run.state:<16}  {run.commit[:12]}  {run.repository}"
        if run.jenkins_job:
            where = run.jenkins_build_url or run.jenkins_queue_url
            line += f"  (Jenkins {run.jenkins_job}{f': {where}' if where else ''})"
        _out(line)
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    from trainchain.triggers.hooks import HookPaths, TriggerQueue, dispatch, drain

    settings = _settings(args)
    paths = HookPaths.under(settings.home)
    if args.claim is None:  # by hand: settle what dead drainers left, start drainers
        queue = TriggerQueue(paths)
        for line in queue.reconcile():
            _out(line)
        started = dispatch(queue, python=_python(), env=dict(os.environ), home=settings.home)
        _out(f"started {started} drainer(s)")
        return 0
    _stop_on_sigterm()
    drain(paths, args.claim, python=_python(), env=dict(os.environ), home=settings.home)
    return 0


# ---- parser ------------------------------------------------------------------------------
def _size(text: str) -> int:
    from trainchain.core.sizes import parse_size

    try:
        return parse_size(text, option="")  # argparse names --max-body
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _cooldown(text: str) -> float:
    from trainchain.core.alerts import parse_duration

    try:
        return parse_duration(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _run_options(sp: argparse.ArgumentParser, *, branches: bool = True) -> None:
    if branches:
        sp.add_argument(
            "--branch",
            action="append",
            metavar="NAME",
            help="a branch whose pushes start runs (repeatable; default: the repository's "
            "default branch)",
        )
    sp.add_argument(
        "--executor",
        choices=["auto", "docker", "local"],
        help="passed to `trainchain run` (default: its own, auto)",
    )
    sp.add_argument("--data", help="data folder passed to `trainchain run` (default: data.path)")
    sp.add_argument(
        "--max-queue",
        type=int,
        default=16,
        help="runs that may wait per repository behind the running one (default: 16)",
    )
    sp.add_argument(
        "--run-timeout",
        type=float,
        default=24 * 3600.0,
        metavar="SECONDS",
        help="a chain running longer is stopped and counts as failed (default: 86400)",
    )
    sp.add_argument(
        "--jenkins-retries",
        type=int,
        default=5,
        metavar="N",
        help="with Jenkins: how many times a trigger that could not connect or got a 5xx "
        "is tried again, after 2, 4, 8, 16, 30, 30... s (default: 5, about a minute)",
    )


def _hook_install_options(sp: argparse.ArgumentParser) -> None:
    _run_options(sp)
    sp.add_argument(
        "--jenkins-job",
        metavar="JOB",
        help="queue a build of this Jenkins job instead of running the chain here (without "
        "it, trainchain-1-pull when JENKINS_URL is set at push time); JENKINS_URL, "
        "JENKINS_USER and JENKINS_TOKEN come from the pusher's environment",
    )
    sp.add_argument(
        "--url",
        help="the repository as the chain (or Jenkins) pulls it (default: the bare "
        "repository's path)",
    )


def register(
    add: Callable[[str, Any, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    hooks = add(
        "hooks",
        lambda a: 0,
        "push triggers: a post-receive hook, a webhook server (a chain run here or a Jenkins "
        "build)",
    )
    hsub = hooks.add_subparsers(dest="hooks_command", required=True, metavar="COMMAND")

    def sub(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        sp = hsub.add_parser(name, parents=[common], help=help_text, description=help_text)
        sp.set_defaults(func=func)
        return sp

    sp = sub(
        "serve",
        cmd_serve,
        f"receive GitHub push webhooks (secret: ${SECRET_ENV}) and run the chain per push",
    )
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8088, help="port (default: 8088; 0: any free)")
    _run_options(sp)
    sp.add_argument(
        "--max-body",
        type=_size,
        default="5MiB",
        metavar="SIZE",
        help="largest delivery accepted, e.g. 5MiB (default), 512KiB",
    )
    sp.add_argument(
        "--shutdown-wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long to wait for running chains (default: 30); "
        "chains still running then finish on their own",
    )
    sp.add_argument(
        "--workers",
        type=int,
        default=2,
        help="gunicorn worker processes (default: 2), each answering 4 deliveries at once",
    )
    sp.add_argument(
        "--jenkins-job",
        metavar="JOB",
        help="queue a build of this Jenkins job per push instead of running the chain here "
        "(without it, trainchain-1-pull when JENKINS_URL is set); JENKINS_URL, JENKINS_USER "
        "and JENKINS_TOKEN come from the environment",
    )
    sp.add_argument(
        "--alert-token-file",
        metavar="FILE",
        help="turn on POST /alerts (Alertmanager's webhook): the bearer token it must send, "
        f"the file's first line (default: ${ALERT_TOKEN_ENV}; neither: /alerts is off)",
    )
    sp.add_argument(
        "--retrain",
        action="append",
        metavar="MODEL=REPOSITORY[@BRANCH]",
        help="a firing alert whose model label is MODEL retrains it: the chain on BRANCH's "
        "head (default: main) of REPOSITORY (repeatable, one per model)",
    )
    sp.add_argument(
        "--retrain-cooldown",
        type=_cooldown,
        default="6h",
        metavar="DURATION",
        help="no second retrain of a model within this long of the last, e.g. 6h "
        "(default), 30m, 1d, 0; kept in the queue, so a restart keeps it",
    )

    sp = sub("install", cmd_install, "write a post-receive hook into a bare repository")
    sp.add_argument("repo", metavar="BARE_REPO", help="the bare repository people push to")
    _hook_install_options(sp)
    sp.add_argument(
        "--force", action="store_true", help="replace a post-receive hook trainchain did not write"
    )

    sp = sub(
        "post-receive",
        cmd_post_receive,
        "what the installed hook runs: reads `old new ref` lines on stdin",
    )
    sp.add_argument("--repo", required=True, help="the bare repository")
    _hook_install_options(sp)

    sp = sub(
        "retrain",
        cmd_retrain,
        "queue a retrain of a model, as a drift alert to `hooks serve` does (for cron or "
        "a script): at most one pending per model, none within the cooldown",
    )
    sp.add_argument(
        "target",
        metavar="MODEL=REPOSITORY[@BRANCH]",
        help="the model, and the repository and branch (default: main) whose head retrains it",
    )
    sp.add_argument("--reason", required=True, help="why: shown in the chain's email")
    _run_options(sp, branches=False)
    sp.add_argument(
        "--cooldown",
        type=_cooldown,
        default="6h",
        metavar="DURATION",
        help="refuse (exit 9) when the model's last retrain was queued less than this long "
        "ago, e.g. 6h (default), 30m, 0",
    )
    sp.add_argument(
        "--jenkins-job",
        metavar="JOB",
        help="queue a build of this Jenkins job (REPOSITORY, COMMIT: the branch, REASON) "
        "instead of a chain run here (without it, trainchain-1-pull when JENKINS_URL is set)",
    )

    sp = sub("status", cmd_status, "a run's status, or the latest runs")
    sp.add_argument("run_id", nargs="?", help="a run id (default: list the latest runs)")
    sp.add_argument("--limit", type=int, default=20, help="runs listed (default: 20)")

    sp = sub(
        "drain",
        cmd_drain,
        "run queued runs: settle what killed drainers left and start drainers for queued "
        "runs (triggers start them on their own)",
    )
    sp.add_argument("--claim", metavar="TOKEN", help="internal: drain the repository it claims")
