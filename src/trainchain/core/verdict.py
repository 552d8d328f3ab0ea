"""Honest verdicts, as plain functions: a score with its spread, and the confirmed goal.

A study picks the best of many noisy scores, so its best score is optimistic. The goal
is *confirmed* only by an evaluation the search did not select on: the best trial's
hyperparameters cross-validated again on fresh fold assignments (another seed, more
repeats; ``confirmation.method: refit``), or the best trial's own accuracy on the held-out
test set, which no trial's score used (``heldout``), and the one-sided lower bound of that
score clearing the threshold:

- several fold scores: the corrected repeated k-fold cross-validation t bound (Nadeau
  and Bengio 2003; Bouckaert and Frank 2004): ``mean - t(1 - alpha, J - 1) *
  sqrt((1/J + 1/(k - 1)) * s^2)`` for ``J`` fold scores of ``k``-fold cross-validation
  with sample variance ``s^2``; the ``1/(k - 1)`` term accounts for the folds sharing
  their training examples, which plain ``s^2 / J`` ignores;
- one score of a split of known size on an accuracy-like metric: the exact
  (Clopper-Pearson) binomial bound.

Pure logic: scipy's distributions only, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from trainchain.contract import task
from trainchain.core.config import Direction, Goal, base_metric

__all__ = [
    "ACCURACY_LIKE",
    "Confirmation",
    "Estimate",
    "Verdict",
    "binomial_interval",
    "confirm",
    "lower_bound",
    "read_estimate",
]

# metrics that are a share of examples scored right: a binomial bound applies
ACCURACY_LIKE = frozenset({"accuracy"})
FOLD_SIZES_KEY = "val_fold_sizes"
_MEAN_TOLERANCE = 1e-6

Verdict = Literal["confirmed", "search_only", "not_reached", "failed"]


@dataclass(frozen=True)
class Estimate:
    """A validation score and what it is made of: its folds (repeat after repeat), the
    digest of their assignment, and, when the script says so, each fold's size."""

    value: float
    folds: tuple[float, ...] = ()
    folds_id: str | None = None
    sizes: tuple[int, ...] = ()

    @property
    def n(self) -> int:
        return len(self.folds)

    @property
    def spread(self) -> float | None:
        """The sample standard deviation of the fold scores (None below two folds)."""
        if len(self.folds) < 2:
            return None
        mean = sum(self.folds) / len(self.folds)
        return math.sqrt(sum((v - mean) ** 2 for v in self.folds) / (len(self.folds) - 1))

    def describe(self, digits: int = 3) -> str:
        """``0.853 +- 0.052 (sd of 5 folds)``; ``0.853 (1 split of 400)``; ``0.853 (no folds
        reported)``."""
        value = f"{self.value:.{digits}f}"
        if self.spread is not None:
            return f"{value} +- {self.spread:.{digits}f} (sd of {self.n} folds)"
        if self.n == 1 and self.sizes:
            return f"{value} (1 split of {self.sizes[0]})"
        if self.n == 1:
            return f"{value} (1 split)"
        return f"{value} (no per-fold scores reported: spread unknown)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "folds": list(self.folds),
            "folds_id": self.folds_id,
            "sizes": list(self.sizes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Estimate:
        return cls(
            value=float(data["value"]),
            folds=tuple(float(v) for v in data.get("folds", ())),
            folds_id=data.get("folds_id"),
            sizes=tuple(int(v) for v in data.get("sizes", ())),
        )


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_estimate(raw: Mapping[str, Any], val_metric: str) -> tuple[Estimate | None, str | None]:
    """The estimate in a script's ``metrics.json`` (parsed), or ``(None, why)`` when the
    per-fold scores it gives are malformed or do not average to ``val_metric``.

    No per-fold scores at all is not an error: the estimate has no folds, and the report
    says that its spread is unknown (and the goal cannot be confirmed).
    """
    raw_value: Any = raw.get(val_metric)
    if not _finite_number(raw_value):
        return None, f"{task.METRICS_FILE} has no finite {val_metric!r}"
    value = float(raw_value)
    key = val_metric + task.FOLDS_SUFFIX
    folds_raw = raw.get(key)
    folds_id = raw.get(task.FOLDS_ID_KEY)
    if folds_id is not None and not isinstance(folds_id, str):
        return None, f"{task.FOLDS_ID_KEY} must be a string (task.folds_id), got {folds_id!r}"
    if folds_raw is None:
        return Estimate(value, folds_id=folds_id), None
    if (
        not isinstance(folds_raw, list)
        or not folds_raw
        or not all(_finite_number(v) for v in folds_raw)
    ):
        return None, f"{key} must be a non-empty list of finite numbers, got {folds_raw!r}"
    folds = tuple(float(v) for v in folds_raw)
    mean = sum(folds) / len(folds)
    if abs(mean - value) > _MEAN_TOLERANCE:
        return None, (
            f"{val_metric} {value!r} is not the mean of {key} ({mean!r} over {len(folds)} "
            f"folds): {val_metric} must be the mean of the per-fold scores"
        )
    sizes_raw = raw.get(FOLD_SIZES_KEY, [])
    sizes: tuple[int, ...] = ()
    if (
        isinstance(sizes_raw, list)
        and len(sizes_raw) == len(folds)
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes_raw)
    ):
        sizes = tuple(sizes_raw)
    return Estimate(value, folds, folds_id, sizes), None


