"""Tune until the goal, within the budget, resumable after SIGKILL (real Optuna and MLflow
SQLite stores, real subprocess trials)."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ToyRepo, eventually, git, run_cli
from trainchain.adapters.studies import open_study
from trainchain.chain.context import prepare
from trainchain.chain.tune import tune
from trainchain.core.progress import TuneDisplay
from trainchain.core.settings import Settings
from trainchain.executors import LocalExecutor


def _quiet() -> TuneDisplay:
    return TuneDisplay("val_accuracy", 0.0, ">=", quiet=True)


def test_tune_reaches_goal_and_logs_every_trial(toy_repo: ToyRepo, settings: Settings) -> None:
    """The first trial uses the defaults; the best trial reaching the goal is confirmed on
    fresh folds and tuning stops; each trial and the confirmation is a child run."""
    from io import StringIO

    from rich.console import Console

    from trainchain.core.report import trial_label

    prep = prepare(toy_repo(threshold=0.95), settings)
    out = StringIO()
    display = TuneDisplay("val_accuracy", 0.95, ">=", console=Console(file=out, width=200))
    report = tune(prep, LocalExecutor(), display=display)
    assert report.status == "succeeded" and report.verdict == "confirmed"
    assert report.best_trial is not None
    # the console numbers trials as the email does: Optuna's trial 0 is #1
    assert f"tune: goal reached and confirmed ({trial_label(report.best_trial)})" in out.getvalue()
    assert f"trial 1/{prep.loaded.model.budget.max_trials} #1: x=0.1" in out.getvalue()
    assert report.best_value is not None and report.best_value >= 0.95
    assert report.trials[0].params["x"] == pytest.approx(0.1)  # the defaults come first
    assert report.trials[0].value == pytest.approx(0.4)
    assert len(report.trials[0].folds) == 5  # the study's 5-fold plan, every fold reported
    assert len(report.trials) < 12  # it stopped as soon as the goal was confirmed
    [confirmation] = report.confirmations
    assert confirmation.confirmed and confirmation.trial == report.best_trial
    assert confirmation.estimate.n == 20  # 5 folds x 4 repeats of the confirmation plan
    assert confirmation.bound is not None and 0.95 <= confirmation.bound < report.best_value

    client = MlflowClient(settings.tracking_uri)
    children = client.search_runs(
        [client.get_experiment_by_name("toy").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{report.parent_run_id}'",
    )
    assert len(children) == len(report.trials) + 1  # the trials and the confirmation
    [confirm_run] = [r for r in children if r.data.tags.get("trainchain.purpose") == "confirm"]
    assert confirm_run.data.tags["trainchain.confirms"] == str(report.best_trial)
    assert json.loads(confirm_run.data.tags["trainchain.validation"])["purpose"] == "confirm"
    tags = next(r for r in children if r.info.run_id == report.trials[0].run_id).data.tags
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

        eventually(hanging, "trial 2 to hang", 120, poll=0.2)
        chain_dir = next(settings.runs_dir.glob("*/trial-0002")).parent
        assert _training_pids(repo), "the training subprocess should be running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the orphaned training process dies with its parent
    eventually(lambda: not _training_pids(repo), "the orphaned training process to die", 120, 0.2)

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
    # the retry joins the queue behind start-up trials already waiting (the space-filling
    # design keeps its order), so it is found by its mark, not by its number
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == 2]
    assert retry.params == trials[2].params
    retry_log = (chain_dir / f"trial-{retry.number:04d}" / "attempt-1" / "train.log").read_text()
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
    from trainchain.core.config import Direction

    return Direction.MAXIMIZE


def test_a_trial_validated_on_other_folds_is_refused(
    toy_repo: ToyRepo, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script that scores each trial on folds of its own is refused from its second trial
    on: those scores are not comparable, so they never reach the goal; the chain fails with
    the reason."""
    monkeypatch.setenv("TOY_FOLDS", "drift")
    report = tune(prepare(toy_repo(threshold=0.9999), settings), LocalExecutor(), display=_quiet())
    assert report.status == "failed" and report.verdict == "failed"
    states = [t.state for t in report.trials]
    assert states == ["COMPLETE", "FAIL", "FAIL", "FAIL"]  # max_consecutive_failures: 3
    assert "validated on other folds" in report.trials[1].note
    assert report.error is not None and "validated on other folds" in report.error
    assert report.best_trial == 0  # a refused trial is never the best


def test_a_script_ignoring_the_plan_is_not_confirmed_and_run_exits_3(
    toy_repo: ToyRepo, home: Path
) -> None:
    """The goal reached on the search's validation, but the confirmation run came back on
    the search's own folds: "reached on the search's validation only, not confirmed", exit
    3, both figures shown, nothing promoted, and the email says so."""
    repo = toy_repo(threshold=0.3)
    out = run_cli("run", str(repo), "--home", str(home), env={"TOY_FOLDS": "ignore"})
    assert out.returncode == 3, out.stdout + out.stderr
    assert "reached on the search's validation only, not confirmed" in out.stdout
    assert re.search(r"search:\s+0\.\d+ \+- 0\.\d+ \(sd of 5 folds\), trial #\d", out.stdout)
    assert "confirm:   the confirmation was scored on the search's own folds" in out.stdout
    assert "TRAINCHAIN_VALIDATION" in out.stdout
    assert "champion:  none" in out.stdout
    [mail] = (home / "outbox").glob("*.eml")
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    assert "goal NOT confirmed" in message["Subject"]
    assert "on the search's validation only" in message["Subject"]
    body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "reached on the search's validation only, not confirmed" in body
    assert "Confirmation:" in body and "Search:" in body


