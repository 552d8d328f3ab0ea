"""Register the chain's best model and decide, on held-out data, whether it becomes champion."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from trainchain import task
from trainchain.config import Direction, Goal, base_metric
from trainchain.promotion import decide
from trainchain.report import ChainReport
from trainchain.tracking import CHALLENGER, CHAMPION, Tracker
from trainchain.training import HELDOUT_TAG

log = logging.getLogger(__name__)


def _goal(report: ChainReport) -> Goal:
    return Goal(
        metric=report.goal_metric,
        threshold=report.threshold,
        direction=Direction(report.direction),
    )


def score(model: Any, x: Any, y: Any, metric: str) -> float:
    """Score a loaded pyfunc model on held-out arrays with the goal's metric."""
    import numpy as np
    from sklearn import metrics as skm

    pred = np.asarray(model.predict(x))
    if pred.ndim > 1 and pred.shape[-1] > 1:  # probabilities: take the class index
        pred = pred.argmax(axis=-1)
    pred = pred.reshape(-1)
    y = np.asarray(y).reshape(-1)
    scorers = {
        "accuracy": skm.accuracy_score,
        "balanced_accuracy": skm.balanced_accuracy_score,
        "f1_macro": lambda a, b: skm.f1_score(a, b, average="macro"),
        "f1": lambda a, b: skm.f1_score(a, b, average="macro"),
    }
    if metric not in scorers:
        raise ValueError(
            f"cannot score held-out data with metric {metric!r}: expected one of "
            f"{', '.join(sorted(scorers))}"
        )
    if len(pred) != len(y):
        raise ValueError(f"the model returned {len(pred)} predictions for {len(y)} examples")
    return float(scorers[metric](y, pred))


def download_heldout(tracker: Tracker, run_id: str, dst: Path) -> Path:
    """The held-out arrays a run was scored on: shared by its chain, or its own."""
    _, _, tags = tracker.run_data(run_id)
    shared = tags.get(HELDOUT_TAG)
    if shared and ":" in shared:
        owner, path = shared.split(":", 1)
        return tracker.download(owner, path, dst)
    return tracker.download(run_id, task.HELDOUT_FILE, dst)


def _compare_on_heldout(
    tracker: Tracker, name: str, candidate_run: str, champion_version: str, metric: str
) -> tuple[float, float]:
    import numpy as np

    champion_run = tracker.version_run_id(name, champion_version)
    if champion_run is None:
        raise ValueError(f"champion v{champion_version} has no run to load its model from")
    with tempfile.TemporaryDirectory(prefix="trainchain-promote-") as tmp:
        work = Path(tmp)
        heldout = download_heldout(tracker, candidate_run, work / "heldout")
        with np.load(heldout, allow_pickle=False) as data:
            x, y = data["X"], data["y"]
        candidate = score(tracker.load_model(candidate_run, work), x, y, metric)
        champion = score(tracker.load_model(champion_run, work), x, y, metric)
    return candidate, champion


def promote(report: ChainReport, tracker: Tracker) -> ChainReport:
    """Register the best model as ``challenger``; make it ``champion`` if it earns it."""
    name = report.model_name
    if report.registry_version is not None:
        log.info("chain %s already registered v%s", report.chain_id, report.registry_version)
        return report
    goal = _goal(report)
    if report.best_run_id is None or not goal.reached(report.best_value):
        decision = decide(
            goal=goal,
            margin=report.promotion_margin,
            goal_value=report.best_value,
            candidate_heldout=None,
            champion_version=None,
            champion_heldout=None,
        )
        reason = decision.reason + "; nothing registered, the best trial stays in MLflow"
        return report.with_(became_champion=False, promotion_reason=reason)

    if not tracker.has_model(report.best_run_id):
        return report.with_(
            became_champion=False,
            promotion_reason=f"not promoted: the best trial (run {report.best_run_id}) saved no "
            "model in an MLflow flavor's format under TRAINCHAIN_OUTPUT_DIR/model",
        )
    _, metrics, run_tags = tracker.run_data(report.best_run_id)
    tags = {k: v for k, v in run_tags.items() if k.startswith("trainchain.")}
    tags["trainchain.chain"] = report.chain_id
    for k in (report.goal_metric, goal.test_metric):
        if k in metrics:
            tags[f"metric.{k}"] = f"{metrics[k]:.6g}"
    version = tracker.register(name, report.best_run_id, tags)
    tracker.set_alias(name, CHALLENGER, version)
    champion = tracker.alias_version(name, CHAMPION)
    metric = base_metric(report.goal_metric)
    cand = champ = None
    error = None
    if champion is not None:
        try:
            cand, champ = _compare_on_heldout(tracker, name, report.best_run_id, champion, metric)
        except ImportError as err:
            error = (
                f"this host cannot load the models ({type(err).__name__}: {err}); for Keras "
                "models install TensorFlow here: scripts/setup.sh --tensorflow"
            )
            log.error("could not compare v%s with champion v%s: %s", version, champion, error)
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
            log.error("could not compare v%s with champion v%s: %s", version, champion, error)
    decision = decide(
        goal=goal,
        margin=report.promotion_margin,
        goal_value=report.best_value,
        candidate_heldout=cand,
        champion_version=champion,
        champion_heldout=champ,
        error=error,
        heldout_metric=metric,
    )
    if decision.promote:
        tracker.make_champion(name, version)
    tracker.client.set_model_version_tag(name, version, "trainchain.promotion", decision.reason)
    return report.with_(
        registry_version=version,
        became_champion=decision.promote,
        promotion_reason=decision.reason,
        model_uri=f"models:/{name}/{version}",
    )
