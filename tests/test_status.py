"""One ExitCode and one RunState for the whole package, with the codes the README lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainchain.adapters.jenkins import JenkinsError
from trainchain.core import errors
from trainchain.core.status import BUILD_RESULT_EXIT, ExitCode, RunState, exit_status_table
from trainchain.triggers.hooks import RepositoryBusy

README = Path(__file__).resolve().parents[1] / "README.md"


def test_exit_codes_are_the_documented_numbers() -> None:
    """Each ExitCode keeps its number, and the README shows the table of exit statuses
    that every --help ends with, line for line."""
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "ERROR": 1,
        "CONFIG": 2,
        "GOAL_NOT_REACHED": 3,
        "DETECTION": 4,
        "PULL": 5,
        "TRAINING": 6,
        "REGISTRY": 7,
        "NOTIFY": 8,
        "BUSY": 9,
        "JENKINS": 10,
        "DRIFT": 11,
        "INTERRUPTED": 130,
    }
    table = exit_status_table()  # one line per code, each with its meaning
    assert [line.split()[0] for line in table] == [str(int(code)) for code in ExitCode]
    readme = README.read_text(encoding="utf-8")
    assert "\n".join(["exit status:", *table]) + "\n```" in readme, "README differs from --help"


def test_each_error_class_exits_with_its_code() -> None:
    """The error root's classes carry the ExitCode of their kind; 9 is defined once."""
    assert errors.TrainchainError("x").exit_code is ExitCode.ERROR
    assert errors.ConfigError("x").exit_code is ExitCode.CONFIG
    assert errors.DetectionError("x").exit_code is ExitCode.DETECTION
    assert errors.PullError("x").exit_code is ExitCode.PULL
    assert errors.TrainingError("x").exit_code is ExitCode.TRAINING
    assert errors.RegistryError("x").exit_code is ExitCode.REGISTRY
    assert errors.NotifyError("x").exit_code is ExitCode.NOTIFY
    assert errors.Busy("x").exit_code is ExitCode.BUSY
    assert isinstance(RepositoryBusy("x"), errors.Busy)
    assert RepositoryBusy("x").exit_code is ExitCode.BUSY
    assert JenkinsError("x").exit_code is ExitCode.JENKINS


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (RunState.SUCCEEDED, 0),
        (RunState.GOAL_NOT_REACHED, 3),
        (RunState.FAILED, 6),
        (RunState.RUNNING, 6),
    ],
)
def test_a_chains_state_is_its_exit_status(state: RunState, code: int) -> None:
    """`run` and `tune` exit 0 when the goal was confirmed, 3 when not reached, else 6."""
    assert state.exit_code == code


@pytest.mark.parametrize(
    ("code", "state"),
    [
        (0, RunState.SUCCEEDED),
        (3, RunState.GOAL_NOT_REACHED),
        (6, RunState.FAILED),
        (1, RunState.FAILED),
        (130, RunState.FAILED),
        (-9, RunState.FAILED),
    ],
)
def test_a_runs_exit_status_is_its_state(code: int, state: RunState) -> None:
    """A triggered `trainchain run` that exits 0 succeeded, 3 did not reach the goal;
    any other status (a signal's negative one too) failed."""
    assert RunState.of_exit(code) is state


def test_only_queued_and_running_are_not_final() -> None:
    """A run is over in every state but queued and running."""
    assert {s for s in RunState if not s.final} == {RunState.QUEUED, RunState.RUNNING}


def test_run_state_reads_and_writes_as_its_plain_value() -> None:
    """A state is its string in JSON, f-strings and comparisons (status files stay as they were)."""
    import json

    assert json.dumps({"s": RunState.GOAL_NOT_REACHED}) == '{"s": "goal_not_reached"}'
    assert f"{RunState.FAILED}" == "failed" and RunState("queued") is RunState.QUEUED


def test_jenkins_results_exit_as_documented() -> None:
    """`jenkins trigger --follow`: SUCCESS 0, UNSTABLE 3, FAILURE 1, ABORTED 130, NOT_BUILT 1."""
    assert {k: int(v) for k, v in BUILD_RESULT_EXIT.items()} == {
        "SUCCESS": 0,
        "UNSTABLE": 3,
        "FAILURE": 1,
        "ABORTED": 130,
        "NOT_BUILT": 1,
    }


def test_a_report_holds_its_status_as_the_run_state() -> None:
    """A chain report made with a plain string or read from JSON holds the RunState, and its
    JSON keeps the plain value."""
    import json

    from tests.sample_reports import failed
    from trainchain.core.report import ChainReport

    report = failed().with_(status="goal_not_reached")
    assert report.status is RunState.GOAL_NOT_REACHED
    assert json.loads(report.to_json())["status"] == "goal_not_reached"
    assert ChainReport.from_dict(json.loads(report.to_json())).status is RunState.GOAL_NOT_REACHED
