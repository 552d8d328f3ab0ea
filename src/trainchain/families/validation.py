"""The validation plan every scikit-learn-shaped family scores its trials by.

Stratified ``folds``-fold cross-validation, repeated ``repeats`` times, seeded by the plan
trainchain gives every trial of a study (``TRAINCHAIN_VALIDATION``): the same folds for
every trial, whatever its hyperparameters. :func:`cross_validate` runs a family's
``score_fold(fit_idx, val_idx)`` over those folds, reports after each fold and keeps the
scores so far in a checkpoint, so a restarted attempt resumes after its last finished
fold. The EEG family (``eeg.cross_validate``) and the scikit-learn family
(``sklearn.cross_validate``) both run on it.

Imports numpy and scikit-learn, not mne: the sklearn training image has no mne.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from trainchain.contract import task
from trainchain.families.base import FamilyDataError

__all__ = ["CrossValidation", "cross_validate", "fold_assignment"]

Folds = list[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]]


@dataclass(frozen=True)
class CrossValidation:
    """The scores of one cross-validation: each fold's accuracy, repeat after repeat, and
    the digest of the fold assignment (the same digest means the same folds)."""

    scores: tuple[float, ...]
    folds_id: str
    folds: int
    repeats: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    def metrics(self, metric: str = "accuracy") -> dict[str, Any]:
        """The contract's keys for ``metrics.json``: ``val_<metric>`` (the mean),
        ``val_<metric>_folds`` and ``val_folds_id``."""
        return {
            f"val_{metric}": self.mean,
            f"val_{metric}{task.FOLDS_SUFFIX}": list(self.scores),
            task.FOLDS_ID_KEY: self.folds_id,
        }


def fold_assignment(
    y: Any,
    *,
    folds: int,
    repeats: int = 1,
    seed: int = 0,
    unit: str = "examples",
    more: str = "add examples",
    error: type[FamilyDataError] = FamilyDataError,
) -> Folds:
    """``(fit, validate)`` index pairs of stratified ``folds``-fold cross-validation,
    repeated ``repeats`` times on new assignments; the same for the same labels and seed.

    ``unit`` names one example in the messages (``"epochs"``), ``more`` says how to get
    more of them, and ``error`` is the family's own error class."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    for name, value, low in (("folds", folds, 2), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise error(f"validation {name}: expected an integer >= {low}, got {value!r}")
    labels = np.asarray(y)
    smallest = int(min(np.unique(labels, return_counts=True)[1])) if labels.size else 0
    if folds > smallest:
        raise error(
            f"validation folds: {folds} folds need at least {folds} {unit} of every class; the "
            f"smallest class has {smallest}",
            hint=f"lower validation.folds in trainchain.yaml, or {more}",
        )
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    return list(cv.split(np.zeros(len(labels)), labels))


def cross_validate(
    score_fold: Callable[[Any, Any], float],
    plan: Folds,
    *,
    folds: int,
    repeats: int,
    report: Any = None,
    checkpoint: Path | None = None,
) -> CrossValidation:
    """``score_fold(fit_idx, val_idx)`` (a fold's accuracy) over every fold of ``plan``
    (from :func:`fold_assignment`, ``folds`` x ``repeats`` of them).

    ``report(step=i, val_accuracy=score)`` is called after fold ``i`` (the step is the
    fold's index, the same fold in every trial with the same plan: what a fold pruner
    compares). With ``checkpoint`` (a JSON file) the scores so far are kept after each
    fold, and a run started again on the same folds resumes after the last finished one.
    """
    digest = task.folds_id(val for _, val in plan)
    scores = _resumed(checkpoint, digest)
    for index, (fit_idx, val_idx) in enumerate(plan):
        if index < len(scores):
            continue  # finished by an earlier attempt
        scores.append(float(score_fold(fit_idx, val_idx)))
        if checkpoint is not None:
            state = {"folds_id": digest, "scores": scores}
            task.atomic_write_bytes(checkpoint, json.dumps(state).encode("utf-8"))
        if report is not None:
            report(step=index, val_accuracy=scores[-1])
    return CrossValidation(tuple(scores), digest, folds, repeats)


def _resumed(checkpoint: Path | None, digest: str) -> list[float]:
    """The scores an earlier attempt finished on the same folds (none on other folds)."""
    if checkpoint is None or not checkpoint.exists():
        return []
    state = json.loads(checkpoint.read_text(encoding="utf-8"))
    if state.get("folds_id") != digest:
        return []
    scores: Iterable[Any] = state["scores"]
    return [float(v) for v in scores]
