"""trainchain serve --capture: the sampled store of served inputs, POST /feedback, and the
export the families read back (real MLflow SQLite registry and EEG pipelines from
tests/test_serving.py, the real Flask app, real files; one test through a real
`trainchain serve` with gunicorn and two worker processes sharing the folder)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests import test_serving
from tests.conftest import eventually, fetch, run_cli, serving
from tests.test_serving import WAIT, EEGRegistry
from trainchain.core.config import Family
from trainchain.core.errors import ConfigError
from trainchain.serving.capture import (
    FEEDBACK,
    META,
    Capture,
    CaptureStore,
    export_captures,
    new_request_id,
)
from trainchain.serving.config import CaptureConfig

pytestmark = pytest.mark.slow

# the real registry of trained EEG pipelines and the app factory over it
registry = test_serving.registry
serve = test_serving.serve


def _capturing(folder: Path, rate: float = 1.0, max_bytes: int = 64 << 20) -> dict[str, Any]:
    return {"capture": CaptureConfig(folder, rate=rate, max_bytes=max_bytes)}


def _metric(client: FlaskClient, line_start: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _stored(client: FlaskClient) -> float:
    return _metric(client, 'trainchain_serving_captures_total{outcome="stored"}')


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def test_rate_one_captures_every_request_and_feedback_round_trips(
    registry: EEGRegistry, serve: Callable[..., Flask], tmp_path: Path
) -> None:
    """At --capture-rate 1 every /classify answer carries a request id (body and
    X-Request-Id) and is stored: the epochs as parsed and the model, version, alias,
    predictions and classes. POST /feedback stores the true labels once (a repeat is 409),
    refuses a wrong count, an unknown class, a malformed id, a bad body and another content
    type with a message that says so, 404s an id never captured, and counts agreement."""
    folder = tmp_path / "captures"
    client = serve(**_capturing(folder)).test_client()
    x = registry.x_test[:3]
    expected = registry.pipeline(1.0).predict(x).tolist()
    answers = [
        client.post("/classify", json=x.tolist()),
        client.post("/classify", json=x[0].tolist()),
    ]
    ids = []
    for response in answers:
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["captured"] is True and body["request_id"] == response.headers["X-Request-Id"]
        ids.append(body["request_id"])
    eventually(lambda: _stored(client) == 2, "both captures to be written", WAIT, 0.05)
    meta = json.loads((folder / (ids[0] + META)).read_text())
    assert meta["predicted"] == expected and meta["classes"] == ["left", "right"]
    assert (meta["model"], meta["version"], meta["alias"], meta["family"]) == (
        "eeg",
        "1",
        "champion",
        "eeg",
    )
    assert np.array_equal(np.load(folder / meta["input"]), x)

    truth = ["left", "left", "right"]
    bad = [
        ({"request_id": ids[0], "labels": ["left"]}, 400, "expected a list of 3 label(s)"),
        ({"request_id": ids[0], "labels": ["left", "up", "right"]}, 400, "['up'] are not among"),
        ({"request_id": "../etc/passwd", "labels": truth}, 400, "expected the 24 hex digits"),
        ({"request_id": ids[0]}, 400, "missing ['labels']"),
        ({"request_id": new_request_id(), "labels": truth}, 404, "is not captured"),
    ]
    for body, status, message in bad:
        response = client.post("/feedback", json=body)
        assert response.status_code == status and message in response.get_json()["error"]
    not_json = client.post("/feedback", data=b"{nope", content_type="application/json")
    assert not_json.status_code == 400 and "not valid JSON" in not_json.get_json()["error"]
    assert client.post("/feedback", data=b"x", content_type="text/plain").status_code == 415

    stored = client.post("/feedback", json={"request_id": ids[0], "labels": truth})
    assert stored.status_code == 200, stored.get_json()
    assert stored.get_json() == {
        "request_id": ids[0],
        "labels": truth,
        "predicted": expected,
        "stored": True,
    }
    again = client.post("/feedback", json={"request_id": ids[0], "labels": truth})
    assert again.status_code == 409 and "feedback already" in again.get_json()["error"]
    assert json.loads((folder / (ids[0] + FEEDBACK)).read_text())["labels"] == truth
    agree = sum(a == b for a, b in zip(truth, expected, strict=True))
    assert _metric(client, 'trainchain_serving_feedback_total{outcome="agree"}') == agree
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_without_capture_answers_carry_only_the_header_and_feedback_is_refused(
    registry: EEGRegistry, serve: Callable[..., Flask]
) -> None:
    """Without --capture an answer's body is unchanged (no request_id), its X-Request-Id
    header still names it, and /feedback says capture is off."""
    client = serve().test_client()
    response = client.post("/classify", json=registry.x_test[:1].tolist())
    assert set(response.get_json()) == {"labels", "model", "version", "alias"}
    assert len(response.headers["X-Request-Id"]) == 24
    refused = client.post("/feedback", json={"request_id": "0" * 24, "labels": ["left"]})
    assert refused.status_code == 404 and "--capture DIR" in refused.get_json()["error"]


def test_the_size_cap_holds_after_many_requests_and_the_newest_stay(
    registry: EEGRegistry, serve: Callable[..., Flask], tmp_path: Path
) -> None:
    """40 captures of about 130 KiB into a 2 MiB cap: once written, the folder is under the
    cap, the oldest captures are gone and the newest is still there."""
    folder = tmp_path / "captures"
    cap = 2 << 20
    client = serve(**_capturing(folder, max_bytes=cap)).test_client()
    ids = []
    for i in range(40):
        response = client.post("/classify", json=registry.x_test[i % 20].tolist())
        assert response.status_code == 200
        ids.append(response.get_json()["request_id"])
    eventually(lambda: _stored(client) == 40, "40 captures to be written", WAIT, 0.05)
    assert _folder_bytes(folder) <= cap
    assert (folder / (ids[-1] + META)).exists()
    assert not (folder / (ids[0] + META)).exists()


def test_a_capture_folder_that_cannot_be_written_does_not_fail_predictions(
    registry: EEGRegistry, serve: Callable[..., Flask], tmp_path: Path
) -> None:
    """A --capture path that is a file (every write fails, even as root): predictions still
    answer 200, each failed write is counted, and feedback on them is a 404."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the capture folder should be")
    client = serve(**_capturing(blocked)).test_client()
    ids = []
    for i in range(3):
        response = client.post("/classify", json=registry.x_test[i].tolist())
        assert response.status_code == 200
        ids.append(response.get_json()["request_id"])
    failed = 'trainchain_serving_captures_total{outcome="failed"}'
    eventually(lambda: _metric(client, failed) == 3, "3 failed writes to be counted", WAIT, 0.05)
    response = client.post("/feedback", json={"request_id": ids[0], "labels": ["left"]})
    assert response.status_code == 404


