"""The registry's commands: promote a chain's best model, roll the champion back,
list a model's versions."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from trainchain.cli.common import chain_report, command_settings, out
from trainchain.core import keys


def cmd_promote(args: argparse.Namespace) -> int:
    from trainchain.adapters.tracking import Tracker
    from trainchain.chain.registry import promote
    from trainchain.chain.tune import save_report

    settings = command_settings(args)
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    report = promote(chain_report(settings, args), tracker)
    save_report(settings.chains_dir, report, tracker)
    if report.registry_version:
        out(f"registered {report.model_name} v{report.registry_version} (alias challenger)")
    out(report.promotion_reason)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from trainchain.adapters.tracking import Tracker

    settings = command_settings(args)
    old, new = Tracker(settings.tracking_uri, settings.artifacts).rollback(args.name)
    out(f"{args.name}: champion moved back from v{old} to v{new}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from trainchain.adapters.tracking import Tracker

    settings = command_settings(args)
    versions = Tracker(settings.tracking_uri, settings.artifacts).versions(args.name)
    if args.json:
        out(json.dumps([v.__dict__ for v in versions], indent=2, default=str))
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


def register(
    add: Callable[[str, Any, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    sp = add(
        "promote", cmd_promote, "register the chain's best model; make it champion if it earns it"
    )
    sp.add_argument("--chain", help="chain id (default: the latest chain)")
    sp.add_argument("--model", help="the latest chain of this model")

    sp = add("rollback", cmd_rollback, "move the champion alias back to the previous champion")
    sp.add_argument("name", help="the registered model (its `name:` in trainchain.yaml)")

    sp = add("models", cmd_models, "list a registered model's versions, aliases and metrics")
    sp.add_argument("name", help="the registered model (its `name:` in trainchain.yaml)")
    sp.add_argument("--json", action="store_true", help="print the versions as JSON")
