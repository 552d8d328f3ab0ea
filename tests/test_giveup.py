"""Past the restart cap: trial failed in the study and in MLflow, failure email; twice is safe
(real Optuna and MLflow SQLite stores, the outbox)."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from mlflow import MlflowClient

from trainchain.adapters.studies import open_study
from trainchain.adapters.tracking import Tracker
from trainchain.chain.giveup import record_give_up
from trainchain.core.config import Direction
from trainchain.core.settings import Settings


def test_give_up_marks_trial_failed_and_emails(settings: Settings, tmp_path: Path) -> None:
    """The running trial becomes FAIL, its MLflow run FAILED, and a failure email with the
    last log lines is written; a second call changes nothing more and does not raise."""
    study = open_study(settings.study_storage, "m-chain", Direction.MAXIMIZE, 0)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    run_id = tracker.start_run(tracker.experiment_id("m"), "trial-0", {})
    attempt_dir = tmp_path / "attempt-4"
    attempt_dir.mkdir()
    (attempt_dir / "train.log").write_text("epoch 1\nepoch 2\nKilled\n")
    labels = {
        "trainchain.model": "m",
        "trainchain.chain": "m-chain",
        "trainchain.run": run_id,
        "trainchain.trial": str(trial.number),
        "trainchain.attempt_dir": str(attempt_dir),
    }

    report = record_give_up(settings, labels, "restarted 3 times (cap 3): exit 137")
    record_give_up(settings, labels, "restarted 3 times (cap 3): exit 137")

    assert study.trials[0].state.name == "FAIL"
    run = MlflowClient(settings.tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert "gave up" in run.data.tags["trainchain.error"]
    assert report.status == "failed"
    emails = sorted(settings.outbox.glob("*.eml"))
    assert len(emails) == 2
    msg = email.message_from_bytes(emails[0].read_bytes(), policy=email.policy.default)
    assert "FAILED" in msg["Subject"]
    assert "Killed" in msg.get_body(("plain",)).get_content()