def test_export_is_read_by_the_eeg_family_beside_recordings(
    registry: EEGRegistry, serve: Callable[..., Flask], tmp_path: Path
) -> None:
    """`trainchain data capture` writes the labelled captures (only those) as an epochs file
    that the EEG family's load_epochs reads back, alone and beside synthetic recordings."""
    from trainchain.families.eeg import load_epochs
    from trainchain.families.eeg_synth import write_synthetic_dataset

    folder = tmp_path / "captures"
    client = serve(**_capturing(folder)).test_client()
    x = registry.x_test[:4]
    ids = [
        client.post("/classify", json=x[:3].tolist()).get_json()["request_id"],
        client.post("/classify", json=x[3].tolist()).get_json()["request_id"],
        client.post("/classify", json=x[3].tolist()).get_json()["request_id"],  # no feedback
    ]
    eventually(lambda: _stored(client) == 3, "3 captures to be written", WAIT, 0.05)
    truth = ["right", "left", "left", "right"]
    for rid, labels in ((ids[0], truth[:3]), (ids[1], truth[3:])):
        assert (
            client.post("/feedback", json={"request_id": rid, "labels": labels}).status_code == 200
        )

    data = tmp_path / "data"
    done = run_cli("data", "capture", str(folder), "--out", str(data))
    assert done.returncode == 0, done.stderr
    assert "exported 4 labelled EEG epoch(s) and 0 image(s)" in done.stdout
    got_x, got_y, meta = load_epochs(data)
    assert np.array_equal(got_x, x) and got_y.tolist() == truth
    assert meta["counts"] == {"left": 2, "right": 2}

    recordings = tmp_path / "recordings"
    write_synthetic_dataset(recordings, subjects=1, difficulty="easy", seed=3, trials_per_class=10)
    rec_x, rec_y, _ = load_epochs(recordings)
    for path in data.iterdir():
        path.rename(recordings / path.name)
    both_x, both_y, _ = load_epochs(recordings)
    assert np.array_equal(both_x, np.concatenate([rec_x, x]))
    assert both_y.tolist() == [*rec_y.tolist(), *truth]


