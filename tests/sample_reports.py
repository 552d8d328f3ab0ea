"""Sample chain reports for the email tests: one realistic chain, and its variants."""

from __future__ import annotations

from typing import Any

from trainchain.report import ChainReport, TrialSummary


def report(**changes: Any) -> ChainReport:
    base = ChainReport(
        chain_id="eeg-motor-imagery-20250101T120000Z-1a2b3c",
        model_name="eeg-motor-imagery",
        repository="https://git.example.org/lab/eeg-motor-imagery.git",
        commit="9f1c2e3d4b5a69788796a5b4c3d2e1f0a9b8c7d6",
        goal_metric="val_accuracy",
        threshold=0.8,
        direction="maximize",
        status="succeeded",
        max_trials=10,
        trials=(
            TrialSummary(0, "COMPLETE", 0.71, {"C": 1.0}, 0.70, "run0", 31.0),
            TrialSummary(1, "FAIL", None, {"C": 100.0}),
            TrialSummary(2, "PRUNED", 0.55, {"C": 0.01}),
            TrialSummary(3, "COMPLETE", 0.84, {"C": 3.5, "kernel": "rbf"}, 0.82, "run3", 29.5),
        ),
        best_trial=3,
        best_value=0.84,
        best_test_value=0.82,
        best_params={"C": 3.5, "kernel": "rbf"},
        best_run_id="run3",
        registry_version="3",
        became_champion=True,
        promotion_reason="test_accuracy 0.82 beats champion v2 (0.79) by more than 0.01",
        model_uri="models:/eeg-motor-imagery/3",
        tracking_uri="sqlite:////root/.trainchain/mlflow.db",
        parent_run_id="parent7",
        jenkins_build_url="http://jenkins.example.org/job/trainchain-notify/17/",
        elapsed_s=754.0,
    )
    return base.with_(**changes)


def not_reached(**changes: Any) -> ChainReport:
    values: dict[str, Any] = {
        "status": "goal_not_reached",
        "threshold": 0.999,
        "max_trials": 4,
        "registry_version": None,
        "became_champion": False,
        "promotion_reason": "",
        "model_uri": None,
        "log_tail": "\n".join(f"trial 3 epoch {i}: val_accuracy=0.{70 + i}" for i in range(15)),
    }
    values.update(changes)
    return report(**values)


def failed(**changes: Any) -> ChainReport:
    values: dict[str, Any] = {
        "status": "failed",
        "error": "TrainingError: trial 4 exited with status 137 (killed: out of memory)\n"
        "  hint: lower batch_size",
        "became_champion": False,
        "registry_version": None,
        "log_tail": "loading data\nepoch 1\nKilled",
    }
    values.update(changes)
    return report(**values)
