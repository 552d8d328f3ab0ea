"""The one error root.

Every error trainchain raises on purpose is a :class:`TrainchainError`. Its
message says what was received and what was expected; ``hint`` says what to
do. The CLI prints ``error: <message>`` and, on the next line, the hint, and
exits with ``exit_code``.
"""

from __future__ import annotations


class TrainchainError(Exception):
    """Root of all trainchain errors."""

    exit_code = 1

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

    exit_code = 2


class DetectionError(TrainchainError):
    """The model family could not be decided from the code."""

    exit_code = 4


class PullError(TrainchainError):
    """A repository could not be cloned or fetched, or the ref is unknown."""

    exit_code = 5


class TrainingError(TrainchainError):
    """A training attempt failed."""

    exit_code = 6

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

    exit_code = 7


class NotifyError(TrainchainError):
    """An email could not be sent or written."""

    exit_code = 8


class GoalNotReached(TrainchainError):
    """The tuning budget ran out below the goal (exit 3, as DESIGN.md and the issue specify)."""

    exit_code = 3


class StoreError(TrainchainError):
    """An outside store (the MLflow tracking store or registry, the Optuna study storage)
    could not be read or written: the message names the store's URL (no password)."""


class NotInStore(StoreError):
    """The store answered, and what was asked for is not in it (MLflow's
    RESOURCE_DOES_NOT_EXIST): the one failure a caller may read as "none"."""