def test_image_captures_export_as_class_folders_the_cnn_family_reads(tmp_path: Path) -> None:
    """Image captures with feedback become OUT/<label>/<id>.png, which the CNN family's
    class_folders finds as classes; an image capture without feedback is left out."""
    from PIL import Image

    from trainchain.families.cnn import class_folders

    folder = tmp_path / "captures"
    counts: list[str] = []
    store = CaptureStore(CaptureConfig(folder, rate=1.0), counts.append)
    ids = []
    for i, colour in enumerate(["red", "blue", "green"]):
        png = io.BytesIO()
        Image.new("RGB", (8, 6), colour).save(png, format="JPEG" if i == 1 else "PNG")
        rid = new_request_id()
        ids.append(rid)
        store.submit(
            Capture(
                rid,
                "cnn",
                "2",
                "champion",
                Family.CNN,
                ["cat"],
                ("cat", "dog"),
                image=png.getvalue(),
            )
        )
    eventually(lambda: counts.count("stored") == 3, "3 captures to be written", WAIT, 0.05)
    assert store.feedback(ids[0], ["cat"]) == ["cat"]
    assert store.feedback(ids[1], ["dog"]) == ["cat"]
    store.close()

    summary = export_captures(folder, tmp_path / "images")
    assert summary.images == 2 and summary.epochs == 0
    assert class_folders(tmp_path / "images") == ["cat", "dog"]
    with Image.open(tmp_path / "images" / "dog" / f"{ids[1]}.png") as image:
        assert (image.format, image.size) == ("PNG", (8, 6))


def test_capture_options_are_checked(registry: EEGRegistry) -> None:
    """A rate outside (0, 1] and a cap too small for a capture are refused with the option's
    name; so is an unreadable --capture-max on the command line."""
    with pytest.raises(ConfigError, match="--capture-rate must be a share"):
        CaptureConfig(Path("x"), rate=0.0)
    with pytest.raises(ConfigError, match="--capture-max 1 KiB is below 64 KiB"):
        CaptureConfig(Path("x"), max_bytes=1024)
    done = run_cli(
        "serve",
        "--home",
        str(registry.settings.home),
        "--model",
        "eeg",
        "--capture",
        "c",
        "--capture-max",
        "lots",
    )
    assert done.returncode == 2 and "--capture-max 'lots' is not a size" in done.stderr


def test_gunicorn_workers_share_the_capture_folder(registry: EEGRegistry, tmp_path: Path) -> None:
    """`trainchain serve --workers 2 --capture DIR --capture-rate 1`: every answer is
    captured whichever worker answered, feedback sent to any worker finds it, and a second
    feedback for the same request is a 409 from either."""
    name = "eeg-captured"
    registry.register(name, c=1.0)
    folder = tmp_path / "captures"
    args = ["--model", name, "--workers", "2", "--capture", str(folder), "--capture-rate", "1"]
    with serving(registry.settings.home, *args, log=tmp_path / "serve.log") as served:
        served.wait_healthy(WAIT)
        url = served.url
        x = registry.x_test[:2]
        ids = []
        for _ in range(10):
            code, body = fetch(f"{url}/classify", json.dumps(x.tolist()).encode())
            assert code == 200 and body["captured"] is True
            ids.append(body["request_id"])

        def all_written() -> bool:
            return all((folder / (rid + META)).exists() for rid in ids)

        eventually(all_written, "10 captures in the shared folder", WAIT, 0.05)
        for rid in ids:
            feedback = json.dumps({"request_id": rid, "labels": ["left", "right"]}).encode()
            assert fetch(f"{url}/feedback", feedback)[0] == 200
            assert fetch(f"{url}/feedback", feedback)[0] == 409
        _, metrics = fetch(f"{url}/metrics")
        assert 'trainchain_serving_captures_total{outcome="stored"} 10.0' in metrics
    output = served.output()
    assert served.proc.returncode == 0, output
    assert f"capture:   100% of requests into {folder}" in output
    assert len(list(folder.glob("*" + FEEDBACK))) == 10


def test_an_epochs_file_that_does_not_fit_the_data_options_is_refused(tmp_path: Path) -> None:
    """load_epochs checks an epochs file against the data options: a wrong epoch length, a
    wrong rate and labels outside the cues are each refused with what to set."""
    from trainchain.families.eeg import EEGDataError, load_epochs, save_epochs

    x = np.zeros((2, 3, 750))
    cases = [
        ({"x": np.zeros((2, 3, 700))}, {}, "700 samples long, the data options make 750"),
        ({"sfreq": 128.0}, {}, "sampled at 128 Hz, the data options say 250 Hz"),
        ({"y": ["left", "feet"]}, {}, "labels ['feet'] are not among the cues' classes"),
        ({}, {"channels": ["C3", "Cz"]}, "3 channels, the data options pick 2"),
    ]
    for i, (saved, options, message) in enumerate(cases):
        folder = tmp_path / str(i)
        save_epochs(
            folder / "c.epochs.npz",
            saved.get("x", x),
            saved.get("y", ["left", "right"]),
            sfreq=saved.get("sfreq"),
        )
        with pytest.raises(EEGDataError, match=re.escape(message)):
            load_epochs(folder, **({"channels": None} | options))
