"""Register and promote on held-out data, roll back, never promote on an error
(real MLflow SQLite registry, real scikit-learn models saved by the script)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from tests.conftest import git, git_init, run_cli
from trainchain.adapters.tracking import CHALLENGER, CHAMPION, Tracker
from trainchain.chain.registry import download_heldout
from trainchain.chain.run import run_chain
from trainchain.core import keys
from trainchain.core.errors import RegistryError
from trainchain.core.settings import Settings

pytestmark = pytest.mark.slow

# An XOR-like problem: a depth-1 tree is mediocre, a depth-4 tree is good. Validation is
# the plan's repeated stratified k-fold of the first 450 examples; the last 150 are held out.
TREE_TRAIN = """
import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.tree import DecisionTreeClassifier
from trainchain import task

p, plan = task.params(), task.validation()
rng = np.random.default_rng(0)
X = rng.uniform(-1, 1, size=(600, 2))
y = np.where((X[:, 0] > 0) ^ (X[:, 1] > 0.3), "a", "b")
tree = lambda: DecisionTreeClassifier(max_depth=p["depth"], random_state=0)
cv = RepeatedStratifiedKFold(n_splits=plan["folds"], n_repeats=plan["repeats"],
                             random_state=plan["seed"])
folds = list(cv.split(X[:450], y[:450]))
scores = [tree().fit(X[f], y[f]).score(X[v], y[v]) for f, v in folds]
model = tree().fit(X[:450], y[:450])
task.write_metrics({"val_accuracy": float(np.mean(scores)), "val_accuracy_folds": scores,
                    "val_folds_id": task.folds_id(v for _, v in folds),
                    "test_accuracy": model.score(X[450:], y[450:])})
np.savez(task.heldout_path(), X=X[450:], y=y[450:])
import mlflow.sklearn
mlflow.sklearn.save_model(model, task.model_dir(), serialization_format="cloudpickle",
                          pip_requirements=["scikit-learn"])
"""

TREE_YAML = """
name: trees
entrypoint: train.py
data: {{path: .}}
goal: {{metric: accuracy, threshold: 0.55}}
budget: {{max_trials: 1, seed: 0}}
search_space:
  depth: {{type: categorical, choices: [{depth}], default: {depth}}}
