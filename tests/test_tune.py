"""Tune until the goal, within the budget, resumable after SIGKILL (real Optuna and MLflow
SQLite stores, real subprocess trials)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ToyRepo
from trainchain.context import prepare
from trainchain.executors import LocalExecutor
from trainchain.progress import TuneDisplay
from trainchain.settings import Settings
from trainchain.studies import open_study
from trainchain.tune import tune


def _quiet() -> TuneDisplay:
    return TuneDisplay("val_accuracy", 0.0, ">=", quiet=True)


def test_tune_reaches_goal_and_logs_every_trial(toy_repo: ToyRepo, settings: Settings) -> None:
    """The first trial uses the defaults; tuning stops at the goal; each trial is a child run."""
    prep = prepare(toy_repo(threshold=0.95), settings)
    report = tune(prep, LocalExecutor(), display=_quiet())
    assert report.status == "succeeded"
    assert report.best_value is not None and report.best_value >= 0.95
    assert report.trials[0].params["x"] == pytest.approx(0.1)  # the defaults come first
    assert report.trials[0].value == pytest.approx(0.4)
    assert len(report.trials) < 12  # it stopped as soon as the goal was reached

    client = MlflowClient(settings.tracking_uri)
    children = client.search_runs(
        [client.get_experiment_by_name("toy").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{report.parent_run_id}'",
    )
    assert len(children) == len(report.trials)
    tags = children[0].data.tags
    for key in ("repository", "commit", "data_digest", "trial", "executor", "image"):
        assert tags[f"trainchain.{key}"], key
    assert tags["trainchain.data_digest"].startswith("sha256:")
    assert (settings.home / "optuna.db").exists() and (settings.home / "mlflow.db").exists()
    assert (settings.chains_dir / f"{report.chain_id}.json").exists()


def test_budget_runs_out_below_goal(toy_repo: ToyRepo, settings: Settings) -> None:
    """An unreachable goal stops at max_trials with status goal_not_reached."""
    prep = prepare(toy_repo(threshold=0.9999, max_trials=3), settings)
    report = tune(prep, LocalExecutor(), display=_quiet())
    assert report.status == "goal_not_reached"
    assert [t.state for t in report.trials] == ["COMPLETE"] * 3
    assert report.best_value is not None and report.best_value < 0.9999


def test_failing_script_stops_after_consecutive_failures(
    toy_repo: ToyRepo, settings: Settings
) -> None:
    """A script that always fails ends the tune with its error and last log lines."""
    prep = prepare(toy_repo(mode="crash", attempts=2), settings)
    report = tune(prep, LocalExecutor(), display=_quiet())
    assert report.status == "failed"
    assert report.error is not None and "exited with status 2" in report.error
    assert "crashing on purpose" in report.log_tail
    assert len(report.trials) == 3  # max_consecutive_failures
    # each trial made max_attempts attempts, the second resuming from the checkpoint
    trial_dir = settings.runs_dir / report.chain_id / "trial-0000"
    assert "starting at step 0" in (trial_dir / "attempt-1" / "train.log").read_text()
    assert "starting at step 3" in (trial_dir / "attempt-2" / "train.log").read_text()


def test_rerun_after_finish_starts_a_new_study(toy_repo: ToyRepo, settings: Settings) -> None:
    """A finished study is not resumed: the next chain is a new study."""
    repo = toy_repo(threshold=0.9999, max_trials=2)
    first = tune(prepare(repo, settings), LocalExecutor(), display=_quiet())
    second = tune(prepare(repo, settings), LocalExecutor(), display=_quiet())
    assert second.chain_id == first.chain_id + "-r2"
    assert len(second.trials) == 2


def _wait_for(predicate: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


@pytest.mark.slow
def test_tune_killed_with_sigkill_resumes_the_same_study(
    toy_repo: ToyRepo, settings: Settings, home: Path
) -> None:
    """SIGKILL mid-trial, then tune again: finished trials stay, the count goes on, and the
    interrupted trial is retried with its parameters from its last checkpoint."""
    repo = toy_repo(threshold=0.9999, max_trials=5)
    cmd = [sys.executable, "-m", "trainchain", "tune", str(repo), "-q"]
    env = {**os.environ, "TRAINCHAIN_HOME": str(home), "TOY_HANG_TRIAL": "2"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def hanging() -> bool:
            logs = list(settings.runs_dir.glob("*/trial-0002/attempt-1/train.log"))
            return bool(logs) and "toy: hanging" in logs[0].read_text()

        _wait_for(hanging)
        chain_dir = next(settings.runs_dir.glob("*/trial-0002")).parent
        assert _training_pids(repo), "the training subprocess should be running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the orphaned training process dies with its parent
    _wait_for(lambda: not _training_pids(repo))

    chain_id = chain_dir.name
    study = open_study(settings.study_storage, chain_id, prep_direction(), 0)
    before = {t.number: (t.state.name, t.value) for t in study.trials}
    assert before[0][0] == before[1][0] == "COMPLETE" and before[2][0] == "RUNNING"

    env.pop("TOY_HANG_TRIAL")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 3, done.stdout + done.stderr  # budget spent below the goal

    study = open_study(settings.study_storage, chain_id, prep_direction(), 0)
    trials = {t.number: t for t in study.trials}
    # finished trials were not repeated
    assert (trials[0].state.name, trials[0].value) == before[0]
    assert (trials[1].state.name, trials[1].value) == before[1]
    # the interrupted trial was retried with the same parameters, resuming after step 1
    assert trials[2].state.name == "FAIL"
    assert trials[3].user_attrs["retry_of"] == 2
    assert trials[3].params == trials[2].params
    retry_log = (chain_dir / "trial-0003" / "attempt-1" / "train.log").read_text()
    assert "starting at step 2" in retry_log
    # the count went on: 5 trials of budget, plus the interrupted one
    assert len(trials) == 6
    assert sum(t.state.name == "COMPLETE" for t in trials.values()) == 5
    report = json.loads((settings.chains_dir / f"{chain_id}.json").read_text())
    assert [t["state"] for t in report["trials"]].count("INTERRUPTED") == 1
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(
        trials[2].user_attrs.get("mlflow_run_id")
        or _interrupted_run(client, report["parent_run_id"])
    )
    assert run.info.status == "FAILED"


def _training_pids(repo: Path) -> list[str]:
    found = subprocess.run(
        ["pgrep", "-f", str(repo / "train.py")], capture_output=True, text=True, check=False
    )
    return found.stdout.split()


def _interrupted_run(client: MlflowClient, parent: str) -> str:
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`trainchain.status` = "
        "'interrupted'",
    )
    assert len(runs) == 1
    return str(runs[0].info.run_id)


def prep_direction() -> object:
    from trainchain.config import Direction

    return Direction.MAXIMIZE
