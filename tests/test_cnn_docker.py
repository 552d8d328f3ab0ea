"""A CNN trial in a container of the real TensorFlow image, killed mid-training (the
Docker tier): the executor restarts it and it resumes after its last finished epoch.

Needs a Docker engine and `trainchain/train-tensorflow:0.1.0` (scripts/start-docker.sh
and scripts/build-images.sh tensorflow, as .ci/run does). Skipped with the reason where
either is missing, except where CI is set: there a missing engine or image fails the run.
TensorFlow runs only inside the container; this process never imports it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually, require_image
from tests.test_cnn import make_digits_repo, write_digits

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGE = "trainchain/train-tensorflow:0.1.0"


require_image(IMAGE, "scripts/build-images.sh tensorflow")


def _rows(home: Path) -> list[dict[str, Any]]:
    rows = []
    for report in home.glob("runs/*/trial-*/report.jsonl"):
        for line in report.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def test_killed_cnn_container_resumes_after_its_last_finished_epoch(tmp_path: Path) -> None:
    """`train --executor docker` on the digits; the container is SIGKILLed after its third
    epoch report; attempt 2 loads the checkpoint and goes on: no epoch runs twice, and the
    trial ends with a model that still reaches 0.8."""
    from trainchain.adapters.containers import connect

    data = write_digits(tmp_path / "digits")
    repo = make_digits_repo(tmp_path / "repo", data, epochs=10)
    # no early stopping: the epochs after the restart must all run
    config = repo / "trainchain.yaml"
    config.write_text(
        config.read_text().replace("enabled: true, patience", "enabled: false, patience")
    )
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainchain", "train", str(repo), "--executor", "docker",
         "--home", str(home)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    client = connect()
    try:

        def three_epochs() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            return len(_rows(home)) >= 3

        eventually(three_epochs, "a third epoch report", 240, poll=0.1)
        (container,) = client.containers.list(filters={"label": "trainchain.model=digits-cnn"})
        container.kill()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out

    rows = _rows(home)
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), f"an epoch ran twice: {steps}"
    first = [r["step"] for r in rows if r["attempt"] == 1]
    second = [r["step"] for r in rows if r["attempt"] == 2]
    assert first[:3] == [1, 2, 3] and second, rows
    assert second[-1] == 10 and second[0] > first[-1]
    logs = sorted(home.glob("runs/*/trial-*/attempt-2/train.log"))
    assert logs and f"resuming after epoch {second[0] - 1}" in logs[0].read_text()
    # the restarted container writes into the trial's one output folder
    (metrics_file,) = home.glob("runs/*/trial-*/attempt-*/output/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["val_accuracy"] >= 0.8 and metrics["test_accuracy"] >= 0.8
