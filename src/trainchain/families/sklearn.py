"""The scikit-learn family: tabular data from a CSV file, a scaled classifier pipeline.

``load_table`` reads one CSV file of the data folder (a header row; numeric feature
columns and one label column, named in ``data.options``); ``build_pipeline`` makes the
scikit-learn pipeline (standard scaling, then the classifier the ``classifier``
hyperparameter names) that is registered and served: it takes rows ``(n, features)``, the
feature columns in the file's order, and predicts the string labels. ``cross_validate``
scores a trial by the validation plan every family shares
(:mod:`trainchain.families.validation`); ``fit_final`` fits the development part;
``save_model`` writes the model in MLflow's ``sklearn`` flavour. ``write_dataset`` makes a
CSV from a dataset shipped inside scikit-learn (no download), for the example.

scikit-learn is imported inside the functions; no mne: the sklearn image has none.
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from trainchain.core.config import Family
from trainchain.families import validation
from trainchain.families.base import FamilyDataError, FamilySpec
from trainchain.families.params import one_of, positive, with_defaults
from trainchain.families.validation import CrossValidation

__all__ = [
    "CLASSIFIERS",
    "DATASETS",
    "DEFAULT_PARAMS",
    "LOAD_OPTIONS",
    "SPEC",
    "TabularDataError",
    "build_pipeline",
    "cross_validate",
    "fit_final",
    "load_table",
    "save_model",
    "write_dataset",
]

# What the family's models are: fitted scikit-learn pipelines, pickled.
SPEC = FamilySpec(
    family=Family.SKLEARN,
    inputs="tabular rows: float array (n, features), the feature columns of training in order",
    flavor="sklearn",
    requirements=("scikit-learn", "numpy", "scipy", "cloudpickle"),
)

# The keyword arguments of load_table: what ``data.options`` of trainchain.yaml may hold
# (besides the split settings the training script pops itself).
LOAD_OPTIONS: tuple[str, ...] = ("file", "label", "features", "delimiter")

# Hyperparameters build_pipeline understands, with scikit-learn's defaults.
DEFAULT_PARAMS: Mapping[str, Any] = {
    "classifier": "logistic",
    "C": 1.0,  # logistic and svc: inverse regularisation strength
    "kernel": "rbf",  # svc
    "gamma": "scale",  # svc
    "n_estimators": 100,  # random_forest
    "max_depth": None,  # random_forest: None grows each tree until its leaves are pure
}
CLASSIFIERS: tuple[str, ...] = ("logistic", "svc", "random_forest")
_KERNELS = ("linear", "rbf", "poly", "sigmoid")

# Datasets shipped inside scikit-learn (sklearn.datasets.load_<name>), for write_dataset.
DATASETS: tuple[str, ...] = ("breast_cancer", "iris", "wine")
_MAX_ERRORS_SHOWN = 5

FloatArray = npt.NDArray[np.float64]
Labels = npt.NDArray[np.str_]


class TabularDataError(FamilyDataError):
    """The CSV file, data options or hyperparameters of the scikit-learn family are wrong."""


# --------------------------------------------------------------------------- loading


def _read_rows(path: Path, delimiter: str) -> tuple[list[str], list[list[str]]]:
    """The header and the data rows of a CSV file (blank lines skipped)."""
    if not path.is_file():
        folder = path.parent
        present = sorted(p.name for p in folder.glob("*.csv"))[:20] if folder.is_dir() else []
        raise TabularDataError(
            f"no CSV file {path}"
            + (f" (CSV files in {folder}: {present})" if present else f" ({folder} has none)"),
            hint="set data.options.file in trainchain.yaml to the CSV file of the data folder; "
            f"for an example dataset run `trainchain data tabular --out {folder}`",
        )
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f, delimiter=delimiter) if row]
    if len(rows) < 2:
        raise TabularDataError(
            f"{path}: expected a header row and at least one data row, got {len(rows)} row(s)"
        )
    return [name.strip() for name in rows[0]], rows[1:]


def _columns(
    path: Path, header: list[str], label: str, features: Sequence[str] | None
) -> tuple[int, list[int]]:
    """The positions of the label column and of the feature columns."""
    if len(set(header)) != len(header):
        twice = sorted({n for n in header if header.count(n) > 1})
        raise TabularDataError(f"{path}: the header names column(s) {twice} more than once")
    if label not in header:
        raise TabularDataError(
            f"{path}: no label column {label!r}; the columns are {header}",
            hint="set data.options.label in trainchain.yaml to the column that holds the labels",
        )
    if features is None:
        wanted = [n for n in header if n != label]
    elif isinstance(features, str) or not all(isinstance(n, str) for n in features):
        raise TabularDataError(
            f"data option 'features': expected a list of column names, got {features!r}"
        )
    else:
        wanted = list(features)
        missing = [n for n in wanted if n not in header]
        problem = (
            f"column(s) {missing} not in the file"
            if missing
            else "it names the label column"
            if label in wanted
            else "no column"
            if not wanted
            else ""
        )
        if problem:
            raise TabularDataError(
                f"{path}: data option 'features' {wanted}: {problem}; the columns are {header}",
                hint="fix data.options.features in trainchain.yaml, or set it to null to use "
                "every column but the label",
            )
    if not wanted:
        raise TabularDataError(f"{path}: no feature column beside the label column {label!r}")
    return header.index(label), [header.index(n) for n in wanted]


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def load_table(
    data_dir: Path | str,
    *,
    file: str = "data.csv",
    label: str = "label",
    features: Sequence[str] | None = None,
    delimiter: str = ",",
    **unknown: Any,
) -> tuple[FloatArray, Labels, dict[str, Any]]:
    """Rows ``X`` (n, features), their labels ``y`` (strings) and a description ``meta``.

    ``file`` is the CSV file in ``data_dir`` (a header row, then one row per example);
    ``label`` names the label column; ``features`` the feature columns, in the order the
    model takes them (``None``: every other column, in the file's order). Every feature
    value must be a finite number and every row must have a label.
    """
    if unknown:
        raise TabularDataError(
            f"unknown data option(s) {sorted(unknown)}: expected some of {list(LOAD_OPTIONS)} "
            "(plus test_size and split_seed, which the training script reads; the folds are "
            "validation.folds of trainchain.yaml)",
            hint="fix data.options in trainchain.yaml",
        )
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise TabularDataError(
            f"data option 'delimiter': expected one character, got {delimiter!r}"
        )
    path = Path(data_dir) / file
    header, rows = _read_rows(path, delimiter)
    label_at, feature_at = _columns(path, header, label, features)
    x = np.empty((len(rows), len(feature_at)), dtype=np.float64)
    labels: list[str] = []
    errors: list[str] = []
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            errors.append(f"line {line}: {len(row)} fields, the header has {len(header)}")
            continue
        labels.append(row[label_at].strip())
        if not labels[-1]:
            errors.append(f"line {line}: no label in column {label!r}")
        for j, at in enumerate(feature_at):
            try:
                x[len(labels) - 1, j] = _number(row[at])
            except ValueError:
                errors.append(f"line {line}, column {header[at]!r}: {row[at]!r} is not a number")
        if len(errors) > _MAX_ERRORS_SHOWN:
            break
    if errors:
        raise TabularDataError(
            f"{path}: " + "; ".join(errors[:_MAX_ERRORS_SHOWN]),
            hint="every feature column must hold finite numbers and every row a label; list "
            "the numeric columns in data.options.features",
        )
    y = np.asarray(labels, dtype=np.str_)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise TabularDataError(
            f"{path}: the label column {label!r} holds {len(classes)} class(es) "
            f"({[str(c) for c in classes]}): a classifier needs at least two",
            hint="set data.options.label to the column that holds the classes",
        )
    meta: dict[str, Any] = {
        "file": str(path),
        "label": label,
        "features": [header[at] for at in feature_at],
        "counts": {str(c): int(n) for c, n in zip(classes, counts, strict=True)},
    }
    return x, y, meta


# --------------------------------------------------------------------------- pipeline


def _count(params: Mapping[str, Any], name: str, *, optional: bool = False) -> int | None:
    value = params[name]
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        none = " or null" if optional else ""
        raise TabularDataError(
            f"hyperparameter {name!r}: expected an integer >= 1{none}, got {value!r}"
        )
    return int(value)


def _classifier(p: Mapping[str, Any]) -> Any:
    if p["classifier"] == "logistic":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=positive("C", p["C"], TabularDataError), max_iter=1000)
    if p["classifier"] == "svc":
        from sklearn.svm import SVC

        kernel = one_of("kernel", p["kernel"], _KERNELS, TabularDataError)
        gamma = p["gamma"]
        if gamma not in ("scale", "auto"):
            gamma = positive("gamma", gamma, TabularDataError)
        return SVC(C=positive("C", p["C"], TabularDataError), kernel=kernel, gamma=gamma)
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=_count(p, "n_estimators"),
        max_depth=_count(p, "max_depth", optional=True),
        random_state=0,
        n_jobs=1,
    )


def build_pipeline(params: Mapping[str, Any]) -> Any:
    """Standard scaling -> the ``classifier`` (logistic, svc or random_forest), from
    hyperparameters; missing ones take ``DEFAULT_PARAMS``, those of another classifier
    are ignored."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    p = with_defaults(
        params,
        DEFAULT_PARAMS,
        known=DEFAULT_PARAMS,
        pipeline="scikit-learn",
        error=TabularDataError,
    )
    one_of("classifier", p["classifier"], CLASSIFIERS, TabularDataError)
    return Pipeline([("scale", StandardScaler()), ("clf", _classifier(p))])


