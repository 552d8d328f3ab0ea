"""The model-family contract, one suite run over every family (as scikit-learn's estimator
checks run over every estimator): each family of :class:`trainchain.core.config.Family` has one
detection rule naming its training image, a Dockerfile under images/ for that image, a family
module declaring its :class:`~trainchain.families.base.FamilySpec`, and examples in examples/
that detection assigns to it; each example declares a search space whose defaults its family's
model code understands, and its train script, run through the local executor on a tiny
dataset, honours the training contract.

The tiny datasets: synthetic EEG (trainchain.families.eeg_synth) for eeg, scikit-learn's
digits as PNGs for cnn (marked ``tensorflow`` and ``slow`` like the other tests that load
Keras), scikit-learn's iris as a CSV (trainchain.families.sklearn.write_dataset) for sklearn.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from trainchain.chain.training import read_report
from trainchain.core.config import Family, ModelConfig, load_config
from trainchain.core.detect import DEFAULT_RULES, detect, image_family
from trainchain.executors import AttemptSpec, LocalExecutor
from trainchain.families.base import family_spec

EXAMPLES = REPO_ROOT / "examples"


@dataclass(frozen=True)
class FamilyCase:
    """One family and the examples it is checked on."""

    family: Family
    examples: tuple[str, ...]  # folders of examples/
    understands: Callable[[ModelConfig], object] | None = None  # the family takes its defaults


def _eeg_understands(model: ModelConfig) -> object:
    from trainchain.families.eeg import build_pipeline

    return build_pipeline(model.defaults(), float(model.data.options.get("sfreq", 250.0)))


def _sklearn_understands(model: ModelConfig) -> object:
    from trainchain.families.sklearn import build_pipeline

    return build_pipeline(model.defaults())


CASES = (
    FamilyCase(Family.EEG, examples=("eeg-motor-imagery",), understands=_eeg_understands),
    FamilyCase(Family.CNN, examples=("cats-vs-dogs-cnn", "emotion-cnn")),
    FamilyCase(Family.SKLEARN, examples=("tabular-sklearn",), understands=_sklearn_understands),
)
assert {c.family for c in CASES} == set(Family), "every family needs a case in this suite"


def _ids(case: FamilyCase) -> str:
    return case.family.value


def _rule(family: Family) -> Any:
    (rule,) = [r for r in DEFAULT_RULES if r.family == family.value]
    return rule


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_declares_one_training_image_built_from_images(case: FamilyCase) -> None:
    """The family has exactly one detection rule; its image is a pinned
    trainchain/train-<dir> built from images/Dockerfile with FAMILY=<dir>, whose pinned
    requirements are images/<dir>/requirements.txt."""
    rule = _rule(case.family)
    assert rule.symbols, f"{case.family}: a rule without symbols detects nothing"
    assert re.fullmatch(r"trainchain/train-[a-z0-9]+:\d+\.\d+\.\d+", rule.image), rule.image
    folder = REPO_ROOT / "images" / image_family(rule.image)
    dockerfile = (REPO_ROOT / "images" / "Dockerfile").read_text()
    assert "ARG FAMILY" in dockerfile, "images/Dockerfile does not take the family"
    requirements = (folder / "requirements.txt").read_text().splitlines()
    assert requirements and all("==" in r for r in requirements if r and not r.startswith("#"))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_declares_its_spec_in_its_family_module(case: FamilyCase) -> None:
    """The family's module (found through families.base, imported only then) declares the
    spec of this family: its models' inputs, their MLflow flavour, and requirements of which
    those installed here are pinned exactly."""
    spec = family_spec(case.family)
    assert spec.family == case.family
    assert spec.inputs and spec.flavor in {"sklearn", "keras"}
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==\S+", r) for r in spec.pip_requirements())
    assert "numpy" in spec.requirements


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_detection_assigns_its_repositories_to_it(case: FamilyCase) -> None:
    """Detection (code only, no image: in trainchain.yaml) picks the family and its image
    for each of its examples, with evidence from its code."""
    repos = [EXAMPLES / name for name in case.examples]
    assert repos, f"{case.family}: no repository to detect"
    for repo in repos:
        found = detect(repo)
        assert (found.family, found.image) == (case.family.value, _rule(case.family).image), repo
        assert not found.explicit
        assert any(e.family == case.family.value for e in found.evidence), found.evidence


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_its_examples_declare_a_search_space_with_defaults_it_understands(
    case: FamilyCase,
) -> None:
    """Each example's trainchain.yaml loads, names the family's goal metric, declares a
    search space with a default for every parameter (valid by construction: config checks
    each is in its range), and the family's model code accepts those defaults."""
    for name in case.examples:
        model = load_config(EXAMPLES / name).model
        assert model.search_space, f"{name}: no search space"
        defaults = model.defaults()
        assert set(defaults) == set(model.search_space)
        assert model.goal.val_metric.startswith("val_")
        if case.understands is not None:
            case.understands(model)