promotion: {{margin: 0.01}}
"""


def _repo(tmp_path: Path, depth: int) -> Path:
    root = tmp_path / "trees"
    root.mkdir(exist_ok=True)
    (root / "train.py").write_text(textwrap.dedent(TREE_TRAIN))
    (root / "trainchain.yaml").write_text(TREE_YAML.format(depth=depth))
    if (root / ".git").exists():
        git(root, "commit", "-qam", f"depth {depth}")
    else:
        git_init(root)
    return root


def test_champion_promotion_and_rollback(tmp_path: Path, settings: Settings) -> None:
    """The first model whose goal is confirmed and which beats the majority class on its
    held-out examples is champion; a significantly better one replaces it (McNemar); the
    same model again does not; rollback moves champion back to the previous version."""
    first = run_chain(str(_repo(tmp_path, 1)), settings).report
    assert first.status == "succeeded" and first.verdict == "confirmed"
    assert first.registry_version == "1" and first.became_champion
    assert "first model, significantly better than the majority class" in first.promotion_reason
    assert first.promotion_test is not None and first.promotion_test.n == 150

    repo = _repo(tmp_path, 4)
    better = run_chain(str(repo), settings).report
    assert better.registry_version == "2" and better.became_champion
    assert "significantly beats the champion" in better.promotion_reason
    test = better.promotion_test
    assert test is not None and test.champion_version == "1" and test.paired_p is not None
    assert test.paired_p <= 0.05 and (test.wins or 0) > (test.losses or 0)

    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    same = run_chain(str(repo), settings).report  # the same code and data again
    assert same.status == "succeeded" and same.registry_version is None
    assert same.same_as == "champion v2" and not same.became_champion
    assert same.promotion_reason.startswith("not registered: champion v2 already is this model")
    assert same.model_uri == "models:/trees/2"
    assert [v.version for v in tracker.versions("trees")] == ["1", "2"]
    assert tracker.alias_version("trees", CHAMPION) == "2"

    champion = tracker.alias_version("trees", CHAMPION)
    out = run_cli("rollback", "trees", "--home", str(settings.home))
    assert out.returncode == 0, out.stderr
    assert tracker.alias_version("trees", CHAMPION) != champion

    listing = run_cli("models", "trees", "--home", str(settings.home))
    assert listing.returncode == 0, listing.stderr
    assert "champion" in listing.stdout and "challenger" in listing.stdout
    for version in ("1", "2"):
        assert (
            MlflowClient(settings.tracking_uri)
            .get_model_version("trees", version)
            .tags["trainchain.commit"]
        )


def test_rollback_without_history_is_a_clear_error(tmp_path: Path, settings: Settings) -> None:
    """Rolling back a model that only ever had one champion says so."""
    run_chain(str(_repo(tmp_path, 1)), settings)
    with pytest.raises(RegistryError, match="no earlier champion"):
        Tracker(settings.tracking_uri, settings.artifacts).rollback("trees")
    out = run_cli("rollback", "nosuchmodel", "--home", str(settings.home))
    assert out.returncode == 7 and "no registered model named 'nosuchmodel'" in out.stderr


def test_error_while_comparing_never_promotes(tmp_path: Path, settings: Settings) -> None:
    """If the champion cannot be scored, the new model stays challenger and the reason says
    why."""
    first = run_chain(str(_repo(tmp_path, 1)), settings).report
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    # break the champion's stored model
    source = Path(tracker.artifact_uri(first.best_run_id or "").removeprefix("file://"))
    shutil.rmtree(source)
    second = run_chain(str(_repo(tmp_path, 4)), settings).report
    assert not second.became_champion
    assert "error while deciding" in second.promotion_reason
    assert tracker.alias_version("trees", CHAMPION) == "1"
    assert tracker.alias_version("trees", CHALLENGER) == second.registry_version


def test_champion_whose_flavor_the_host_lacks_is_not_compared_and_says_what_to_install(
    tmp_path: Path, settings: Settings
) -> None:
    """A champion whose loader module is not installed here (as a Keras model on a host
    without TensorFlow): no promotion, and the reason names the install command."""
    first = run_chain(str(_repo(tmp_path, 1)), settings).report
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    source = Path(tracker.artifact_uri(first.best_run_id or "").removeprefix("file://"))
    mlmodel = source / "MLmodel"
    text = mlmodel.read_text().replace(
        "loader_module: mlflow.sklearn", "loader_module: no_such_flavor"
    )
    assert "no_such_flavor" in text
    mlmodel.write_text(text)
    second = run_chain(str(_repo(tmp_path, 4)), settings).report
    assert not second.became_champion
    assert "cannot load the models" in second.promotion_reason
    assert "scripts/setup.sh --tensorflow" in second.promotion_reason
    assert tracker.alias_version("trees", CHAMPION) == "1"


def test_trials_of_a_chain_store_their_shared_heldout_split_once(
    tmp_path: Path, settings: Settings
) -> None:
    """Three trials writing the same held-out arrays leave one copy, under the chain's run,
    and each trial's run points to it; promotion reads it from there."""
    root = _repo(tmp_path, 1)
    (root / "trainchain.yaml").write_text(
        TREE_YAML.format(depth=1)
        .replace("max_trials: 1", "max_trials: 3")
        .replace("choices: [1]", "choices: [1, 2, 3]")
        .replace("threshold: 0.55", "threshold: 0.999")
    )
    git(root, "commit", "-qam", "three depths")
    report = run_chain(str(root), settings).report  # 0.999: out of reach, three trials
    assert len(report.trials) == 3 and report.parent_run_id
    client = MlflowClient(settings.tracking_uri)
    stored = [f.path for f in client.list_artifacts(report.parent_run_id, "heldout")]
    assert len(stored) == 1
    for trial in report.trials:
        assert trial.run_id
        tags = client.get_run(trial.run_id).data.tags
        assert tags[keys.HELDOUT] == f"{report.parent_run_id}:{stored[0]}/heldout.npz"
        assert "heldout.npz" not in {f.path for f in client.list_artifacts(trial.run_id)}
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    path = download_heldout(tracker, report.trials[0].run_id or "", tmp_path / "dl")
    assert np.load(path)["X"].shape == (150, 2)
