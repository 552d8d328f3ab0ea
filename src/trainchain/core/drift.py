"""Drift: are a model's inputs still like those it was trained on?

A :class:`Reference` is made at training time from the development part: for every
feature a family declares (EEG: per-channel log band powers and log variance, the
model's CSP features; images: brightness, contrast, colour means, the output
confidence), a bounded sample of its training values, grouped into feature groups,
and the counts of the classes the model predicted there. It travels with the model
version as ``drift_reference.json`` (:data:`REFERENCE_FILE`).

A :class:`Window` keeps the summaries of the most recent inputs (bounded: the oldest
rows drop out). :func:`test` compares a window with a reference:

- every feature: the two-sample Kolmogorov-Smirnov test (distribution-free, it sees a
  shift of location, of scale or of shape; the summaries are continuous, so its
  p-values are exact or asymptotically right, unlike Anderson-Darling's in scipy,
  which are clipped to [0.001, 0.25] and useless after a correction for many tests);
- the predicted-class shares: a G-test of homogeneity of the reference's and the
  window's class counts (both are samples: a goodness-of-fit test against the
  reference's shares would ignore the reference's own noise);
- one correction over all of them (every feature of every group and the class test),
  Holm's by default: it bounds the chance of *any* false alarm in a window by alpha
  whatever the dependence between the features (band powers of neighbouring channels
  are strongly correlated), and an alarm is raised when any test rejects, so the
  family-wise error rate is exactly the false-alarm rate of a window. Benjamini-
  Hochberg (``bh``) is offered: more power when many features move at once (another
  subject), the same guarantee when nothing moved, but it assumes positive dependence.

A group's p-value is its smallest corrected p-value, its score the largest KS
statistic (0 to 1: the effect size, whatever the window size; for the classes the
total variation distance of the shares), and its moved features say which way and
how far: the median shift in reference standard deviations (robust: IQR / 1.349).

Pure: numpy and scipy, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from trainchain.core.errors import TrainchainError

__all__ = [
    "CLASSES_GROUP",
    "FORMAT",
    "MAX_ROWS",
    "REFERENCE_FILE",
    "DriftError",
    "DriftResult",
    "FeatureShift",
    "GroupReference",
    "GroupResult",
    "Reference",
    "Window",
    "adjust",
    "ks_columns",
    "test",
]

FloatArray = npt.NDArray[np.float64]

REFERENCE_FILE = "drift_reference.json"  # inside the saved model folder
FORMAT = 1  # the reference's JSON layout; from_dict refuses others
MAX_ROWS = 2000  # training rows kept per feature (a seeded subsample beyond)
MAX_GROUPS = 32
MAX_FEATURES = 1024  # per group
MAX_CLASSES = 1000
MAX_MOVED = 10  # moved features listed per group (the strongest)
MAX_WINDOW = 100_000
CLASSES_GROUP = "classes"  # the predicted-class shares, reported like a feature group
_DIGITS = 6  # significant digits kept in the JSON


class DriftError(TrainchainError, ValueError):
    """A reference, a window or a summary is not what drift testing expects."""


class Settings(Protocol):
    """What :func:`test` reads: ``monitoring:`` of trainchain.yaml (MonitoringConfig)."""

    @property
    def alpha(self) -> float: ...

    @property
    def correction(self) -> str: ...

    @property
    def min_window(self) -> int: ...


# --------------------------------------------------------------------------- reference


def _rows(group: str, values: Any) -> FloatArray:
    """A group's summary as a finite 2-D float array (rows, features)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise DriftError(
            f"summary group {group!r}: expected an array (rows, features), got shape {arr.shape}"
        )
    if arr.shape[1] > MAX_FEATURES:
        raise DriftError(
            f"summary group {group!r}: {arr.shape[1]} features, at most {MAX_FEATURES} allowed"
        )
    if not np.isfinite(arr).all():
        raise DriftError(f"summary group {group!r}: non-finite values (NaN or infinity)")
    return arr


def _robust_scale(column: FloatArray) -> float:
    """IQR / 1.349 (the SD of a normal), else the SD, else a tiny positive number."""
    q1, q3 = np.percentile(column, [25, 75])
    scale = float(q3 - q1) / 1.349
    if scale <= 0:
        scale = float(np.std(column))
    return scale if scale > 0 else 1e-12 * max(1.0, float(np.max(np.abs(column))))


