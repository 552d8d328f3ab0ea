"""Executors run one training attempt through the file-and-environment contract.

``local`` runs the script as a subprocess of the host's Python; the Docker
executor (a container per attempt) plugs in behind the same interface.
"""

from trainchain.executors._base import AttemptResult, AttemptSpec, Executor, LineSink
from trainchain.executors.local import LocalExecutor

__all__ = ["AttemptResult", "AttemptSpec", "Executor", "LineSink", "LocalExecutor", "get_executor"]


def get_executor(name: str) -> Executor:
    from trainchain.errors import ConfigError

    if name in {"local", "auto"}:
        return LocalExecutor()
    raise ConfigError(
        f"unknown executor {name!r}: expected 'local' or 'auto'",
        hint="the Docker executor arrives with the training images; use --executor local",
    )