def _t_quantile(level: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(level, df))


def binomial_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of a share ``successes / n``."""
    from scipy import stats

    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"expected 0 <= successes <= n and n > 0, got {successes} of {n}")
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def lower_bound(
    estimate: Estimate,
    *,
    folds_per_repeat: int,
    alpha: float,
    direction: Direction = Direction.MAXIMIZE,
    metric: str = "accuracy",
) -> float | None:
    """The one-sided ``1 - alpha`` bound of the score on the side of the goal (a lower
    bound when maximizing, an upper bound when minimizing), or None when the estimate
    carries too little to bound it (one fold of unknown size, or no folds)."""
    sign = 1.0 if direction is Direction.MAXIMIZE else -1.0
    if estimate.n >= 2 and folds_per_repeat >= 2:
        spread = estimate.spread or 0.0
        se = math.sqrt((1 / estimate.n + 1 / (folds_per_repeat - 1)) * spread**2)
        return estimate.value - sign * _t_quantile(1 - alpha, estimate.n - 1) * se
    if estimate.n == 1 and estimate.sizes and base_metric(metric) in ACCURACY_LIKE:
        n = estimate.sizes[0]
        successes = round(estimate.folds[0] * n)
        # the one-sided 1 - alpha bound is one end of the two-sided 1 - 2 alpha interval
        low, high = binomial_interval(successes, n, 1 - 2 * alpha)
        return low if direction is Direction.MAXIMIZE else high
    return None


@dataclass(frozen=True)
class Confirmation:
    """The confirmation of one candidate: its fresh-fold score, the bound, the rule."""

    trial: int
    estimate: Estimate
    bound: float | None
    alpha: float  # the one-sided level this confirmation was held to
    confirmed: bool
    reason: str
    run_id: str | None = None
    method: str = "refit"  # confirmation.method: refit (fresh folds) or heldout

    @property
    def where(self) -> str:
        """What the confirmation was scored on, for a sentence: ``on fresh folds``."""
        return "on the held-out test set" if self.method == "heldout" else "on fresh folds"

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "estimate": self.estimate.to_dict(),
            "bound": self.bound,
            "alpha": self.alpha,
            "confirmed": self.confirmed,
            "reason": self.reason,
            "run_id": self.run_id,
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Confirmation:
        return cls(
            trial=int(data["trial"]),
            estimate=Estimate.from_dict(data["estimate"]),
            bound=None if data.get("bound") is None else float(data["bound"]),
            alpha=float(data["alpha"]),
            confirmed=bool(data["confirmed"]),
            reason=str(data.get("reason", "")),
            run_id=data.get("run_id"),
            method=str(data.get("method", "refit")),
        )


def confirm(
    goal: Goal,
    trial: int,
    estimate: Estimate,
    *,
    search_folds_ids: Sequence[str | None],
    folds_per_repeat: int,
    alpha: float,
    run_id: str | None = None,
) -> Confirmation:
    """Does the candidate ``trial``'s fresh-fold ``estimate`` confirm the goal?

    Confirmed when the estimate was scored on folds no trial of the search was scored on
    and its one-sided ``1 - alpha`` bound meets the threshold. ``alpha`` is this
    confirmation's share of the chain's level (the chain's alpha over the number of
    candidates it may confirm: Bonferroni)."""
    op = ">=" if goal.direction is Direction.MAXIMIZE else "<="
    side = "lower" if goal.direction is Direction.MAXIMIZE else "upper"
    level = f"{100 * (1 - alpha):.4g}%"

    def result(confirmed: bool, bound: float | None, reason: str) -> Confirmation:
        return Confirmation(trial, estimate, bound, alpha, confirmed, reason, run_id)

    if estimate.folds_id is not None and estimate.folds_id in set(search_folds_ids):
        return result(
            False,
            None,
            "not confirmed: the confirmation was scored on the search's own folds (val_folds_id "
            f"{estimate.folds_id}): the script does not follow TRAINCHAIN_VALIDATION "
            "(task.validation()), so no fresh folds could be used",
        )
    if not estimate.folds:
        return result(
            False,
            None,
            "not confirmed: the script reports no per-fold scores "
            f"({goal.val_metric}{task.FOLDS_SUFFIX}), "
            "so the score's uncertainty is unknown",
        )
    bound = lower_bound(
        estimate,
        folds_per_repeat=folds_per_repeat,
        alpha=alpha,
        direction=goal.direction,
        metric=goal.metric,
    )
    if bound is None:
        return result(
            False,
            None,
            "not confirmed: one score without its number of examples has no spread: report "
            "several folds "
            f"({goal.val_metric}{task.FOLDS_SUFFIX}) or the split's size ({FOLD_SIZES_KEY})",
        )
    figure = f"{side} {level} bound {bound:.4f} {op if goal.reached(bound) else 'misses'} "
    figure += f"{goal.threshold}"
    what = f"{estimate.describe(4)} on fresh folds; {figure}"
    if goal.reached(bound):
        return result(True, bound, f"confirmed: {what}")
    return result(False, bound, f"not confirmed: {what}")


def confirm_on_heldout(
    goal: Goal,
    trial: int,
    value: float | None,
    n: int | None,
    *,
    alpha: float,
    searched: Estimate,
    run_id: str | None = None,
) -> Confirmation:
    """Does the candidate ``trial``'s accuracy on the held-out test set (``value`` of
    ``n`` examples, which the search never scored a trial on) confirm the goal? Confirmed
    when its exact one-sided ``1 - alpha`` binomial bound meets the threshold. Without a
    held-out figure the result is not confirmed and carries the search's estimate."""
    op = ">=" if goal.direction is Direction.MAXIMIZE else "<="
    side = "lower" if goal.direction is Direction.MAXIMIZE else "upper"
    level = f"{100 * (1 - alpha):.4g}%"
    if value is None or not n:
        return Confirmation(
            trial,
            searched,
            None,
            alpha,
            False,
            "not confirmed: the trial reported no held-out test "
            f"({goal.test_metric} and n_test) to confirm on",
            run_id,
            method="heldout",
        )
    estimate = Estimate(value, (value,), sizes=(n,))
    correct = round(value * n)
    # the one-sided 1 - alpha bound is one end of the two-sided 1 - 2 alpha interval
    low, high = binomial_interval(correct, n, 1 - 2 * alpha)
    bound = low if goal.direction is Direction.MAXIMIZE else high
    figure = f"{side} {level} bound {bound:.4f} {op if goal.reached(bound) else 'misses'} "
    figure += f"{goal.threshold}"
    what = f"held-out {value:.4f} ({correct}/{n}), never used by the search; {figure}"
    confirmed = goal.reached(bound)
    return Confirmation(
        trial,
        estimate,
        bound,
        alpha,
        confirmed,
        f"{'' if confirmed else 'not '}confirmed: {what}",
        run_id,
        method="heldout",
    )
