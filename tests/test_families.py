"""The families layer: the base contract (families/base.py), the hyperparameter checks and
validation plan the families share, and the scikit-learn family (families/sklearn.py) on
real CSV files. The contract suite over every family is tests/test_family_contract.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainchain.cli.main import main
from trainchain.core.config import Family
from trainchain.core.errors import TrainchainError
from trainchain.families import sklearn as tabular
from trainchain.families.base import FAMILY_MODULES, FamilyDataError, FamilySpec, family_spec
from trainchain.families.eeg import EEGDataError
from trainchain.families.eeg import fold_assignment as eeg_folds


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path.parent


# --- the base contract ---------------------------------------------------------------------


def test_importing_base_imports_no_ml_library() -> None:
    """families.base lists the family modules without importing them or mne, scikit-learn,
    TensorFlow or Keras."""
    code = (
        "import sys, trainchain.families.base as b; "
        "print(sorted(m for m in ('mne', 'sklearn', 'tensorflow', 'keras', "
        "'trainchain.families.eeg', 'trainchain.families.cnn', 'trainchain.families.sklearn') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_family_has_a_module() -> None:
    """FAMILY_MODULES names a module for each Family, and each declares that family's spec."""
    assert set(FAMILY_MODULES) == set(Family)
    assert {family_spec(f.value).family for f in Family} == set(Family)


def test_the_monitored_families_declare_their_drift_statistics() -> None:
    """EEG and image models are monitored for drift: their specs name the family's own
    drift monitor; the tabular family declares none yet (trainchain drift says so)."""
    from trainchain.families import cnn, eeg

    assert family_spec("eeg").drift_monitor is eeg.drift_monitor
    assert family_spec("cnn").drift_monitor is cnn.drift_monitor
    assert family_spec("sklearn").drift_monitor is None


def test_the_serving_summary_is_the_cheap_part_of_the_drift_summary() -> None:
    """What `trainchain serve` computes per request: for EEG the reference's groups but the
    CSP features (which need the model's band-pass filter), the same numbers as the full
    summary; for images every group, the confidence from the probabilities given."""
    import numpy as np

    from trainchain.families import cnn, eeg

    assert family_spec("eeg").serving_summary is eeg.serving_summary
    assert family_spec("cnn").serving_summary is cnn.serving_summary
    assert family_spec("sklearn").serving_summary is None
    epochs = np.random.default_rng(0).normal(size=(3, 22, 750))
    served = eeg.serving_summary(epochs, None)
    assert set(served) == {"mu", "beta", "log_var"}
    for group, values in eeg.summarise(epochs).items():
        np.testing.assert_array_equal(served[group], values)
    images = np.random.default_rng(1).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    probabilities = np.array([[0.2, 0.8], [0.6, 0.4]])
    image_summary = cnn.serving_summary(images, probabilities)
    assert set(image_summary) == {"image", "colour", "confidence"}
    assert image_summary["confidence"][:, 0].tolist() == [0.8, 0.6]


def test_an_unknown_family_is_a_clear_error() -> None:
    """family_spec of a name that is no Family says which names there are."""
    with pytest.raises(FamilyDataError, match=r"unknown model family 'xgboost': expected one of"):
        family_spec("xgboost")


def test_pip_requirements_pin_what_is_installed_and_skip_the_rest() -> None:
    """A spec's pip requirements are name==version of this environment's distributions; one
    that is not installed is left out, not guessed."""
    spec = FamilySpec(Family.SKLEARN, "rows", "sklearn", ("numpy", "surely-not-installed-dist-xyz"))
    assert spec.pip_requirements() == [f"numpy=={np.__version__}"]
    with pytest.raises(ValueError, match="at least one requirement"):
        FamilySpec(Family.SKLEARN, "rows", "sklearn", ())


def test_family_errors_are_trainchain_errors() -> None:
    """Each family's error class is a FamilyDataError, so the CLI shows it as one clear line."""
    from trainchain.families.cnn import ImageDataError

    for error in (EEGDataError, ImageDataError, tabular.TabularDataError):
        assert issubclass(error, FamilyDataError)
        assert issubclass(error, TrainchainError)


# --- the scikit-learn family: loading ------------------------------------------------------

GOOD = "a,b,label\n1,2,x\n3,4,y\n\n5,6.5,x\n"


