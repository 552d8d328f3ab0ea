"""Drift monitoring inside `trainchain serve`: real EEG pipelines trained on synthetic
recordings and registered in a real MLflow SQLite registry with the drift reference the
example's training script writes (trainchain.families.eeg.drift_reference, through
write_reference); the real Flask app, and one real `trainchain serve` with two gunicorn
workers sharing the window."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import clean_env, eventually, fetch, served_apps, serving
from trainchain.adapters.tracking import Tracker
from trainchain.core.config import Monitoring
from trainchain.core.drift import Window
from trainchain.core.settings import Settings, load_settings
from trainchain.serving.config import ServeConfig
from trainchain.serving.drift import Batch, WindowStore

pytestmark = pytest.mark.slow

SFREQ = 250.0
PIP = ["scikit-learn==1.9.1", "mne==1.13.2", "numpy==2.4.6", "scipy==1.17.1"]
WAIT = 60.0


@dataclass
class Registry:
    settings: Settings
    tracker: Tracker
    x_test: np.ndarray
    pipe: Any

    def register(self, name: str, *, reference: Any) -> str:
        """The fitted pipeline saved as the chain saves it (a run's `model` artifact), with
        ``reference`` written into the model folder (None: a version without one)."""
        import mlflow.sklearn

        from trainchain.families.drift import write_reference

        run_id = self.tracker.start_run(self.tracker.experiment_id(name), name, {})
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            mlflow.sklearn.save_model(
                self.pipe, str(model_dir), serialization_format="cloudpickle", pip_requirements=PIP
            )
            if reference is not None:
                write_reference(reference, model_dir)
            self.tracker.log_artifacts(run_id, model_dir, "model")
        self.tracker.finish(run_id, ok=True)
        version = self.tracker.register(name, run_id, {"trainchain.family": "eeg"})
        self.tracker.make_champion(name, version)
        return version

    def config(self, name: str, **options: Any) -> ServeConfig:
        options.setdefault("reload_interval", 0.2)
        options.setdefault("drift_interval", 0.0)
        options.setdefault("monitoring", Monitoring(window=30, min_window=20))
        return ServeConfig.from_settings(self.settings, name, **options)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """90 development epochs fit the pipeline and make its reference; 30 are held out."""
    from trainchain.families.eeg import build_pipeline, drift_reference, load_epochs
    from trainchain.families.eeg_synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("serving-drift")
    write_synthetic_dataset(
        root / "eeg", subjects=1, difficulty="easy", seed=0, trials_per_class=60
    )
    x, y, _ = load_epochs(root / "eeg")
    settings = load_settings({"TRAINCHAIN_HOME": str(root / "home")})
    pipe = build_pipeline({}, SFREQ).fit(x[:90], y[:90])
    reg = Registry(settings, Tracker(settings.tracking_uri, settings.artifacts), x[90:], pipe)
    reg.register("eeg-watched", reference=drift_reference(pipe, x[:90]))
    reg.register("eeg-unwatched", reference=None)
    return reg


@pytest.fixture
def serve(registry: Registry) -> Iterator[Callable[..., Flask]]:
    with served_apps(registry.config, WAIT) as make:
        yield make


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _classify_all(client: FlaskClient, x: np.ndarray, per_request: int = 5) -> None:
    for start in range(0, len(x), per_request):
        response = client.post(
            "/classify", data=_npy(x[start : start + per_request]), mimetype="application/x-npy"
        )
        assert response.status_code == 200, response.get_json()


def _drift_when(client: FlaskClient, window: int) -> dict[str, Any]:
    """/drift once the writer thread has put ``window`` inputs in the window."""

    def seen() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get("/drift").get_json()
        return body if body.get("window") == window else None

    return eventually(seen, f"/drift to show a window of {window}", WAIT, 0.05)


def test_unshifted_epochs_show_no_drift_and_a_gain_on_c3_is_found(
    registry: Registry, serve: Callable[..., Flask]
) -> None:
    """Before min_window inputs /drift says it is collecting; 30 held-out epochs (the
    training distribution) are tested without an alarm; 30 epochs whose C3 is amplified
    1.8x replace them in the window and /drift reports drift with C3 moved up, the
    four gauges per group on /metrics saying the same."""
    from trainchain.families.eeg_synth import shift_epochs

    client = serve("eeg-watched").test_client()
    _classify_all(client, registry.x_test[:10])
    collecting = _drift_when(client, 10)
    assert collecting["state"] == "collecting" and not collecting["drifted"]
    assert "not enough inputs yet (10 of min_window 20)" in collecting["message"]

    _classify_all(client, registry.x_test[10:])
    calm = _drift_when(client, 30)
    assert calm["state"] == "tested" and calm["drifted"] is False, calm
    assert set(calm["groups"]) == {"mu", "beta", "log_var", "csp", "classes"}
    assert calm["groups"]["csp"]["p_value"] is None  # not summarised per request
    assert "trainchain drift" in calm["groups"]["csp"]["note"]
    assert calm["groups"]["log_var"]["window"] == 30

    _classify_all(client, shift_epochs(registry.x_test, "gain", channel="C3", factor=1.8))

    def shifted() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get("/drift").get_json()
        return body if body["drifted"] else None

    drifted = eventually(shifted, "/drift to report the gain on C3", WAIT, 0.05)
    log_var = drifted["groups"]["log_var"]
    assert log_var["detected"] and log_var["p_value"] <= 0.01
    moved = {m["feature"]: m for m in log_var["moved"]}
    assert "C3" in moved and moved["C3"]["direction"] == "up" and moved["C3"]["shift"] > 1
    assert set(moved) <= {"C3", "FC3", "CP3", "C5", "C1", "FC1", "CP1"}  # C3 and neighbours

    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'trainchain_drift_detected{group="log_var",model="eeg-watched"} 1.0' in metrics
    assert 'trainchain_drift_window_size{group="log_var",model="eeg-watched"} 30.0' in metrics
    assert 'trainchain_drift_p_value{group="log_var",model="eeg-watched"}' in metrics
    assert 'trainchain_drift_score{group="classes",model="eeg-watched"}' in metrics
    assert 'group="csp"' not in metrics  # no gauge rather than a false "no drift"
    health = client.get("/health").get_json()
    assert health["drift"] == {"monitored": True, "note": ""}


def test_a_version_without_a_reference_is_served_with_drift_off(
    registry: Registry, serve: Callable[..., Flask]
) -> None:
    """A version saved without drift_reference.json answers /classify as usual; /drift and
    /health say drift is off for it and why, and no drift gauge appears."""
    client = serve("eeg-unwatched").test_client()
    _classify_all(client, registry.x_test[:10])
    body = client.get("/drift").get_json()
    assert body["state"] == "off" and body["drifted"] is False
    assert "off for v1" in body["message"] and "no drift reference" in body["message"]
    health = client.get("/health").get_json()
    assert health["status"] == "ok" and health["drift"]["monitored"] is False
    assert "trainchain_drift_detected{" not in client.get("/metrics").get_data(as_text=True)


def test_no_drift_turns_monitoring_off(registry: Registry, serve: Callable[..., Flask]) -> None:
    """ServeConfig(monitoring=None) (`--no-drift`): requests are answered, /drift says off."""
    client = serve("eeg-watched", monitoring=None).test_client()
    _classify_all(client, registry.x_test[:5])
    body = client.get("/drift").get_json()
    assert body == {"state": "off", "drifted": False, "message": body["message"]}
    assert "--no-drift" in body["message"]


def test_the_window_store_keeps_the_newest_rows_of_each_version(tmp_path: Path) -> None:
    """Two stores on one file (two workers) see each other's rows; each version keeps its
    newest `size` rows, in order, with their classes; forget drops the other versions."""
    a, b = WindowStore(tmp_path / "w.sqlite", 5), WindowStore(tmp_path / "w.sqlite", 5)

    def batch(version: str, start: int, n: int) -> Batch:
        rows = np.arange(start, start + n, dtype=np.float64)[:, None] * [1.0, 10.0, 100.0]
        labels = tuple(f"c{i}" for i in range(start, start + n))
        return Batch("m", version, 0.0, (("g", 1), ("h", 2)), rows, labels)

    a.append([batch("1", 0, 3)])
    b.append([batch("1", 3, 4), batch("2", 0, 2)])
    window: Window = a.window("m", "1")
    assert len(window) == 5 and window.predictions == ("c2", "c3", "c4", "c5", "c6")
    assert window.values("g")[:, 0].tolist() == [2, 3, 4, 5, 6]
    assert window.values("h")[0].tolist() == [20, 200]
    assert len(b.window("m", "2")) == 2
    b.forget("m", ["2"])
    assert len(a.window("m", "1")) == 0 and len(a.window("m", "2")) == 2


# --------------------------------------------------------------------------- real server


def test_trainchain_serve_workers_share_one_window(registry: Registry, tmp_path: Path) -> None:
    """`trainchain serve --workers 2`: 8 requests of 4 epochs, each answered by one worker,
    make one window of 32 inputs that both workers report on /drift (each worker's own
    share would be smaller); /metrics shows the drift gauges of the latest test."""
    args = ["--model", "eeg-watched", "--workers", "2", "--drift-window", "40"]
    args += ["--drift-min-window", "10", "--drift-interval", "0"]
    env = clean_env(TMPDIR=str(tmp_path))
    with serving(registry.settings.home, *args, log=tmp_path / "serve.log", env=env) as served:
        served.wait_healthy(WAIT)
        url = served.url
        ready: set[int] = set()

        def both_workers_watch() -> bool:  # each worker loads the champion on its own
            body = fetch(f"{url}/drift")[1]
            if body["state"] == "collecting":
                ready.add(body["worker"])
            return len(ready) == 2

        eventually(both_workers_watch, "both workers to watch the champion", WAIT, 0.05)
        x = np.concatenate([registry.x_test, registry.x_test])
        for i in range(8):
            code, body = fetch(f"{url}/classify", _npy(x[4 * i : 4 * i + 4]), "application/x-npy")
            assert code == 200, body
        reported: dict[int, int] = {}

        def both_workers_see_all() -> bool:
            body = fetch(f"{url}/drift")[1]
            reported[body["worker"]] = body["window"]
            return len(reported) == 2 and set(reported.values()) == {32}

        eventually(both_workers_see_all, "both workers to report 32 inputs", WAIT, 0.05)
        metrics = fetch(f"{url}/metrics")[1]
        assert 'trainchain_drift_window_size{group="mu",model="eeg-watched"} 32.0' in metrics
    output = served.output()
    assert served.proc.returncode == 0, output
    assert "drift:     window 40 inputs (tested from 10)" in output


def test_a_drift_window_alone_is_tested_from_at_most_its_size(tmp_path: Path) -> None:
    """--drift-window below monitoring:'s min_window (50 by default) is tested from that
    many inputs; --drift-min-window, when given, is kept as given."""
    from trainchain.cli.main import build_parser
    from trainchain.cli.serve import _drift_options

    def monitoring(*argv: str) -> Any:
        args = build_parser().parse_args(["serve", "--model", "m", *argv])
        return _drift_options(args, tmp_path)["monitoring"]

    assert (monitoring("--drift-window", "20").min_window, monitoring().min_window) == (20, 50)
    assert monitoring("--drift-window", "80", "--drift-min-window", "30").min_window == 30


def test_drift_flags_are_checked_before_serving(
    registry: Registry,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Drift options out of range, a --monitoring-config that is no model repository, and
    --retrain-url without a token, not http(s), or with --no-drift, are refused with a
    message naming the option and exit status 2."""
    from trainchain.cli.main import main as cli_main

    monkeypatch.delenv("TRAINCHAIN_ALERT_TOKEN", raising=False)
    home = str(registry.settings.home)
    token = tmp_path / "token"
    token.write_text("t\n")
    hook = "http://127.0.0.1:8088/alerts"
    cases = [
        (["--drift-window", "5"], "--drift-window 5: Input should be greater than or equal to 10"),
        (["--drift-alpha", "2"], "--drift-alpha 2: alpha 2.0 is not a significance level"),
        (
            ["--drift-window", "40", "--drift-min-window", "60"],
            "--drift-window 40 --drift-min-window 60: min_window 60 is larger than window 40",
        ),
        (["--drift-interval", "-1"], "--drift-interval must be a number of seconds >= 0"),
        (["--monitoring-config", str(tmp_path)], f"no trainchain.yaml in {tmp_path}"),
        (["--retrain-url", hook], "--retrain-url needs hooks serve's alert token"),
        (["--retrain-token-file", str(token)], "--retrain-token-file without --retrain-url"),
        (["--retrain-url", "ftp://h/a", "--retrain-token-file", str(token)], "not an http(s)"),
        (["--retrain-url", hook, "--retrain-token-file", str(token), "--no-drift"], "both given"),
        (
            ["--retrain-url", hook, "--retrain-token-file", str(token), "--retrain-cooldown", "x"],
            "'x' is not a duration",
        ),
    ]
    for argv, message in cases:
        assert cli_main(["serve", "--home", home, "--model", "eeg-watched", *argv]) == 2
        assert message in capsys.readouterr().err