def cross_validate(
    params: Mapping[str, Any],
    X: Any,
    y: Any,
    *,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    report: Any = None,
    checkpoint: Path | None = None,
) -> CrossValidation:
    """Accuracy of each fold of the shared validation plan (stratified ``folds``-fold,
    repeated ``repeats`` times, seeded): the pipeline fitted on the fold's fit part, scored
    on its validation part. ``report`` and ``checkpoint`` are those of
    :func:`trainchain.families.validation.cross_validate`."""
    from sklearn.base import clone

    pipe = build_pipeline(params)  # bad hyperparameters fail here, before any fold
    X, y = np.asarray(X), np.asarray(y)

    def score_fold(fit_idx: Any, val_idx: Any) -> float:
        fitted = clone(pipe).fit(X[fit_idx], y[fit_idx])
        return float(np.mean(fitted.predict(X[val_idx]) == y[val_idx]))

    plan = validation.fold_assignment(
        y, folds=folds, repeats=repeats, seed=seed, unit="rows", error=TabularDataError
    )
    return validation.cross_validate(
        score_fold, plan, folds=folds, repeats=repeats, report=report, checkpoint=checkpoint
    )


def fit_final(params: Mapping[str, Any], X: Any, y: Any) -> Any:
    """The pipeline fitted on all of ``X`` (the development part)."""
    return build_pipeline(params).fit(X, y)


