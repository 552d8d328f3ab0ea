"""The script-side helper (stdlib only) and the data digest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainchain import task
from trainchain.adapters.digest import data_digest


def test_task_helper_imports_nothing_outside_the_stdlib() -> None:
    """Any image can use trainchain.task: importing it loads no third-party package."""
    code = (
        "import sys; from trainchain import task; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'numpy','yaml','pydantic','mlflow','optuna','rich','sklearn','mne'}]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_contract_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Params in, metrics and report lines out, through the environment contract."""
    (tmp_path / "p.json").write_text(json.dumps({"C": 1.5}))
    monkeypatch.setenv(task.ENV_PARAMS, str(tmp_path / "p.json"))
    monkeypatch.setenv(task.ENV_OUTPUT_DIR, str(tmp_path / "out"))
    monkeypatch.setenv(task.ENV_REPORT, str(tmp_path / "report.jsonl"))
    monkeypatch.setenv(task.ENV_TRIAL, "4")
    monkeypatch.setenv(task.ENV_ATTEMPT, "2")
    assert task.params() == {"C": 1.5}
    assert task.data_options() == {}
    task.report(0, loss=0.5)
    task.report(1, loss=float("nan"))
    rows = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
    assert [(r["step"], r["trial"], r["attempt"], r["loss"]) for r in rows] == [
        (0, 4, 2, 0.5),
        (1, 4, 2, None),
    ]
    path = task.write_metrics({"val_accuracy": 0.9, "n": 3})
    assert json.loads(path.read_text()) == {"val_accuracy": 0.9, "n": 3}


def test_validation_plan_and_per_fold_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan comes from TRAINCHAIN_VALIDATION (defaults when run by hand); per-fold
    scores (numpy arrays too) go into metrics.json as a list beside their mean."""
    import numpy as np

    monkeypatch.delenv(task.ENV_VALIDATION, raising=False)
    assert task.validation() == {"folds": 5, "repeats": 1, "seed": 0, "purpose": "search"}
    monkeypatch.setenv(
        task.ENV_VALIDATION, json.dumps({"repeats": 4, "seed": 9, "purpose": "confirm"})
    )
    assert task.validation() == {"folds": 5, "repeats": 4, "seed": 9, "purpose": "confirm"}
    monkeypatch.setenv(task.ENV_VALIDATION, "[5]")
    with pytest.raises(task.ContractError, match=task.ENV_VALIDATION):
        task.validation()

    monkeypatch.setenv(task.ENV_OUTPUT_DIR, str(tmp_path / "out"))
    folds = np.array([0.75, 0.5, np.float64(1.0)])
    fold_id = task.folds_id([[4, 1], [0, 3], [2]])
    assert fold_id == task.folds_id([[1, 4], [3, 0], [2]])  # the order inside a fold is moot
    assert fold_id != task.folds_id([[1, 4], [2], [3, 0]])  # the order of the folds is not
    path = task.write_metrics(
        {"val_accuracy": folds.mean(), "val_accuracy_folds": folds, task.FOLDS_ID_KEY: fold_id}
    )
    assert json.loads(path.read_text()) == {
        "val_accuracy": 0.75,
        "val_accuracy_folds": [0.75, 0.5, 1.0],
        "val_folds_id": fold_id,
    }


def test_missing_contract_says_how_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script run by hand without trainchain gets an error that says what to run."""
    monkeypatch.delenv(task.ENV_PARAMS, raising=False)
    with pytest.raises(task.ContractError, match="trainchain train PATH"):
        task.params()


def test_atomic_write_leaves_old_or_new(tmp_path: Path) -> None:
    """A checkpoint is replaced whole; no temporary file is left behind."""
    target = tmp_path / "ckpt" / "state.bin"
    task.atomic_write_bytes(target, b"one")
    task.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["state.bin"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_write_gives_the_mode_open_would(tmp_path: Path, umask: int, mode: int) -> None:
    """The file is as readable as one open() writes under the umask, not mkstemp's 0600:
    the serving container's user (uid 1000) reads a model folder root's chain wrote."""
    import stat

    before = os.umask(umask)
    try:
        task.atomic_write_bytes(tmp_path / "drift_reference.json", b"{}")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "drift_reference.json").stat().st_mode) == mode


def test_data_digest_follows_content(tmp_path: Path) -> None:
    """The digest changes with content or names, not with hidden files or timestamps."""
    (tmp_path / "a.txt").write_text("1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("2")
    first = data_digest(tmp_path)
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "a.txt").touch()
    assert data_digest(tmp_path) == first
    (tmp_path / "a.txt").write_text("3")
    assert data_digest(tmp_path) != first
    assert data_digest(tmp_path / "nope") == "missing"
