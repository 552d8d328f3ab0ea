"""The one error root.

Every error trainchain raises on purpose is a :class:`TrainchainError`. Its
message says what was received and what was expected; ``hint`` says what to
do. The CLI prints ``error: <message>`` and, on the next line, the hint, and
exits with ``exit_code``, one of :class:`~trainchain.core.status.ExitCode`.
"""

from __future__ import annotations

from trainchain.core.status import ExitCode

ERROR_PREFIX = "error: "  # how the CLI prints an error (its first line), and how a log shows it


def last_error_line(log: str) -> str | None:
    """The first line of the last error the CLI printed in ``log`` (``error: ...``), without
    the prefix; None when it printed none."""
    for line in reversed(log.splitlines()):
        if line.startswith(ERROR_PREFIX) and line[len(ERROR_PREFIX) :].strip():
            return line[len(ERROR_PREFIX) :].strip()
    return None


class TrainchainError(Exception):
    """Root of all trainchain errors."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(TrainchainError):
    """trainchain.yaml or the environment is wrong."""

    exit_code = ExitCode.CONFIG


class DetectionError(TrainchainError):
    """The model family could not be decided from the code."""

    exit_code = ExitCode.DETECTION


class PullError(TrainchainError):
    """A repository could not be cloned or fetched, or the ref is unknown."""

    exit_code = ExitCode.PULL


class TrainingError(TrainchainError):
    """A training attempt failed."""

    exit_code = ExitCode.TRAINING

    def __init__(self, message: str, hint: str | None = None, log_tail: str = "") -> None:
        super().__init__(message, hint)
        self.log_tail = log_tail

    def __str__(self) -> str:
        text = super().__str__()
        if self.log_tail:
            text += "\n  last log lines:\n" + "\n".join(
                "    " + line for line in self.log_tail.splitlines()
            )
        return text


class RegistryError(TrainchainError):
    """The model registry refused an operation (unknown model, no previous champion, ...)."""

    exit_code = ExitCode.REGISTRY


class NotifyError(TrainchainError):
    """An email could not be sent or written."""

    exit_code = ExitCode.NOTIFY


class Busy(TrainchainError):
    """Another process holds the lock of a model or a repository (exit 9)."""

    exit_code = ExitCode.BUSY


class StoreError(TrainchainError):
    """An outside store (the MLflow tracking store or registry, the Optuna study storage)
    could not be read or written: the message names the store's URL (no password)."""


class NotInStore(StoreError):
    """The store answered, and what was asked for is not in it (MLflow's
    RESOURCE_DOES_NOT_EXIST): the one failure a caller may read as "none"."""