def save_model(model: Any, path: Path, spec: FamilySpec = SPEC) -> Path:
    """``model`` (a fitted scikit-learn estimator) in MLflow's ``sklearn`` flavour at
    ``path``, pickled with cloudpickle, with the exact versions of ``spec``'s requirements
    installed here. What was at ``path`` is replaced (a retried attempt saves afresh)."""
    import mlflow.sklearn

    if spec.flavor != "sklearn":
        raise ValueError(
            f"save_model writes MLflow's sklearn flavour; the {spec.family} family's models "
            f"are saved in the {spec.flavor} flavour"
        )
    shutil.rmtree(path, ignore_errors=True)
    mlflow.sklearn.save_model(
        model,
        str(path),
        serialization_format="cloudpickle",
        pip_requirements=spec.pip_requirements(),
    )
    return Path(path)


# --------------------------------------------------------------------------- example data


def write_dataset(out: Path | str, dataset: str = "breast_cancer") -> Path:
    """A dataset shipped inside scikit-learn as ``<out>/<dataset>.csv``: its feature
    columns, then the class names in column ``label``. No download."""
    from sklearn import datasets

    if dataset not in DATASETS:
        raise TabularDataError(f"dataset {dataset!r}: expected one of {list(DATASETS)}")
    bunch = getattr(datasets, f"load_{dataset}")()
    target = Path(out) / f"{dataset}.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    names = [str(n) for n in bunch.target_names]
    with target.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*(str(n) for n in bunch.feature_names), "label"])
        for row, code in zip(bunch.data, bunch.target, strict=True):
            writer.writerow([*(repr(float(v)) for v in row), names[int(code)]])
    return target
