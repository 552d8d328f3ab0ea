"""What every command module of the CLI shares: printing, the settings, the values
handed on to the next Jenkins job, and the model source a command works on."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from trainchain.core.errors import ConfigError
from trainchain.core.settings import Settings, for_command

log = logging.getLogger("trainchain")


def out(text: str = "") -> None:
    print(text, flush=True)


def command_settings(args: argparse.Namespace) -> Settings:
    """The command's settings; with its --reason (`run`, `tune`) as why the chain runs."""
    settings = for_command(args.home)
    reason = getattr(args, "reason", None)
    if reason:
        from dataclasses import replace

        from trainchain.core.report import clean_reason

        settings = replace(settings, reason=clean_reason(reason))
    return settings


def hand_on(args: argparse.Namespace, values: dict[str, str]) -> None:
    """--properties FILE: the values the next Jenkins job receives as parameters."""
    if getattr(args, "properties", None):
        from trainchain.adapters import properties

        path = properties.write(args.properties, values)
        log.info("wrote %s for the next job", path)


def source(args: argparse.Namespace, settings: Settings) -> tuple[Path, str | None, str | None]:
    """SOURCE [--ref] [--subdir]: a model folder used in place, or a repository pulled (job 1)."""
    from trainchain.chain.run import resolve_source

    return resolve_source(args.source, args.ref, settings, args.subdir)


def prepare(args: argparse.Namespace, settings: Settings) -> Any:
    """SOURCE pulled if need be, loaded and checked with the command's overrides."""
    from trainchain.chain.context import prepare as prepare_chain

    path, repository, commit = source(args, settings)
    return prepare_chain(
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


def chain_report(settings: Settings, args: argparse.Namespace) -> Any:
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


ALERT_TOKEN_ENV = "TRAINCHAIN_ALERT_TOKEN"  # noqa: S105 - the variable's name, not a token
MAX_TOKEN_FILE = 4096


def alert_token(path: str | None) -> bytes | None:
    """The bearer token of ``POST /alerts`` (`hooks serve --alert-token-file`, which
    Alertmanager and `serve --retrain-token-file` send): the file's first line, else
    TRAINCHAIN_ALERT_TOKEN; None when neither is given."""
    if path is None:
        token = os.environ.get(ALERT_TOKEN_ENV, "").strip()
        return token.encode("utf-8") if token else None
    try:
        with Path(path).expanduser().open("rb") as handle:
            raw = handle.read(MAX_TOKEN_FILE + 1)
    except OSError as err:
        raise ConfigError(
            f"cannot read the alert token file {path}: {err.strerror or err}",
            hint="give the file Alertmanager's credentials_file names",
        ) from None
    lines = raw.decode("utf-8", errors="replace").strip().splitlines()
    if len(raw) > MAX_TOKEN_FILE or not lines or not lines[0].strip():
        raise ConfigError(
            f"the alert token file {path} is empty or longer than {MAX_TOKEN_FILE} bytes",
            hint="put one token in it (make one with `openssl rand -hex 32`)",
        )
    return lines[0].strip().encode("utf-8")
