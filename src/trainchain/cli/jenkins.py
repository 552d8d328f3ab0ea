"""`trainchain jenkins ...`: render the job definitions, install them on a Jenkins,
trigger a build and follow it, show the jobs' last builds.

The connection comes from --url, --user and --token, else from JENKINS_URL,
JENKINS_USER and JENKINS_TOKEN, read here and nowhere else. The adapter is
:mod:`trainchain.adapters.jenkins`; it is imported only when a jenkins command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainchain.cli.common import out as _out
from trainchain.core.errors import ConfigError
from trainchain.core.status import BUILD_RESULT_EXIT, ExitCode

if TYPE_CHECKING:
    from trainchain.adapters.jenkins import (
        Build,
        Connection,
        JenkinsClient,
        JobStatus,
        RenderedItem,
    )


def _info(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        _out(text)


def _connection(args: argparse.Namespace, timeout: float) -> Connection:
    """The connection from the options, else the environment (read here, at the entry point)."""
    from trainchain.adapters.jenkins import Connection

    given = {"url": args.url, "user": args.user, "token": args.token}
    return Connection.from_env(os.environ, timeout=timeout, given=given)


def _jobs_dir(args: argparse.Namespace) -> Path:
    from trainchain.adapters.jenkins import default_jobs_dir

    path = Path(args.jobs) if args.jobs else default_jobs_dir()
    if not path.is_dir():
        raise ConfigError(
            f"no job definitions at {path}"
            + ("" if args.jobs else " (the jobs/ folder of the trainchain checkout)"),
            hint="pass --jobs DIR, a folder of Jenkins Job Builder YAML files",
        )
    return path


def _render(args: argparse.Namespace) -> list[RenderedItem]:
    from trainchain.adapters.jenkins import render

    return render(_jobs_dir(args))


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


# ---- render ---------------------------------------------------------------------
def cmd_render(args: argparse.Namespace) -> int:
    from trainchain.adapters.jenkins import write_rendered

    items = _render(args)
    if args.out:
        for path in write_rendered(items, Path(args.out)):
            _out(str(path))
        return 0
    for item in items:
        sys.stdout.write(item.xml)
    sys.stdout.flush()
    return 0


# ---- install --------------------------------------------------------------------
def cmd_install(args: argparse.Namespace) -> int:
    from trainchain.adapters.jenkins import JenkinsClient

    items = _render(args)  # offline first: a YAML error touches no server
    with JenkinsClient(_connection(args, args.timeout)) as client:
        client.whoami()
        for action, item in client.install(items):
            _out(f"{action} {item.name}")
    return 0


# ---- trigger --------------------------------------------------------------------
def _params(pairs: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--param {pair!r} is not NAME=VALUE", hint="e.g. --param REPO=https://host/m.git"
            )
        params[key.strip()] = value
    return params


def cmd_trigger(args: argparse.Namespace) -> int:
    from trainchain.adapters.jenkins import JenkinsClient

    params = _params(args.param or [])
    for name, value in (("--timeout", args.timeout), ("--queue-timeout", args.queue_timeout)):
        if value <= 0:
            raise ConfigError(f"{name} must be positive but got {value:g}")
    if args.poll <= 0:
        raise ConfigError(f"--poll must be positive but got {args.poll:g}")
    with JenkinsClient(_connection(args, args.http_timeout)) as client:
        return _trigger(args, client, params)


def _trigger(args: argparse.Namespace, client: JenkinsClient, params: dict[str, str]) -> int:
    client.whoami()
    number = client.trigger(args.job, params)
    queue_url = client.queue_url(number)
    if not (args.wait or args.follow):
        _out(f"queued {args.job}: {queue_url}")
        return 0
    deadline = time.monotonic() + args.timeout
    _info(args, f"queued {args.job}: {queue_url}")
    build = client.wait_until_started(
        args.job,
        number,
        timeout=min(args.queue_timeout, args.timeout),
        poll=args.poll,
        on_waiting=lambda why: _info(args, f"waiting: {why}"),
    )
    _info(args, f"started {build.job} #{build.number}: {build.url}")
    try:
        if args.follow:
            tail = _follow(client, build, deadline, args.poll)
            if tail and not tail.endswith("\n"):
                _out()
        state = client.wait_for_result(build, deadline=deadline, poll=args.poll)
    except KeyboardInterrupt:
        print(f"stopped following; the build goes on in Jenkins: {build.url}", file=sys.stderr)
        raise
    result = state.result or "NOT_BUILT"
    _out(f"{build.job} #{build.number}: {result} in {_duration(state.duration_s)} ({build.url})")
    return BUILD_RESULT_EXIT.get(result, ExitCode.ERROR)


def _follow(client: JenkinsClient, build: Build, deadline: float, poll: float) -> str:
    """Stream the console to stdout; the last text written (to end it with a newline)."""
    last = [""]

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        last[0] = text

    client.stream_console(build, write, deadline=deadline, poll=poll)
    return last[0]


# ---- status ---------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from trainchain.adapters.jenkins import JenkinsClient

    jobs = list(args.jobs_) or [i.name for i in _render(args) if i.kind == "job"]
    with JenkinsClient(_connection(args, args.timeout)) as client:
        client.whoami()
        statuses = [client.status(job) for job in jobs]
    if args.json:
        _out(_status_json(statuses))
    else:
        _status_table(statuses, client.server)
    missing = [s.job for s in statuses if not s.exists]
    if missing:
        print(
            f"error: not on {client.server}: {', '.join(missing)}\n"
            "  hint: check the job names; `trainchain jenkins install` creates the trainchain jobs",
            file=sys.stderr,
        )
        return ExitCode.ERROR
    return 0


def _status_row(s: JobStatus) -> dict[str, Any]:
    b = s.last_build
    return {
        "job": s.job,
        "exists": s.exists,
        "in_queue": s.in_queue,
        "last_build": None if b is None else b.number,
        "result": None if b is None else b.result,
        "building": False if b is None else b.building,
        "duration_s": None if b is None else round(b.duration_s, 3),
        "url": None if b is None else b.url,
    }


def _status_json(statuses: Sequence[JobStatus]) -> str:
    import json

    return json.dumps([_status_row(s) for s in statuses], indent=2)


def _status_table(statuses: Sequence[JobStatus], server: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"trainchain jobs on {server}")
    for col in ("job", "last build", "result", "duration", "building", "queued"):
        table.add_column(col)
    for s in statuses:
        b = s.last_build
        if not s.exists:
            table.add_row(s.job, "-", "not installed", "-", "-", "-")
        elif b is None:
            table.add_row(s.job, "-", "never built", "-", "no", "yes" if s.in_queue else "no")
        else:
            table.add_row(
                s.job,
                f"#{b.number}",
                b.result or "-",
                _duration(b.duration_s),
                "yes" if b.building else "no",
                "yes" if s.in_queue else "no",
            )
    console = Console(highlight=False)
    if not console.is_terminal:  # logs and pipes get the whole table, not 80 columns
        console = Console(highlight=False, width=160)
    console.print(table)


# ---- parser ---------------------------------------------------------------------
def register(
    add: Callable[[str, Any, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    jenkins = add("jenkins", lambda a: 0, "render, install and drive the trainchain Jenkins jobs")
    jsub = jenkins.add_subparsers(dest="jenkins_command", required=True, metavar="COMMAND")

    jobs_opt = argparse.ArgumentParser(add_help=False)
    jobs_opt.add_argument(
        "--jobs",
        metavar="DIR",
        help="folder of Jenkins Job Builder YAML (default: jobs/ of the trainchain checkout)",
    )
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", help="Jenkins root URL (default: $JENKINS_URL)")
    conn.add_argument("--user", help="Jenkins user (default: $JENKINS_USER)")
    conn.add_argument(
        "--token",
        help="the user's API token (default: $JENKINS_TOKEN; prefer the variable: "
        "options show in the process list)",
    )

    def sub(name: str, func: Any, help_text: str, *parents: Any) -> argparse.ArgumentParser:
        sp = jsub.add_parser(
            name, parents=[common, *parents], help=help_text, description=help_text
        )
        sp.set_defaults(func=func)
        return sp

    sp = sub(
        "render",
        cmd_render,
        "render the job and view XML offline with Jenkins Job Builder",
        jobs_opt,
    )
    sp.add_argument(
        "--out",
        metavar="DIR",
        help="write one file per job and view into DIR (as `jenkins-jobs test -o DIR` "
        "names them) and print their paths; default: print the XML",
    )

    sp = sub(
        "install",
        cmd_install,
        "create or reconfigure every job and view on Jenkins; unchanged ones are left alone",
        jobs_opt,
        conn,
    )
    sp.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds for each HTTP call (default: 30)",
    )

    sp = sub(
        "trigger",
        cmd_trigger,
        "queue a build; with --wait or --follow, wait for it and exit with its result "
        f"({', '.join(f'{result} {code:d}' for result, code in BUILD_RESULT_EXIT.items())})",
        conn,
    )
    sp.add_argument("job", help="the job's name, e.g. trainchain-pipeline")
    sp.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="a build parameter (repeatable); the job's defaults fill the others",
    )
    sp.add_argument("--wait", action="store_true", help="wait for the build and print its result")
    sp.add_argument(
        "--follow", action="store_true", help="stream the build's console until it finishes"
    )
    sp.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=6 * 3600.0,
        help="seconds to wait in all, queue and build (default: 21600, 6 h); the build "
        "goes on in Jenkins after it",
    )
    sp.add_argument(
        "--queue-timeout",
        type=float,
        metavar="SECONDS",
        default=3600.0,
        help="seconds the build may wait in the queue for an executor (default: 3600)",
    )
    sp.add_argument(
        "--poll",
        type=float,
        metavar="SECONDS",
        default=2.0,
        help="seconds between polls of the queue, the build and its console (default: 2)",
    )
    sp.add_argument(
        "--http-timeout",
        type=float,
        metavar="SECONDS",
        default=30.0,
        help="seconds for each HTTP call (default: 30)",
    )

    sp = sub(
        "status",
        cmd_status,
        "each trainchain job's last build: number, result, duration, whether it is building",
        jobs_opt,
        conn,
    )
    sp.add_argument(
        "jobs_",
        nargs="*",
        metavar="JOB",
        help="jobs to show (default: every job in the job definitions)",
    )
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds for each HTTP call (default: 30)",
    )
