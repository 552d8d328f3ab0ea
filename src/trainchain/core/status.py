"""Exit codes and run states: the one spelling of each, for the whole package.

``trainchain``'s exit status is an :class:`ExitCode`, each explained in
:data:`EXIT_MEANINGS` (every ``--help`` ends with it, and the README shows it);
a chain or a triggered run is in a :class:`RunState`. A run's state and its exit code
map one to the other here, and nowhere else. This module imports nothing of trainchain.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What ``trainchain`` exits with; :data:`EXIT_MEANINGS` says what each means."""

    OK = 0
    ERROR = 1
    CONFIG = 2
    GOAL_NOT_REACHED = 3
    DETECTION = 4
    PULL = 5
    TRAINING = 6
    REGISTRY = 7
    NOTIFY = 8
    BUSY = 9
    JENKINS = 10
    DRIFT = 11
    INTERRUPTED = 130


# The one table of exit statuses: `trainchain --help` and every command's --help print it
# (exit_status_table), and the README's "Exit status" is this text.
EXIT_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success (for a chain: the goal confirmed)",
    ExitCode.ERROR: "any other error",
    ExitCode.CONFIG: "bad configuration or arguments",
    ExitCode.GOAL_NOT_REACHED: "the budget ran out below the goal, or the goal was not confirmed",
    ExitCode.DETECTION: "detection could not decide the model family",
    ExitCode.PULL: "the model source could not be pulled: no such path, or git failed",
    ExitCode.TRAINING: "training failed: the chain failed",
    ExitCode.REGISTRY: "the registry refused (e.g. nothing to roll back to)",
    ExitCode.NOTIFY: "the email could not be sent (it is kept in the outbox)",
    ExitCode.BUSY: "another process holds the model's or repository's lock (see --wait-lock)",
    ExitCode.JENKINS: "Jenkins refused or could not be reached",
    ExitCode.DRIFT: "`trainchain drift`: the inputs drifted from the model's training data",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_status_table() -> list[str]:
    """One line per exit status, ``  3    the budget ran out ...``, in the order of the codes."""
    return [f"  {code.value:<4} {EXIT_MEANINGS[code]}" for code in ExitCode]


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
