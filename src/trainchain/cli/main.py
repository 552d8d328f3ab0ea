"""The `trainchain` command: the parser and the entry point.

One module per command group declares its subcommands (`register`) and runs them:
`jobs` (the chain's jobs and `trainchain run`), `models` (the registry), `images`,
`data`, `drift`, `jenkins`, `hooks`, `serve`. Jenkins, the local runner and the tests all run
these same functions. Every command returns an exit status; errors become one clear
line and a hint. `help` ends every --help with the exit statuses and examples.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainchain import __version__
from trainchain.cli import data as data_cli
from trainchain.cli import drift as drift_cli
from trainchain.cli import help as help_cli
from trainchain.cli import hooks as hooks_cli
from trainchain.cli import images as images_cli
from trainchain.cli import jenkins as jenkins_cli
from trainchain.cli import jobs as jobs_cli
from trainchain.cli import models as models_cli
from trainchain.cli import serve as serve_cli
from trainchain.core.errors import ERROR_PREFIX, TrainchainError
from trainchain.core.status import ExitCode


def build_parser() -> argparse.ArgumentParser:
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

    jobs_cli.register(add, common)
    models_cli.register(add, common)
    jobs_cli.register_rest(add, common)
    images_cli.register(add, common)
    data_cli.register(add, common)
    drift_cli.register(add, common)
    jenkins_cli.register(add, common)
    hooks_cli.register(add, common)
    serve_cli.register(add, common)
    help_cli.add_epilogs(p)
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
        print(f"{ERROR_PREFIX}{err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
