"""The whole chain on the real EEG example and synthetic recordings: real MLflow and Optuna
SQLite stores, real subprocess training, a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, run_cli
from tests.smtp_server import Inbox, LoopbackController, serve
from trainchain.adapters.tracking import CHALLENGER, CHAMPION, Tracker
from trainchain.chain.registry import download_heldout
from trainchain.chain.run import run_chain
from trainchain.core.settings import load_settings
from trainchain.families.eeg_synth import write_synthetic_dataset

pytestmark = pytest.mark.slow

EXAMPLE = REPO_ROOT / "examples" / "eeg-motor-imagery"


@pytest.fixture(scope="module")
def eeg_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eeg")
    out = {}
    # easy: 120 cues are plenty; medium: a BCI IV 2a session, as the demo uses
    for difficulty, cues in (("easy", 60), ("medium", 144)):
        out[difficulty] = root / difficulty
        write_synthetic_dataset(
            out[difficulty], subjects=1, difficulty=difficulty, seed=0, trials_per_class=cues
        )
    return out


@pytest.fixture
def smtp() -> Iterator[tuple[LoopbackController, Inbox]]:
    inbox = Inbox()
    for controller in serve(inbox):
        yield controller, inbox


def test_chain_registers_champion_and_emails_it(
    eeg_data: dict[str, Path], home: Path, smtp: tuple[LoopbackController, Inbox]
) -> None:
    """Easy data: the chain reaches the goal and confirms it, registers v1 as champion and
    challenger (significantly above the majority class), the champion classifies raw 22 x
    750 epochs, and the success email arrives by SMTP with each figure's uncertainty."""
    controller, inbox = smtp
    settings = load_settings(
        {
            "TRAINCHAIN_HOME": str(home),
            "TRAINCHAIN_SMTP_HOST": "127.0.0.1",
            "TRAINCHAIN_SMTP_PORT": str(controller.port),
            "TRAINCHAIN_SMTP_TO": "ml-team@example.com",
            "TRAINCHAIN_SMTP_FROM": "trainchain@example.com",
        }
    )
    outcome = run_chain(str(EXAMPLE), settings, data=str(eeg_data["easy"]))
    report = outcome.report
    assert outcome.exit_code == 0, report
    assert report.status == "succeeded" and report.best_value is not None
    assert report.best_value >= 0.80 and report.verdict == "confirmed"
    assert report.confirmation is not None and report.confirmation.bound is not None
    assert report.confirmation.bound >= 0.80 and report.confirmation.estimate.n == 20
    assert report.family == "eeg"
    test = report.promotion_test
    assert test is not None and test.n == 24 and test.chance_p <= 0.05

    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    assert tracker.alias_version("eeg-motor-imagery", CHAMPION) == "1"
    assert tracker.alias_version("eeg-motor-imagery", CHALLENGER) == "1"
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(
        str(tracker.download(report.best_run_id or "", "model", home / "dl"))
    )
    heldout = np.load(download_heldout(tracker, report.best_run_id or "", home / "dl2"))
    assert heldout["X"].shape[1:] == (22, 750)
    labels = model.predict(heldout["X"])
    assert set(labels) <= {"left", "right"}
    assert np.mean(labels == heldout["y"]) >= 0.8

    assert outcome.delivery is not None and outcome.delivery.method == "smtp"
    messages = inbox.messages()
    assert len(messages) == 1
    msg = messages[0]
    assert "eeg-motor-imagery" in msg["Subject"] and "champion" in msg["Subject"]
    assert msg["To"] == "ml-team@example.com"
    body = msg.get_body(("plain",)).get_content()
    assert re.search(r"Champion:\s+yes", body) and report.commit[:12] in body
    assert "reached and confirmed" in body and "95% CI" in body and "(sd of 5 folds)" in body
    assert "Against chance:" in body and "What it means" in body
    pngs = [p for p in msg.walk() if p.get_content_type() == "image/png"]  # inline in the HTML
    assert len(pngs) == 1 and pngs[0].get_content().startswith(b"\x89PNG")


def test_medium_data_needs_tuning_and_rerun_keeps_champion(
    eeg_data: dict[str, Path], home: Path
) -> None:
    """Medium data: the textbook defaults fall short of 0.80 and tuning reaches it,
    confirmed; a second run of the chain starts from the champion's parameters (and the
    first study's trials), finds the same model (commit, data, configuration, parameters)
    and registers no second version of it: champion v1 already is it."""
    settings = load_settings({"TRAINCHAIN_HOME": str(home)})
    first = run_chain(str(EXAMPLE), settings, data=str(eeg_data["medium"])).report
    assert first.trials[0].value is not None and first.trials[0].value < 0.80
    assert first.trials[0].params["band"] == "8-30"  # the defaults came first
    assert first.status == "succeeded" and len(first.trials) > 1
    assert first.verdict == "confirmed"
    assert first.became_champion and first.registry_version == "1"

    second = run_chain(str(EXAMPLE), settings, data=str(eeg_data["medium"])).report
    assert second.chain_id == first.chain_id + "-r2"
    assert second.trials[0].params == first.best_params  # champion's parameters first
    assert f"finished trials of 1 earlier study of {first.model_name}" in second.warm_start
    assert len(second.trials) == 1 and second.registry_version is None
    assert second.same_as == "champion v1" and not second.became_champion
    assert "not registered: champion v1 already is this model" in second.promotion_reason
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    assert tracker.alias_version("eeg-motor-imagery", CHAMPION) == "1"
    assert [v.version for v in tracker.versions("eeg-motor-imagery")] == ["1"]
    assert len(list((home / "outbox").glob("*.eml"))) == 2


def test_unreachable_goal_exits_3_and_keeps_champion(eeg_data: dict[str, Path], home: Path) -> None:
    """--threshold 0.999 --max-trials 2: exit 3, failure email, champion unchanged. (The
    local executor: the Docker tier runs the chain in the image, test_chain_docker.py.)"""
    data = str(eeg_data["easy"])
    local = ("--executor", "local")
    assert run_cli("run", str(EXAMPLE), "--data", data, "--home", str(home), *local).returncode == 0
    out = run_cli(
        "run",
        str(EXAMPLE),
        *local,
        "--data",
        data,
        "--threshold",
        "0.999",
        "--max-trials",
        "2",
        "--home",
        str(home),
    )
    assert out.returncode == 3, out.stderr
    assert "champion:  eeg-motor-imagery v1" in out.stdout
    failure = sorted((home / "outbox").glob("*goal_not_reached*.eml"))
    assert len(failure) == 1
    # the champion's held-out epochs as a /classify request body
    body = home / "epochs.json"
    out = run_cli("data", "heldout", "eeg-motor-imagery", "-n", "3", "--out", str(body))
    assert out.returncode == 0, out.stderr
    assert np.asarray(json.loads(body.read_text())).shape == (3, 22, 750)
    assert re.search(r"their labels: (left|right), (left|right), (left|right)", out.stdout)
    # the same epochs as .npy, the smaller body
    npy = home / "epochs.npy"
    out = run_cli("data", "heldout", "eeg-motor-imagery", "-n", "3", "--out", str(npy))
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.load(npy), np.asarray(json.loads(body.read_text())))


def test_detect_example_json() -> None:
    """The example is detected as EEG from its code, with file:line evidence."""
    import json

    out = run_cli("detect", str(EXAMPLE), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["family"] == "eeg" and info["image"] == "trainchain/train-eeg:0.1.0"
    assert any(e["file"] == "train.py" and e["symbol"] == "mne" for e in info["evidence"])