def test_load_table_reads_features_and_labels(tmp_path: Path) -> None:
    """Every column but the label is a feature, in the file's order; blank lines are skipped."""
    folder = write_csv(tmp_path / "data.csv", GOOD)
    X, y, meta = tabular.load_table(folder)
    assert X.tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.5]]
    assert y.tolist() == ["x", "y", "x"]
    assert meta["features"] == ["a", "b"]
    assert meta["counts"] == {"x": 2, "y": 1}


def test_load_table_takes_the_named_features_in_their_order(tmp_path: Path) -> None:
    """data.options.features picks columns, in the order given; the label may be any column."""
    folder = write_csv(tmp_path / "t.tsv", "kind\ta\tb\tnote\nx\t1\t2\tfoo\ny\t3\t4\tbar\n")
    X, y, _ = tabular.load_table(
        folder, file="t.tsv", label="kind", features=["b", "a"], delimiter="\t"
    )
    assert X.tolist() == [[2.0, 1.0], [4.0, 3.0]]
    assert y.tolist() == ["x", "y"]


def test_a_missing_csv_says_how_to_make_one(tmp_path: Path) -> None:
    """No such file: the error names the path and the CSV files there, and says to set
    data.options.file or run `trainchain data tabular`."""
    folder = write_csv(tmp_path / "other.csv", GOOD)
    with pytest.raises(tabular.TabularDataError) as caught:
        tabular.load_table(folder, file="data.csv")
    text = str(caught.value)
    assert "no CSV file" in text and "['other.csv']" in text
    assert "data.options.file" in text and "trainchain data tabular --out" in text


def test_a_wrong_label_column_lists_the_columns(tmp_path: Path) -> None:
    """A label column the header lacks: the error lists the columns and says what to set."""
    folder = write_csv(tmp_path / "data.csv", GOOD)
    with pytest.raises(tabular.TabularDataError) as caught:
        tabular.load_table(folder, label="target")
    text = str(caught.value)
    assert "no label column 'target'; the columns are ['a', 'b', 'label']" in text
    assert "set data.options.label" in text


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("a,label\n1,x\nn/a,y\n", {}, r"line 3, column 'a': 'n/a' is not a number"),
        ("a,label\n1,x\ninf,y\n", {}, r"line 3, column 'a': 'inf' is not a number"),
        ("a,label\n1,x\n2\n", {}, r"line 3: 1 fields, the header has 2"),
        ("a,label\n1,x\n2,\n", {}, r"line 3: no label in column 'label'"),
        ("a,label\n1,x\n2,x\n", {}, r"holds 1 class\(es\) \(\['x'\]\): a classifier needs"),
        ("a,label\n", {}, r"expected a header row and at least one data row, got 1"),
        ("a,a,label\n1,2,x\n", {}, r"names column\(s\) \['a'\] more than once"),
        ("label\nx\ny\n", {}, r"no feature column beside the label column 'label'"),
        (GOOD, {"features": ["a", "c"]}, r"column\(s\) \['c'\] not in the file"),
        (GOOD, {"features": ["a", "label"]}, r"it names the label column"),
        (GOOD, {"features": "a"}, r"expected a list of column names, got 'a'"),
        (GOOD, {"delimiter": ";;"}, r"'delimiter': expected one character, got ';;'"),
        (GOOD, {"labels": "x"}, r"unknown data option\(s\) \['labels'\]: expected some of"),
    ],
)
def test_bad_tables_and_options_are_clear_errors(
    tmp_path: Path, text: str, options: dict[str, object], message: str
) -> None:
    """Each bad file or option is a TabularDataError saying what was wrong, where."""
    folder = write_csv(tmp_path / "data.csv", text)
    with pytest.raises(tabular.TabularDataError, match=message):
        tabular.load_table(folder, **options)


# --- the scikit-learn family: pipeline, validation, model --------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"depth": 3}, r"unknown hyperparameter\(s\) \['depth'\]: the scikit-learn pipeline"),
        ({"classifier": "knn"}, r"'classifier': expected one of \['logistic', 'svc', 'random"),
        ({"C": 0}, r"'C': expected a number > 0, got 0"),
        ({"classifier": "svc", "kernel": "cubic"}, r"'kernel': expected one of"),
        ({"classifier": "svc", "gamma": -1}, r"'gamma': expected a number > 0, got -1"),
        ({"classifier": "random_forest", "n_estimators": 0}, r"expected an integer >= 1, got"),
        ({"classifier": "random_forest", "max_depth": 1.5}, r"integer >= 1 or null, got 1.5"),
    ],
)
def test_bad_hyperparameters_are_clear_errors(params: dict[str, object], message: str) -> None:
    """build_pipeline names the bad hyperparameter, its value and what it expected."""
    with pytest.raises(tabular.TabularDataError, match=message):
        tabular.build_pipeline(params)


