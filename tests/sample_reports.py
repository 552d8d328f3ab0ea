"""Sample chain reports for the email tests: one realistic chain, and its variants."""

from __future__ import annotations

from typing import Any

from trainchain.core.config import Goal
from trainchain.core.promotion import decide, heldout_test
from trainchain.core.report import ChainReport, TrialSummary
from trainchain.core.verdict import Confirmation, Estimate, confirm


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


SEARCH_FOLDS = (0.80, 0.90, 0.85, 0.80, 0.85)


def _confirmation(confirmed: bool) -> Confirmation:
    folds = (0.90, 0.85, 0.95, 0.90, 0.90) * 4 if confirmed else (0.95, 0.6, 0.9, 0.65, 0.8) * 4
    estimate = Estimate(sum(folds) / len(folds), folds, "fresh0001")
    return confirm(
        Goal(metric="accuracy", threshold=0.8),
        3,
        estimate,
        search_folds_ids=["search01"],
        folds_per_repeat=5,
        alpha=0.025,
        run_id="confirm3",
    )


def _with_folds(trials: tuple[TrialSummary, ...]) -> tuple[TrialSummary, ...]:
    return tuple(
        TrialSummary(**{**t.__dict__, "folds": SEARCH_FOLDS}) if t.number == 3 else t
        for t in trials
    )


def confirmed(**changes: Any) -> ChainReport:
    """A chain of today: its goal confirmed on fresh folds, promoted over a champion by the
    held-out tests."""
    base = report()
    labels = ["left", "right"] * 12
    candidate = [True] * 21 + [False] * 3
    champion = [True] * 14 + [False] * 7 + [True, False, False]
    test = heldout_test(
        labels, candidate, champion=champion, champion_version="2", margin=0.0, alpha=0.05
    )
    values: dict[str, Any] = {
        "trials": _with_folds(base.trials),
        "verdict": "confirmed",
        "confirmations": (_confirmation(True),),
        "best_test_value": 21 / 24,
        "best_test_n": 24,
        "best_test_interval": test.interval,
        "promotion_test": test,
        "promotion_reason": decide(confirmed=True, test=test).reason,
        "warm_start": "12 finished trials of 2 earlier studies of eeg-motor-imagery "
        "(commits 1a2b3c4d5e6f, 7a8b9c0d1e2f)",
    }
    values.update(changes)
    return base.with_(**values)


def search_only(**changes: Any) -> ChainReport:
    """The goal reached on the search's validation, not confirmed on fresh folds."""
    values: dict[str, Any] = {
        "threshold": 0.8,
        "trials": _with_folds(report().trials),
        "verdict": "search_only",
        "confirmations": (_confirmation(False),),
        "best_test_n": 24,
        "best_test_interval": (0.63, 0.95),
    }
    values.update(changes)
    return not_reached(**values)
