"""Settings from the environment, read once at the entry point into frozen objects.

Only this module and the entry points read environment variables.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trainchain.core.errors import ConfigError


class TlsMode(enum.StrEnum):
    NONE = "none"  # plain SMTP (a relay on loopback, a test catcher)
    STARTTLS = "starttls"  # SMTP then STARTTLS (port 587)
    SSL = "ssl"  # SMTP over TLS from the start (port 465)


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    user: str | None = None
    password: str | None = field(default=None, repr=False)  # never in repr, logs or messages
    tls: TlsMode = TlsMode.NONE
    timeout: float = 30.0


@dataclass(frozen=True)
class Settings:
    home: Path
    tracking_uri: str
    study_storage: str
    smtp: SmtpSettings | None
    default_recipients: tuple[str, ...]
    jenkins_build_url: str | None = None
    reason: str = ""  # why the chain runs: a command's --reason (`trainchain run`, `tune`)
    # seconds without a heartbeat after which a running trial's worker counts as dead (its
    # trial is failed and retried once by another worker); TRAINCHAIN_HEARTBEAT_GRACE
    heartbeat_grace: int = 30

    @property
    def outbox(self) -> Path:
        return self.home / "outbox"

    @property
    def workspaces(self) -> Path:
        return self.home / "workspaces"

    @property
    def runs_dir(self) -> Path:
        """Per-attempt folders: params, outputs, reports, logs."""
        return self.home / "runs"

    @property
    def checkpoints(self) -> Path:
        return self.home / "checkpoints"

    @property
    def chains_dir(self) -> Path:
        """One JSON report per chain, read by `trainchain notify`."""
        return self.home / "chains"

    @property
    def artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def locks(self) -> Path:
        return self.home / "locks"


def ensure_sqlite_folder(url: str) -> None:
    """A ``sqlite:///path`` store needs its folder; other URLs are left alone."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) not in {"", ":memory:"}:
            path.parent.mkdir(parents=True, exist_ok=True)


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def smtp_from_env(env: Mapping[str, str]) -> SmtpSettings | None:
    host = env.get("TRAINCHAIN_SMTP_HOST", "").strip()
    if not host:
        return None
    raw_tls = env.get("TRAINCHAIN_SMTP_TLS", "none").strip().lower() or "none"
    try:
        tls = TlsMode(raw_tls)
    except ValueError:
        raise ConfigError(
            f"TRAINCHAIN_SMTP_TLS={raw_tls!r} is not a TLS mode: expected none, starttls or ssl"
        ) from None
    default_port = {TlsMode.NONE: 25, TlsMode.STARTTLS: 587, TlsMode.SSL: 465}[tls]
    raw_port = env.get("TRAINCHAIN_SMTP_PORT", "").strip() or str(default_port)
    try:
        port = int(raw_port)
    except ValueError:
        raise ConfigError(
            f"TRAINCHAIN_SMTP_PORT={raw_port!r} is not a port number: expected 1-65535"
        ) from None
    if not 0 < port < 65536:
        raise ConfigError(f"TRAINCHAIN_SMTP_PORT={port} is out of range: expected 1-65535")
    user = env.get("TRAINCHAIN_SMTP_USER") or None
    password = env.get("TRAINCHAIN_SMTP_PASSWORD") or None
    if user and not password:
        raise ConfigError(
            "TRAINCHAIN_SMTP_USER is set but TRAINCHAIN_SMTP_PASSWORD is not",
            hint="set both to log in to the SMTP server, or neither to send without login",
        )
    return SmtpSettings(
        host=host,
        port=port,
        sender=env.get("TRAINCHAIN_SMTP_FROM", "").strip() or "trainchain@localhost",
        recipients=_split(env.get("TRAINCHAIN_SMTP_TO", "")),
        user=user,
        password=password,
        tls=tls,
    )


def for_command(home: str | None) -> Settings:
    """A command's settings: the environment, with its --home over TRAINCHAIN_HOME."""
    env = dict(os.environ)
    if home:
        env["TRAINCHAIN_HOME"] = home
    return load_settings(env)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get("TRAINCHAIN_HOME") or "~/.trainchain").expanduser().resolve()
    tracking = (
        env.get("TRAINCHAIN_TRACKING_URI")
        or env.get("MLFLOW_TRACKING_URI")
        or (f"sqlite:///{home / 'mlflow.db'}")
    )
    studies = env.get("TRAINCHAIN_STUDY_STORAGE") or f"sqlite:///{home / 'optuna.db'}"
    return Settings(
        home=home,
        tracking_uri=tracking,
        study_storage=studies,
        smtp=smtp_from_env(env),
        default_recipients=_split(env.get("TRAINCHAIN_SMTP_TO", "")),
        jenkins_build_url=env.get("BUILD_URL") or None,
        heartbeat_grace=_heartbeat_grace(env.get("TRAINCHAIN_HEARTBEAT_GRACE", "")),
    )


MIN_HEARTBEAT_GRACE = 2


def _heartbeat_grace(raw: str) -> int:
    if not raw.strip():
        return Settings.heartbeat_grace
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < MIN_HEARTBEAT_GRACE:
        raise ConfigError(
            f"TRAINCHAIN_HEARTBEAT_GRACE is {raw!r}: expected whole seconds, at least "
            f"{MIN_HEARTBEAT_GRACE}",
            hint="unset it for the default (30 s), or give e.g. 60 on a slow network",
        )
    return value