@dataclass(frozen=True)
class GroupReference:
    """One feature group's training-time values: ``values[:, j]`` is feature ``j``."""

    features: tuple[str, ...]
    values: FloatArray = field(repr=False)

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.features):
            raise DriftError(
                f"a reference group of {len(self.features)} features holds values of shape "
                f"{self.values.shape}: expected (rows, {len(self.features)})"
            )
        if len(self.values) < 2:
            raise DriftError(f"a reference group needs at least 2 rows, got {len(self.values)}")

    # Derived once per reference (the service tests the same reference every few seconds).
    @cached_property
    def medians(self) -> FloatArray:
        return np.asarray(np.median(self.values, axis=0), dtype=np.float64)

    @cached_property
    def scales(self) -> FloatArray:
        return np.array([_robust_scale(self.values[:, j]) for j in range(self.values.shape[1])])

    @cached_property
    def sorted_columns(self) -> FloatArray:
        """Each feature's values in ascending order (``np.sort(values, axis=0)``)."""
        return np.sort(self.values, axis=0)


@dataclass(frozen=True)
class Reference:
    """The statistics a model version's inputs are compared with."""

    family: str
    groups: Mapping[str, GroupReference]
    classes: Mapping[str, int]  # predicted-class counts on the (subsampled) training rows
    n_rows: int  # training rows summarised, before subsampling
    input_shape: tuple[int, ...] | None = None  # one input's shape, e.g. (22, 750)

    @classmethod
    def build(
        cls,
        family: str,
        summary: Mapping[str, Any],
        *,
        names: Mapping[str, Sequence[str]] | None = None,
        predictions: Sequence[Any] | None = None,
        max_rows: int = MAX_ROWS,
        seed: int = 0,
        input_shape: Sequence[int] | None = None,
    ) -> Reference:
        """A reference from the training part's summary (``{group: (rows, features)}``)
        and the model's predictions on the same rows; at most ``max_rows`` rows are kept,
        chosen with ``seed`` (the same rows for the same data)."""
        if not summary:
            raise DriftError("a reference needs at least one feature group, got none")
        if len(summary) > MAX_GROUPS:
            raise DriftError(f"{len(summary)} feature groups: at most {MAX_GROUPS} allowed")
        if not 2 <= max_rows <= 100_000:
            raise DriftError(f"max_rows {max_rows}: expected 2 to 100000")
        arrays = {g: _rows(g, v) for g, v in summary.items()}
        n = _same_rows(arrays, predictions)
        keep = np.sort(np.random.default_rng(seed).permutation(n)[:max_rows])
        groups = {}
        for g, arr in arrays.items():
            feature_names = tuple(
                (names or {}).get(g) or [f"{g}[{j}]" for j in range(arr.shape[1])]
            )
            groups[g] = GroupReference(feature_names, _rounded(arr[keep]))
        classes: dict[str, int] = {}
        if predictions is not None:
            kept = np.asarray(predictions).astype(str)[keep]
            labels, counts = np.unique(kept, return_counts=True)
            classes = {str(k): int(c) for k, c in zip(labels, counts, strict=True)}
        shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        return cls(family=family, groups=groups, classes=classes, n_rows=n, input_shape=shape)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "family": self.family,
            "n_rows": self.n_rows,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "classes": dict(self.classes),
            "groups": {
                g: {"features": list(ref.features), "values": ref.values.T.tolist()}
                for g, ref in self.groups.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Any) -> Reference:
        """The reference ``to_dict`` wrote; anything else is a :class:`DriftError`."""
        if not isinstance(data, Mapping):
            raise DriftError(f"a drift reference is a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt != FORMAT:
            raise DriftError(
                f"drift reference format {fmt!r}: this trainchain reads format {FORMAT}",
                "retrain the model with this version of trainchain to write a new reference",
            )
        try:
            raw_groups = data["groups"]
            if not isinstance(raw_groups, Mapping) or not 1 <= len(raw_groups) <= MAX_GROUPS:
                raise DriftError(f"expected 1 to {MAX_GROUPS} feature groups")
            groups = {}
            for g, body in raw_groups.items():
                features = tuple(str(f) for f in body["features"])
                columns = np.asarray(body["values"], dtype=np.float64)
                if columns.ndim != 2 or len(columns) != len(features):
                    raise DriftError(f"group {g!r}: one column of values per feature expected")
                if columns.shape[1] > MAX_ROWS * 50 or len(features) > MAX_FEATURES:
                    raise DriftError(f"group {g!r}: too large ({columns.shape})")
                groups[str(g)] = GroupReference(features, np.ascontiguousarray(columns.T))
            classes = {str(k): int(v) for k, v in dict(data.get("classes") or {}).items()}
            if len(classes) > MAX_CLASSES or any(v < 0 for v in classes.values()):
                raise DriftError(f"expected at most {MAX_CLASSES} class counts >= 0")
            shape = data.get("input_shape")
            return cls(
                family=str(data["family"]),
                groups=groups,
                classes=classes,
                n_rows=int(data["n_rows"]),
                input_shape=None if shape is None else tuple(int(d) for d in shape),
            )
        except DriftError as err:
            raise DriftError(f"not a valid drift reference: {err}") from None
        except (KeyError, TypeError, ValueError) as err:
            raise DriftError(f"not a valid drift reference: {type(err).__name__}: {err}") from None


def _same_rows(arrays: Mapping[str, FloatArray], predictions: Sequence[Any] | None) -> int:
    sizes = {g: len(a) for g, a in arrays.items()}
    if predictions is not None:
        sizes["predictions"] = len(predictions)
    if len(set(sizes.values())) != 1:
        raise DriftError(f"the summary's groups differ in their number of rows: {sizes}")
    return next(iter(sizes.values()))


def _rounded(arr: FloatArray) -> FloatArray:
    """``_DIGITS`` significant digits: what the JSON keeps, kept alike in memory."""
    with np.errstate(divide="ignore"):
        mag = np.where(arr == 0, 0, np.floor(np.log10(np.abs(arr))))
    factor = 10.0 ** (_DIGITS - 1 - mag)
    return np.asarray(np.round(arr * factor) / factor, dtype=np.float64)


# --------------------------------------------------------------------------- window


class Window:
    """The summaries of the latest ``max_size`` inputs (rows), oldest dropped first,
    and the classes predicted for them."""

    def __init__(self, max_size: int) -> None:
        if isinstance(max_size, bool) or not 1 <= max_size <= MAX_WINDOW:
            raise DriftError(f"window size {max_size!r}: expected 1 to {MAX_WINDOW}")
        self.max_size = max_size
        self._rows: dict[str, FloatArray] = {}
        self._predictions: list[str] = []

    def __len__(self) -> int:
        return len(next(iter(self._rows.values()))) if self._rows else 0

    def add(self, summary: Mapping[str, Any], predictions: Sequence[Any] | None = None) -> None:
        """Append one batch's summary (``{group: (rows, features)}``) and, optionally, the
        classes predicted for those rows."""
        arrays = {g: _rows(g, v) for g, v in summary.items()}
        _same_rows(arrays, predictions)
        if self._rows and (
            set(arrays) != set(self._rows)
            or any(arrays[g].shape[1] != self._rows[g].shape[1] for g in arrays)
        ):
            raise DriftError(
                f"this summary's groups {_shape(arrays)} differ from the window's "
                f"{_shape(self._rows)}"
            )
        for g, arr in arrays.items():
            old = self._rows.get(g, np.empty((0, arr.shape[1])))
            self._rows[g] = np.concatenate([old, arr])[-self.max_size :]
        if predictions is not None:
            self._predictions = [*self._predictions, *(str(p) for p in predictions)][
                -self.max_size :
            ]

    def values(self, group: str) -> FloatArray:
        return self._rows[group]

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self._rows)

    @property
    def predictions(self) -> tuple[str, ...]:
        return tuple(self._predictions)

    def to_dict(self) -> dict[str, Any]:
        """The window as JSON (kept with a retrain request)."""
        return {
            "max_size": self.max_size,
            "groups": {g: arr.tolist() for g, arr in self._rows.items()},
            "predictions": list(self._predictions),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Window:
        window = cls(int(data["max_size"]))
        groups = dict(data.get("groups") or {})
        if groups:
            window.add(groups)
        window._predictions = [str(p) for p in data.get("predictions") or []][-window.max_size :]
        return window


def _shape(arrays: Mapping[str, FloatArray]) -> dict[str, int]:
    return {g: int(a.shape[1]) for g, a in arrays.items()}


# --------------------------------------------------------------------------- test


@dataclass(frozen=True)
class FeatureShift:
    """One feature (or class) that moved: how, how far, how surely."""

    feature: str
    statistic: float  # KS D (features) or the share's change (classes)
    p_value: float  # corrected
    shift: float  # median shift in reference SDs (features); share change (classes)
    reference: float  # reference median (features) or share (classes)
    window: float  # window median or share

    @property
    def direction(self) -> str:
        return "up" if self.shift > 0 else "down"

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "direction": self.direction,
            "shift": _finite(self.shift),
            "statistic": _finite(self.statistic),
            "p_value": _finite(self.p_value),
            "reference": _finite(self.reference),
            "window": _finite(self.window),
        }