# --- the train script on a tiny dataset ---------------------------------------------------------


def _run(repo: Path, data: Path, tmp_path: Path) -> tuple[Any, AttemptSpec, ModelConfig]:
    """The repository's train script run as trainchain runs a trial (the local executor,
    the config's defaults, data options and validation plan)."""
    model = load_config(repo).model
    spec = AttemptSpec.in_trial_dir(
        tmp_path / "trial-0000",
        1,
        params=model.defaults(),
        data_options=dict(model.data.options),
        repo_root=repo,
        entrypoint=model.entrypoint,
        data_dir=data,
        checkpoint_dir=tmp_path / "checkpoint",
        trial=0,
        timeout=600,
        validation=model.validation.plan(),
    )
    return LocalExecutor().run(spec), spec, model


def check_train_contract(result: Any, spec: AttemptSpec, model: ModelConfig) -> None:
    """What every family's train script must leave: exit 0; metrics.json with the goal's
    validation metric, its per-fold scores (mean = the metric), the folds' digest and the
    held-out figure; report lines in increasing steps carrying the metric; the model in an
    MLflow flavour's format; the held-out arrays for the champion comparison."""
    assert result.ok, f"{result.describe()}\n{result.log_tail}"
    metric = model.goal.val_metric
    metrics = json.loads((spec.output_dir / "metrics.json").read_text())
    value = metrics[metric]
    assert isinstance(value, float) and math.isfinite(value)
    folds = metrics[f"{metric}_folds"]
    assert folds and sum(folds) / len(folds) == pytest.approx(value)
    assert isinstance(metrics["val_folds_id"], str) and metrics["val_folds_id"]
    assert "test_" + metric.removeprefix("val_") in metrics
    rows = read_report(spec.report_file)
    steps = [r["step"] for r in rows]
    assert steps and steps == sorted(set(steps)), steps
    assert all(metric in r for r in rows), rows[:3]
    assert (spec.output_dir / "model" / "MLmodel").is_file()
    assert (spec.output_dir / "heldout.npz").is_file()


@pytest.mark.slow
def test_eeg_train_script_honours_the_contract_on_a_tiny_dataset(tmp_path: Path) -> None:
    """The EEG example on 20 synthetic cues per class (easy) meets the training contract."""
    from trainchain.families.eeg_synth import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, difficulty="easy", seed=0, trials_per_class=20)
    check_train_contract(*_run(EXAMPLES / "eeg-motor-imagery", data, tmp_path / "run"))


@pytest.mark.slow
@pytest.mark.tensorflow
def test_cnn_train_script_honours_the_contract_on_a_tiny_dataset(tmp_path: Path) -> None:
    """The emotion CNN example's script on scikit-learn's digits (4 epochs) meets the
    training contract."""
    from tests.test_cnn import make_digits_repo, write_digits

    data = write_digits(tmp_path / "digits")
    repo = make_digits_repo(tmp_path / "repo", data, epochs=4)
    check_train_contract(*_run(repo, data, tmp_path / "run"))


@pytest.mark.slow
def test_sklearn_train_script_honours_the_contract_on_a_tiny_dataset(tmp_path: Path) -> None:
    """The tabular example on scikit-learn's iris (150 rows, three classes) meets the
    training contract; its saved model predicts the held-out rows' classes."""
    from trainchain.families.sklearn import write_dataset

    data = tmp_path / "data"
    write_dataset(data, "iris")
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "tabular-sklearn", repo)
    config = repo / "trainchain.yaml"
    config.write_text(config.read_text().replace("breast_cancer.csv", "iris.csv"))
    result, spec, model = _run(repo, data, tmp_path / "run")
    check_train_contract(result, spec, model)

    import mlflow.pyfunc
    import numpy as np

    heldout = np.load(spec.output_dir / "heldout.npz")
    predicted = mlflow.pyfunc.load_model(str(spec.output_dir / "model")).predict(heldout["X"])
    assert set(np.asarray(predicted).tolist()) <= {"setosa", "versicolor", "virginica"}
    assert "scikit-learn==" in (spec.output_dir / "model" / "requirements.txt").read_text()