@pytest.mark.parametrize("classifier", tabular.CLASSIFIERS)
def test_every_classifier_learns_the_bundled_dataset(tmp_path: Path, classifier: str) -> None:
    """Each classifier, cross-validated on iris (written by write_dataset), is accurate; the
    fitted final pipeline predicts the class names."""
    X, y, _ = tabular.load_table(tabular.write_dataset(tmp_path, "iris").parent, file="iris.csv")
    cv = tabular.cross_validate({"classifier": classifier}, X, y, folds=3, seed=1)
    assert len(cv.scores) == 3 and cv.mean > 0.85
    pipe = tabular.fit_final({"classifier": classifier}, X, y)
    assert set(pipe.predict(X[:10]).tolist()) <= {"setosa", "versicolor", "virginica"}


def test_cross_validation_uses_the_plan_every_family_shares(tmp_path: Path) -> None:
    """The sklearn family's folds are the EEG family's for the same labels and plan (the
    same folds_id); it reports each fold and resumes after the last one a checkpoint holds."""
    from trainchain.contract.task import folds_id

    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b"], 20)
    X = rng.normal(size=(40, 3)) + (y == "b")[:, None]
    reported: list[dict[str, object]] = []
    checkpoint = tmp_path / "folds.json"
    cv = tabular.cross_validate(
        {},
        X,
        y,
        folds=4,
        repeats=2,
        seed=3,
        report=lambda **r: reported.append(r),
        checkpoint=checkpoint,
    )
    assert cv.folds_id == folds_id(val for _, val in eeg_folds(y, folds=4, repeats=2, seed=3))
    assert [r["step"] for r in reported] == list(range(8))
    assert [r["val_accuracy"] for r in reported] == list(cv.scores)
    checkpoint.write_text(json.dumps({"folds_id": cv.folds_id, "scores": [0.0] * 7}))
    resumed = tabular.cross_validate({}, X, y, folds=4, repeats=2, seed=3, checkpoint=checkpoint)
    assert resumed.scores == (*([0.0] * 7), cv.scores[7])


def test_too_many_folds_say_how_many_rows_a_class_has() -> None:
    """More folds than rows of the smallest class: the error counts rows, not epochs."""
    y = np.array(["a"] * 10 + ["b"] * 3)
    with pytest.raises(tabular.TabularDataError, match="5 folds need at least 5 rows of every"):
        tabular.cross_validate({}, np.zeros((13, 2)), y, folds=5)


def test_save_model_writes_the_sklearn_flavour_and_refuses_another(tmp_path: Path) -> None:
    """save_model replaces what was there with an MLflow sklearn model pinned to this
    environment; a family whose models are another flavour is refused."""
    import mlflow.pyfunc

    from trainchain.families.cnn import SPEC as CNN_SPEC

    X, y = np.array([[0.0], [1.0], [0.1], [0.9]]), np.array(["lo", "hi", "lo", "hi"])
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.txt").write_text("from an earlier attempt")
    tabular.save_model(tabular.fit_final({}, X, y), target)
    assert not (target / "stale.txt").exists()
    assert mlflow.pyfunc.load_model(str(target)).predict(X).tolist() == y.tolist()
    assert "scikit-learn==" in (target / "requirements.txt").read_text()
    with pytest.raises(ValueError, match="saved in the keras flavour"):
        tabular.save_model(object(), tmp_path / "other", spec=CNN_SPEC)


def test_data_tabular_command_writes_a_csv_the_family_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`trainchain data tabular` writes a bundled dataset as CSV (no download), which
    load_table reads back whole; an unknown dataset name lists the known ones."""
    assert main(["data", "tabular", "--out", str(tmp_path), "--dataset", "wine"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "wine.csv")
    X, _, meta = tabular.load_table(tmp_path, file="wine.csv")
    assert X.shape == (178, 13) and len(meta["counts"]) == 3
    assert main(["data", "tabular", "--out", str(tmp_path), "--dataset", "mnist"]) != 0
    assert "expected one of ['breast_cancer', 'iris', 'wine']" in capsys.readouterr().err