@dataclass(frozen=True)
class GroupResult:
    """One feature group (or the class shares) tested."""

    group: str
    score: float | None  # largest KS D in the group; classes: total variation distance
    p_value: float | None  # smallest corrected p-value; None: not tested
    window: int
    detected: bool
    moved: tuple[FeatureShift, ...] = ()
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "score": None if self.score is None else _finite(self.score),
            "p_value": None if self.p_value is None else _finite(self.p_value),
            "window": self.window,
            "detected": self.detected,
            "moved": [m.to_dict() for m in self.moved],
            "note": self.note,
        }


@dataclass(frozen=True)
class DriftResult:
    """Every group's verdict on one window."""

    groups: tuple[GroupResult, ...]
    window: int
    min_window: int
    alpha: float
    correction: str

    @property
    def tested(self) -> bool:
        return self.window >= self.min_window

    @property
    def detected(self) -> bool:
        return any(g.detected for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "detected": self.detected,
            "tested": self.tested,
            "window": self.window,
            "min_window": self.min_window,
            "alpha": self.alpha,
            "correction": self.correction,
            "groups": [g.to_dict() for g in self.groups],
        }


def _finite(value: float) -> float:
    """JSON has no infinity: clip to a large finite number."""
    return float(np.clip(value, -1e300, 1e300)) if not math.isnan(value) else 1.0