def test_confirmation_on_the_held_out_set_needs_no_second_training(
    toy_repo: ToyRepo, home: Path
) -> None:
    """`confirmation.method: heldout`: the candidate's own held-out accuracy (1,000
    examples, which no trial's score used) is bounded at once, no confirmation run; the
    console, the report and the email say where it was confirmed."""
    repo = toy_repo(threshold=0.9, extra="confirmation: {method: heldout}\n")
    out = run_cli("run", str(repo), "--home", str(home), env={"TOY_N_TEST": "1000"})
    assert out.returncode == 0, out.stdout + out.stderr
    # progress on stderr, the summary on stdout
    assert "on the held-out test set (1000 examples, never used by the search)" in out.stderr
    found = re.search(
        r"confirm: +held-out (0\.\d+) \((\d+)/1000\), never used by the search; "
        r"lower 97\.5% bound (0\.\d+) >= 0\.9",
        out.stdout,
    )
    assert found, out.stdout
    value, correct, bound = float(found[1]), int(found[2]), float(found[3])
    assert correct == round(value * 1000) and 0.9 <= bound < value
    [report_file] = (home / "chains").glob("toy-*.json")
    report = json.loads(report_file.read_text())
    [confirmation] = report["confirmations"]
    assert confirmation["method"] == "heldout" and confirmation["confirmed"] is True
    assert confirmation["run_id"] == next(
        t["run_id"] for t in report["trials"] if t["number"] == confirmation["trial"]
    )  # the candidate's own run: nothing was trained again
    assert not list((home / "runs").glob("*/confirm-*"))
    [mail] = (home / "outbox").glob("*.eml")
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert re.search(
        r"Goal reached and confirmed: held-out accuracy lower bound 0\.\d+ >= 0\.9 on the "
        r"held-out test set\.",
        body,
    ), body
    assert "goal reached and confirmed (held-out accuracy lower bound" in message["Subject"]


def test_a_held_out_confirmation_without_the_test_size_is_not_confirmed(
    toy_repo: ToyRepo, home: Path
) -> None:
    """A script that reports no n_test cannot be confirmed on its held-out set: the chain
    says what is missing and ends unconfirmed (exit 3); a goal metric that is no accuracy
    is refused at once."""
    repo = toy_repo(threshold=0.9, extra="confirmation: {method: heldout, candidates: 1}\n")
    out = run_cli("run", str(repo), "--home", str(home))
    assert out.returncode == 3, out.stdout + out.stderr
    assert "the trial reported no held-out test (test_accuracy and n_test) to confirm on" in (
        out.stdout
    )
    assert "none was confirmed on the held-out test set" in out.stderr
    from trainchain.core.config import parse_config
    from trainchain.core.errors import ConfigError

    config = {
        "name": "m",
        "goal": {"metric": "loss", "threshold": 0.1, "direction": "minimize"},
        "search_space": {"x": {"type": "float", "low": 0, "high": 1, "default": 0.5}},
        "confirmation": {"method": "heldout"},
    }
    with pytest.raises(
        ConfigError, match=r"heldout bounds a held-out accuracy .* use method refit"
    ):
        parse_config(config)


def test_a_new_commit_starts_warm_from_the_earlier_study(
    toy_repo: ToyRepo, settings: Settings
) -> None:
    """The study of a new commit gets the finished trials of the earlier one (tagged with
    their commit) and tries the best earlier configurations first."""
    repo = toy_repo(threshold=0.9999, max_trials=3)
    first = tune(prepare(repo, settings), LocalExecutor(), display=_quiet())
    (repo / "train.py").write_text((repo / "train.py").read_text() + "\n# a small change\n")
    git(repo, "commit", "-qam", "a small change")
    second = tune(prepare(repo, settings), LocalExecutor(), display=_quiet())

    assert second.commit != first.commit and second.chain_id != first.chain_id
    assert "3 finished trials of 1 earlier study" in second.warm_start
    assert first.commit[:12] in second.warm_start
    ranked = sorted(first.trials, key=lambda t: -(t.value or 0.0))
    assert [t.params for t in second.trials] == [t.params for t in ranked]  # first: 3
    assert [t.number for t in second.trials] == [3, 4, 5]  # after the 3 warm trials
    study = open_study(settings.study_storage, second.chain_id, prep_direction(), 0)
    warm = [t for t in study.trials if t.user_attrs.get("warm_start")]
    assert len(warm) == 3
    assert {t.user_attrs["commit"] for t in warm} == {first.commit}
    assert {t.user_attrs["from_study"] for t in warm} == {first.chain_id}
    assert sorted(t.value for t in warm) == sorted(t.value for t in first.trials)
