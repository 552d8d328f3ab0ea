"""The chain with training in containers of the real EEG image (the Docker tier).

Needs a Docker engine and `trainchain/train-eeg:0.1.0` (scripts/start-docker.sh and
scripts/build-images.sh eeg, as .ci/run does). Skipped with the reason where either is
missing, except where CI is set: there a missing engine or image fails the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import REPO_ROOT, git_init, require_image, run_cli
from trainchain.families.eeg_synth import write_synthetic_dataset

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGE = "trainchain/train-eeg:0.1.0"


require_image(IMAGE, "scripts/build-images.sh eeg")


def _dying_repo(repo: Path) -> Path:
    """A model repository whose script always exits 2, restarted at most once, one trial."""
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "x.txt").write_text("x")
    (repo / "train.py").write_text(
        "import sys\nfrom trainchain import task\n"
        "print(f'attempt {task.attempt()} dying', flush=True)\nsys.exit(2)\n"
    )
    (repo / "trainchain.yaml").write_text(
        f"name: dies\nentrypoint: train.py\nimage: {IMAGE}\ndata: {{path: data}}\n"
        "goal: {metric: accuracy, threshold: 0.5}\n"
        "budget: {max_trials: 1}\n"
        "search_space: {x: {type: float, low: 0, high: 1, default: 0.5}}\n"
        "watchdog: {max_restarts: 1, backoff: 0}\n"
    )
    return repo


def test_chain_trains_in_the_eeg_image(tmp_path: Path, home: Path) -> None:
    """`run --executor docker`: every trial ran in a container of the detected image, and
    the champion is registered with the image in its lineage."""
    data = tmp_path / "easy"
    write_synthetic_dataset(data, subjects=1, difficulty="easy", seed=0, trials_per_class=60)
    out = run_cli(
        "run",
        str(REPO_ROOT / "examples" / "eeg-motor-imagery"),
        "--executor",
        "docker",
        "--data",
        str(data),
        "--home",
        str(home),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "champion:  eeg-motor-imagery v1" in out.stdout
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    version = client.get_model_version("eeg-motor-imagery", "1")
    assert version.tags["trainchain.image"] == IMAGE
    assert version.tags["trainchain.executor"] == "docker"
    records = list((home / "runs").glob("*/trial-*/attempt-*/container.json"))
    assert records, "each attempt keeps its container's exit state"
    assert '"ExitCode": 0' in records[0].read_text() or '"exit_code": 0' in records[0].read_text()


def test_restart_cap_in_a_tune_fails_the_trial_and_emails(tmp_path: Path, home: Path) -> None:
    """A script that always dies: restarted up to watchdog.max_restarts, then the trial is
    failed (exit 6 from train), its MLflow run FAILED, and a failure email is written."""
    repo = _dying_repo(tmp_path / "dies")
    out = run_cli("train", str(repo), "--executor", "docker", "--home", str(home))
    assert out.returncode == 6, out.stdout + out.stderr
    assert "attempt 2 dying" in out.stdout + out.stderr  # restarted once, then gave up
    runs = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_runs(
        [
            MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
            .get_experiment_by_name("dies")
            .experiment_id
        ]
    )
    assert [r.info.status for r in runs] == ["FAILED"]
    emails = list((home / "outbox").glob("*failed.eml"))
    assert len(emails) == 1 and "gave up" in emails[0].read_text()


def test_tune_of_a_pulled_repository_whose_trial_is_given_up_ends_cleanly(
    tmp_path: Path, home: Path
) -> None:
    """`tune REPO --ref` in containers: the non-root container reads the pulled workspace,
    and a trial the restart cap gives up on fails in the study without a traceback."""
    repo = _dying_repo(tmp_path / "dies")
    git_init(repo)
    out = run_cli(
        "tune", f"file://{repo}", "--ref", "main", "--executor", "docker", "--home", str(home)
    )
    assert out.returncode == 3, out.stdout + out.stderr  # budget spent below the goal
    assert "Traceback" not in out.stderr, out.stderr
    logs = sorted((home / "runs").glob("dies-*/trial-0000/attempt-*/train.log"))
    assert [p.parent.name for p in logs] == ["attempt-1", "attempt-2"]
    assert "attempt 2 dying" in logs[-1].read_text()  # the script ran: the workspace is readable
    assert list((home / "outbox").glob("*failed.eml")), "the give-up email"
