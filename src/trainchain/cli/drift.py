"""`trainchain drift NAME --input FILES`: a batch of inputs tested against a registered
version's drift reference (the statistics of its training data, made at training time).

Exit status 0: no drift; 11 (``ExitCode.DRIFT``): drift detected; the usual codes for
errors (2 bad inputs or arguments, 7 a version without a reference).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainchain.cli.common import command_settings, out
from trainchain.core.errors import ConfigError
from trainchain.core.status import ExitCode


def _monitoring(config: str | None) -> Any:
    """``monitoring:`` of a model repository's trainchain.yaml, else the defaults."""
    from trainchain.core.config import Monitoring, load_config

    if config is None:
        return Monitoring()  # type: ignore[call-arg]
    return load_config(config).model.monitoring


def _moved(group: dict[str, Any], limit: int = 4) -> str:
    shown = []
    for m in group["moved"][:limit]:
        if group["group"] == "classes":
            shown.append(f"{m['feature']} {m['reference']:.0%}->{m['window']:.0%}")
        else:
            shown.append(f"{m['feature']} {m['shift']:+.1f} sd")
    more = len(group["moved"]) - limit
    return ", ".join(shown) + (f" (+{more})" if more > 0 else "")


def cmd_drift(args: argparse.Namespace) -> int:
    from trainchain.adapters.tracking import Tracker
    from trainchain.chain.drift import check_batch

    settings = command_settings(args)
    monitoring = _monitoring(args.config)
    check = check_batch(
        Tracker(settings.tracking_uri, settings.artifacts),
        args.name,
        [Path(p) for p in args.input],
        monitoring,
        alias=args.alias,
        version=args.version,
    )
    if not check.result.tested:
        raise ConfigError(
            f"{check.inputs} inputs: drift is tested on at least {check.result.min_window}",
            hint="give more inputs, or lower monitoring.min_window in trainchain.yaml (--config)",
        )
    data = check.to_dict()
    if args.json:
        out(json.dumps(data, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        verdict = "DRIFT DETECTED" if check.result.detected else "no drift"
        table = Table(
            title=f"{check.model} v{check.version} ({check.family}): {verdict} in "
            f"{check.inputs} inputs (alpha {check.result.alpha}, {check.result.correction})"
        )
        for col in ("group", "score", "p", "n", "drifted?", "moved"):
            table.add_column(col)
        for g in data["groups"]:
            table.add_row(
                g["group"],
                "-" if g["score"] is None else f"{g['score']:.3f}",
                "-" if g["p_value"] is None else f"{g['p_value']:.2g}",
                str(g["window"]),
                "yes" if g["detected"] else "no",
                _moved(g) or g["note"],
            )
        console = Console(highlight=False)
        if not console.is_terminal:  # logs and pipes get the whole table
            console = Console(highlight=False, width=160)
        console.print(table)
    return ExitCode.DRIFT if check.result.detected else ExitCode.OK


def register(
    add: Callable[[str, Any, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    sp = add(
        "drift",
        cmd_drift,
        "test a batch of inputs against a registered version's training data "
        "(exit 0: no drift, 11: drift)",
    )
    sp.add_argument("name", help="registered model name")
    which = sp.add_mutually_exclusive_group()
    which.add_argument("--alias", default="champion", help="which version (default: champion)")
    which.add_argument("--version", help="a version number (instead of --alias)")
    sp.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE",
        help=".npy arrays (EEG epochs n x channels x samples; images n x h x w x c) or image files",
    )
    sp.add_argument(
        "--config",
        help="a model repository (or its trainchain.yaml) whose monitoring: section to use "
        "(default: the defaults)",
    )
    sp.add_argument("--json", action="store_true", help="the result as JSON")
