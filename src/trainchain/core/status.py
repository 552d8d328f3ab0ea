"""Exit codes and run states: the one spelling of each, for the whole package.

``trainchain``'s exit status is an :class:`ExitCode` (the README's "Exit status" list);
a chain or a triggered run is in a :class:`RunState`. A run's state and its exit code
map one to the other here, and nowhere else. This module imports nothing of trainchain.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What ``trainchain`` exits with (README, "Exit status")."""

    OK = 0  # success: the goal confirmed; a Jenkins build's SUCCESS
    ERROR = 1  # any other error; a Jenkins build's FAILURE or NOT_BUILT
    CONFIG = 2  # bad configuration or arguments
    GOAL_NOT_REACHED = 3  # the budget ran out below the goal (or it was not confirmed)
    DETECTION = 4  # detection could not decide the model family
    PULL = 5  # the repository could not be cloned or fetched
    TRAINING = 6  # training failed: the chain failed
    REGISTRY = 7  # the registry refused (e.g. nothing to roll back to)
    NOTIFY = 8  # the email could not be sent (it is kept in the outbox)
    BUSY = 9  # another process holds the model's or the repository's lock
    JENKINS = 10  # Jenkins refused or could not be reached
    DRIFT = 11  # `trainchain drift`: the inputs drifted from the model's training data
    INTERRUPTED = 130  # Ctrl-C; a Jenkins build's ABORTED (128 + SIGINT)


class RunState(enum.StrEnum):
    """Where a chain (``ChainReport.status``) or a triggered run (``hooks``) stands."""

    QUEUED = "queued"  # a triggered run waiting for its repository
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    GOAL_NOT_REACHED = "goal_not_reached"
    FAILED = "failed"
    CANCELLED = "cancelled"  # a triggered run that never started: the server stopped first

    @property
    def final(self) -> bool:
        return self not in (RunState.QUEUED, RunState.RUNNING)

    @property
    def exit_code(self) -> ExitCode:
        """A finished chain's exit status: 0 succeeded, 3 goal not reached, else 6 failed."""
        return _EXIT_OF_STATE.get(self, ExitCode.TRAINING)

    @classmethod
    def of_exit(cls, code: int) -> RunState:
        """`trainchain run`'s exit status as a state: 0 succeeded, 3 goal not reached,
        anything else failed."""
        return {int(v): k for k, v in _EXIT_OF_STATE.items()}.get(code, cls.FAILED)


_EXIT_OF_STATE = {
    RunState.SUCCEEDED: ExitCode.OK,
    RunState.GOAL_NOT_REACHED: ExitCode.GOAL_NOT_REACHED,
}

# A Jenkins build's result as the exit status of `jenkins trigger --wait/--follow`.
# UNSTABLE is what a chain whose goal was not reached marks its build (exit 3 of job 4).
BUILD_RESULT_EXIT = {
    "SUCCESS": ExitCode.OK,
    "UNSTABLE": ExitCode.GOAL_NOT_REACHED,
    "FAILURE": ExitCode.ERROR,
    "ABORTED": ExitCode.INTERRUPTED,
    "NOT_BUILT": ExitCode.ERROR,
}
