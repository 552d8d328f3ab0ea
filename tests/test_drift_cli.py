"""`trainchain drift` on a version registered by a real run of the EEG example (real
subprocess training, real MLflow SQLite store): the reference the training wrote, read
back from the registry; exit codes and errors of the command."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, run_cli
from trainchain.adapters.tracking import MODEL_ARTIFACT, Tracker
from trainchain.chain.registry import download_heldout
from trainchain.chain.run import run_chain
from trainchain.cli.main import main as cli_main
from trainchain.core.drift import REFERENCE_FILE
from trainchain.core.settings import load_settings
from trainchain.core.status import ExitCode
from trainchain.families.drift import read_reference
from trainchain.families.eeg_synth import write_synthetic_dataset

pytestmark = pytest.mark.slow

EXAMPLE = REPO_ROOT / "examples" / "eeg-motor-imagery"
NAME = "eeg-motor-imagery"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The EEG example trained once by the chain (easy data, 288 cues, one trial) in a
    private TRAINCHAIN_HOME; its held-out epochs saved as .npy."""
    root = tmp_path_factory.mktemp("drift-chain")
    data = root / "eeg"
    write_synthetic_dataset(data, subjects=1, difficulty="easy", seed=0, trials_per_class=144)
    home = root / "home"
    settings = load_settings({"TRAINCHAIN_HOME": str(home)})
    outcome = run_chain(str(EXAMPLE), settings, data=str(data), max_trials=1, quiet=True)
    assert outcome.report.registry_version == "1", outcome.report
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    run_id = outcome.report.best_run_id or ""
    with np.load(download_heldout(tracker, run_id, root / "dl")) as held:
        heldout = root / "heldout.npy"
        np.save(heldout, held["X"])
    return {"home": home, "tracker": tracker, "run_id": run_id, "heldout": heldout, "root": root}


def drift_cli(trained: dict[str, Any], *args: str) -> int:
    return cli_main(["drift", "--home", str(trained["home"]), *args])


def test_training_writes_the_reference_of_the_development_part_into_the_model(
    trained: dict[str, Any],
) -> None:
    """The registered model folder holds drift_reference.json: EEG groups of 22 channels
    and 4 CSP features, input shape 22 x 750, made from the development rows only (their
    number is the run's n_dev, not the 288 epochs with the held-out ones)."""
    tracker: Tracker = trained["tracker"]
    local = tracker.download(trained["run_id"], MODEL_ARTIFACT, trained["root"] / "model-dl")
    reference = read_reference(local / REFERENCE_FILE)
    _, metrics, _ = tracker.run_data(trained["run_id"])
    assert reference.family == "eeg" and reference.input_shape == (22, 750)
    assert reference.n_rows == int(metrics["n_dev"]) < 288
    assert sum(reference.classes.values()) == reference.n_rows
    assert set(reference.classes) == {"left", "right"}
    assert {g: len(r.features) for g, r in reference.groups.items()} == {
        "mu": 22,
        "beta": 22,
        "log_var": 22,
        "csp": 4,
    }
    assert reference.groups["mu"].features[7] == "C3"


def test_drift_of_held_out_epochs_exits_0_and_of_a_gain_shift_exits_11(
    trained: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The champion's own held-out epochs: no drift, exit 0, JSON says so; the same epochs
    with C3's gain x1.5 (made by `trainchain data drift-epochs`): exit 11 (drift), the
    table names the log_var group and C3 moving up."""
    heldout = str(trained["heldout"])
    assert drift_cli(trained, NAME, "--input", heldout, "--json") == ExitCode.OK
    clean = json.loads(capsys.readouterr().out)
    assert clean["detected"] is False and clean["version"] == "1" and clean["inputs"] == 58

    shifted = trained["root"] / "gain.npy"
    assert (
        cli_main(
            ["data", "drift-epochs", "--input", heldout, "--shift", "gain", "--out", str(shifted)]
        )
        == 0
    )
    capsys.readouterr()
    assert drift_cli(trained, NAME, "--version", "1", "--input", str(shifted)) == ExitCode.DRIFT
    table = capsys.readouterr().out
    assert "DRIFT DETECTED" in table and "log_var" in table
    assert "C3 +" in table


def test_the_real_entry_point_exits_11_on_drift(trained: dict[str, Any]) -> None:
    """Through `python -m trainchain` in a subprocess: swapped electrodes, exit status 11."""
    swapped = trained["root"] / "swap.npy"
    held = np.load(trained["heldout"])
    held[:, [0, 7]] = held[:, [7, 0]]
    np.save(swapped, held)
    done = run_cli("drift", "--home", str(trained["home"]), NAME, "--input", str(swapped))
    assert done.returncode == ExitCode.DRIFT, done.stderr


def test_wrong_shapes_too_few_inputs_and_unknown_versions_are_clear_errors(
    trained: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Epochs of 21 channels: exit 2 naming the expected shape; 10 epochs: exit 2, too few
    for the minimum window; an unknown alias: exit 7."""
    root: Path = trained["root"]
    np.save(root / "narrow.npy", np.zeros((60, 21, 750)))
    assert drift_cli(trained, NAME, "--input", str(root / "narrow.npy")) == ExitCode.CONFIG
    assert "expected (n, 22, 750)" in capsys.readouterr().err
    np.save(root / "few.npy", np.load(trained["heldout"])[:10])
    assert drift_cli(trained, NAME, "--input", str(root / "few.npy")) == ExitCode.CONFIG
    assert "drift is tested on at least 50" in capsys.readouterr().err
    assert drift_cli(trained, NAME, "--alias", "nope", "--input", str(root / "few.npy")) == 7
    assert "no version with the alias 'nope'" in capsys.readouterr().err


def test_a_version_trained_before_drift_references_says_to_retrain(
    trained: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A version whose model folder has no drift_reference.json (trained before this
    change): exit 7, the message says so and the hint says to retrain."""
    tracker: Tracker = trained["tracker"]
    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.download(trained["run_id"], MODEL_ARTIFACT, Path(tmp))
        (local / REFERENCE_FILE).unlink()
        run_id = tracker.start_run(tracker.experiment_id("old"), "old model", {})
        tracker.log_artifacts(run_id, local, MODEL_ARTIFACT)
        tracker.finish(run_id, ok=True)
        version = tracker.register("old-eeg", run_id, {})
        tracker.make_champion("old-eeg", version)
        shutil.rmtree(local)
    code = drift_cli(trained, "old-eeg", "--input", str(trained["heldout"]))
    err = capsys.readouterr().err
    assert code == ExitCode.REGISTRY
    assert "has no drift reference" in err and "retrain" in err