def adjust(p_values: Sequence[float] | FloatArray, correction: str) -> FloatArray:
    """p-values corrected for testing them all: ``holm`` (family-wise error) or ``bh``
    (Benjamini-Hochberg, false discovery rate)."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return p
    if correction == "bh":
        from scipy.stats import false_discovery_control

        return np.asarray(false_discovery_control(p, method="bh"), dtype=np.float64)
    if correction != "holm":
        raise DriftError(f"correction {correction!r}: expected 'holm' or 'bh'")
    order = np.argsort(p, kind="stable")
    m = p.size
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(stepped, 1.0)
    return out


def _class_test(
    reference: Mapping[str, int], predictions: Sequence[str]
) -> tuple[float, float, list[tuple[str, float, float]]] | None:
    """G-test of homogeneity of the reference's and the window's class counts: (p, total
    variation distance, [(class, reference share, window share)]); None without both."""
    if not reference or not predictions:
        return None
    labels, counts = np.unique(np.asarray(predictions), return_counts=True)
    seen = dict(zip((str(v) for v in labels), (int(c) for c in counts), strict=True))
    classes = sorted(set(reference) | set(seen))
    table = np.array([[reference.get(c, 0) for c in classes], [seen.get(c, 0) for c in classes]])
    table = table[:, table.sum(axis=0) > 0]
    ref_share = table[0] / max(1, table[0].sum())
    win_share = table[1] / max(1, table[1].sum())
    shares = [
        (c, float(r), float(w))
        for c, r, w in zip(
            [c for c in classes if reference.get(c, 0) + seen.get(c, 0) > 0],
            ref_share,
            win_share,
            strict=True,
        )
    ]
    tvd = float(0.5 * np.abs(ref_share - win_share).sum())
    if table.shape[1] < 2 or table[0].sum() == 0:
        return 1.0, tvd, shares
    from scipy.stats import chi2_contingency

    p = float(chi2_contingency(table, correction=False, lambda_="log-likelihood").pvalue)
    return p, tvd, shares


def ks_columns(
    reference_sorted: FloatArray, window: FloatArray, alpha: float
) -> tuple[FloatArray, FloatArray]:
    """Two-sample KS tests of each column of ``window`` against the same column of
    ``reference_sorted`` (sorted ascending): (statistics, p-values).

    The statistics are scipy's ``ks_2samp``'s. The p-values that can decide a test at
    level ``alpha`` are scipy's ``method='asymp'`` ones (the exact distribution of the
    one-sample statistic at the effective size ``en = n1 n2 / (n1 + n2)``,
    ``kstwo.sf``); the others are Stephens' approximation, Kolmogorov's limit at
    ``d (sqrt(en) + 0.12 + 0.11 / sqrt(en))``. From ``en`` 25 on (both samples of 50
    or more) the approximation is within 0.96 to 1.5 times ``kstwo.sf`` below 0.3, so
    every approximated p-value is at least ``2 alpha`` and could not have been at or
    below ``alpha``; below 25 every p-value is computed. Corrected p-values are never
    below the raw ones, so no decision at ``alpha`` differs from scipy's.
    ``kstwo.sf`` is what costs (0.1 ms a feature, 2 ms at ``en`` 100, Pomeranz's
    recursion), and a quiet window has few features near ``alpha``.
    """
    from scipy.special import kolmogorov
    from scipy.stats import kstwo

    n1, k = reference_sorted.shape
    n2 = len(window)
    win_sorted = np.sort(window, axis=0)
    stats = np.empty(k)
    for j in range(k):
        # The two empirical CDFs differ most just below a window value (the reference's
        # CDF ahead) or at one (the window's ahead): 4 searches of n2 values, not 2 of
        # n1 + n2, exact with ties.
        ref_j, win_j = reference_sorted[:, j], win_sorted[:, j]
        ahead = np.searchsorted(ref_j, win_j, side="left") / n1
        ahead -= np.searchsorted(win_j, win_j, side="left") / n2
        behind = np.searchsorted(win_j, win_j, side="right") / n2
        behind -= np.searchsorted(ref_j, win_j, side="right") / n1
        stats[j] = max(float(ahead.max()), float(behind.max()), 0.0)
    en = n1 * n2 / (n1 + n2)
    sqrt_en = math.sqrt(en)
    p_values = np.clip(kolmogorov(stats * (sqrt_en + 0.12 + 0.11 / sqrt_en)), 0.0, 1.0)
    close = np.flatnonzero(p_values <= (2 * alpha if en >= 25 else 1.0))
    if close.size:
        p_values[close] = np.clip(kstwo.sf(stats[close], round(en)), 0.0, 1.0)
    return stats, p_values


def test(reference: Reference, window: Window, config: Settings) -> DriftResult:
    """Test ``window`` against ``reference`` (see the module's docstring)."""
    n = len(window)
    alpha, correction = float(config.alpha), str(config.correction)
    common = [g for g in reference.groups if g in window.groups]
    missing = [g for g in reference.groups if g not in window.groups]
    for g in common:
        ref_k, win_k = len(reference.groups[g].features), window.values(g).shape[1]
        if ref_k != win_k:
            raise DriftError(
                f"feature group {g!r}: the reference has {ref_k} features, the window {win_k}: "
                "the inputs are not shaped like the training data"
            )
    if n < config.min_window:
        note = f"collecting: {n} of the {config.min_window} rows needed before testing"
        rows = tuple(GroupResult(g, None, None, n, False, note=note) for g in common)
        return DriftResult(rows, n, config.min_window, alpha, correction)

    raw = {
        g: ks_columns(reference.groups[g].sorted_columns, window.values(g), alpha) for g in common
    }
    classes = _class_test(reference.classes, window.predictions)
    flat = [p for g in common for p in raw[g][1]] + ([classes[0]] if classes else [])
    adjusted = adjust(flat, correction)

    results: list[GroupResult] = []
    at = 0
    for g in common:
        stats, _ = raw[g]
        k = len(stats)
        adj = adjusted[at : at + k]
        at += k
        ref_group, win = reference.groups[g], window.values(g)
        medians, scales = ref_group.medians, ref_group.scales
        win_medians = np.median(win, axis=0)
        moved = [
            FeatureShift(
                feature=ref_group.features[j],
                statistic=float(stats[j]),
                p_value=float(adj[j]),
                shift=float((win_medians[j] - medians[j]) / scales[j]),
                reference=float(medians[j]),
                window=float(win_medians[j]),
            )
            for j in np.argsort(adj, kind="stable")[:MAX_MOVED]
            if adj[j] <= alpha
        ]
        p_min = float(adj.min())
        results.append(GroupResult(g, float(stats.max()), p_min, n, p_min <= alpha, tuple(moved)))
    if classes is not None:
        p_adj = float(adjusted[at])
        _, tvd, shares = classes
        moved_classes = tuple(
            FeatureShift(c, w - r, p_adj, w - r, r, w)
            for c, r, w in sorted(shares, key=lambda s: -abs(s[2] - s[1]))[:MAX_MOVED]
            if p_adj <= alpha
        )
        results.append(
            GroupResult(
                CLASSES_GROUP,
                tvd,
                p_adj,
                len(window.predictions),
                p_adj <= alpha,
                moved_classes,
            )
        )
    for g in missing:
        results.append(GroupResult(g, None, None, 0, False, note="not in the window's summary"))
    return DriftResult(tuple(results), n, config.min_window, alpha, correction)
