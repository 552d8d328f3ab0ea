"""trainchain serve: the champion over HTTP (real MLflow SQLite registry, real EEG pipelines
trained on synthetic recordings, Flask's test client; one test through a real
`trainchain serve` with gunicorn and two worker processes)."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import clean_env, eventually, fetch, free_port, run_cli, serving
from trainchain.adapters.tracking import CHALLENGER, CHAMPION, Tracker
from trainchain.cli.main import main as cli_main
from trainchain.core.settings import Settings, load_settings
from trainchain.core.sizes import human_size, parse_size, rounded_size
from trainchain.families.cnn import Preprocessing, read_preprocessing
from trainchain.serving.app import create_app, pick_alias, service_of
from trainchain.serving.config import ServeConfig
from trainchain.serving.drain import DrainBody
from trainchain.serving.inputs import RequestError, decode_image, too_large_advice, value_size
from trainchain.serving.models import EEG_DEFAULT_SHAPE, LoadedModel, served_family

pytestmark = pytest.mark.slow

SFREQ = 250.0
PIP = ["scikit-learn==1.9.1", "mne==1.13.2", "numpy==2.4.6", "scipy==1.17.1"]
WAIT = 60.0  # bound on any wait for a model to load or an alias move to be seen


@dataclass
class EEGRegistry:
    """A real registry with EEG models trained on synthetic motor-imagery epochs."""

    settings: Settings
    tracker: Tracker
    x_fit: np.ndarray
    y_fit: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    pipelines: dict[str, Any] = field(default_factory=dict)

    def pipeline(self, c: float) -> Any:
        from trainchain.families.eeg import build_pipeline

        key = f"C={c}"
        if key not in self.pipelines:
            self.pipelines[key] = build_pipeline({"C": c}, SFREQ).fit(self.x_fit, self.y_fit)
        return self.pipelines[key]

    def register(
        self,
        name: str,
        *,
        c: float = 1.0,
        alias: str | None = CHAMPION,
        signature: bool = False,
        heldout: bool = True,
        family: str | None = "eeg",
    ) -> str:
        """Save a fitted pipeline as the chain does (a run with a `model` artifact and the
        held-out arrays), register it, and point ``alias`` at it."""
        import mlflow.sklearn
        from mlflow.models import infer_signature

        pipe = self.pipeline(c)
        tags = {"trainchain.commit": f"{abs(hash((name, c))):040x}"[:40], "trainchain.chain": name}
        if family:
            tags["trainchain.family"] = family
        run_id = self.tracker.start_run(self.tracker.experiment_id(name), f"{name} C={c}", tags)
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            mlflow.sklearn.save_model(
                pipe,
                str(model_dir),
                serialization_format="cloudpickle",
                pip_requirements=PIP,
                signature=infer_signature(self.x_test[:2], pipe.predict(self.x_test[:2]))
                if signature
                else None,
            )
            self.tracker.log_artifacts(run_id, model_dir, "model")
            if heldout:
                np.savez(Path(tmp) / "heldout.npz", X=self.x_test, y=self.y_test)
                self.tracker.log_artifact(run_id, Path(tmp) / "heldout.npz")
        accuracy = float(np.mean(pipe.predict(self.x_test) == self.y_test))
        self.tracker.log(run_id, metrics={"val_accuracy": 0.9, "test_accuracy": accuracy})
        self.tracker.finish(run_id, ok=True)
        version = self.tracker.register(name, run_id, tags)
        if alias == CHAMPION:
            self.tracker.make_champion(name, version)
        elif alias is not None:
            self.tracker.set_alias(name, alias, version)
        return version

    def config(self, name: str, **options: Any) -> ServeConfig:
        options.setdefault("reload_interval", 0.2)
        return ServeConfig.from_settings(self.settings, name, **options)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> EEGRegistry:
    from trainchain.families.eeg import load_epochs
    from trainchain.families.eeg_synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("serving")
    write_synthetic_dataset(
        root / "eeg", subjects=1, difficulty="easy", seed=0, trials_per_class=60
    )
    x, y, _ = load_epochs(root / "eeg")
    settings = load_settings({"TRAINCHAIN_HOME": str(root / "home")})
    reg = EEGRegistry(
        settings=settings,
        tracker=Tracker(settings.tracking_uri, settings.artifacts),
        x_fit=x[:90],
        y_fit=y[:90],
        x_test=x[90:],
        y_test=y[90:],
    )
    reg.register("eeg")
    return reg


def _loaded(app: Flask, version: str | None = None, alias: str = CHAMPION) -> None:
    holder = service_of(app).holder
    ok = holder.wait_for(
        lambda: (m := holder.get(alias)) is not None and (version is None or m.version == version),
        WAIT,
    )
    assert ok, f"{alias} v{version} not loaded: {holder.status[alias]}"


@pytest.fixture
def serve(registry: EEGRegistry) -> Iterator[Callable[..., Flask]]:
    """Make apps over the registry (each loads its champion) and close them afterwards."""
    apps: list[Flask] = []

    def make(name: str = "eeg", wait: bool = True, **options: Any) -> Flask:
        app = create_app(registry.config(name, **options))
        apps.append(app)
        if wait:
            _loaded(app)
        return app

    yield make
    for app in apps:
        service_of(app).close()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _classify(client: FlaskClient, x: Any) -> Any:
    return client.post("/classify", json=x.tolist() if isinstance(x, np.ndarray) else x)


# --------------------------------------------------------------------------- classify


def test_classify_json_and_npy_give_the_models_own_labels(
    registry: EEGRegistry, serve: Callable[..., Flask]
) -> None:
    """JSON and .npy bodies of held-out epochs get the labels the registered pipeline itself
    gives, 'left'/'right', with the model, version and alias that answered; one 2-D epoch
    counts as N=1."""
    client = serve().test_client()
    x = registry.x_test[:12]
    expected = registry.pipeline(1.0).predict(x).tolist()

    by_json = client.post("/classify", json=x.tolist())
    by_npy = client.post(
        "/classify", data=_npy(x.astype(np.float32)), content_type="application/x-npy"
    )
    for response in (by_json, by_npy):
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body == {"labels": expected, "model": "eeg", "version": "1", "alias": "champion"}
    assert set(expected) == {"left", "right"}

    one = client.post("/classify", json=x[3].tolist())
    assert one.status_code == 200 and one.get_json()["labels"] == expected[3:4]


def test_health_model_metrics_and_openapi_describe_the_served_version(
    registry: EEGRegistry, serve: Callable[..., Flask]
) -> None:
    """/health names the loaded version; /model its metrics, commit, chain, family, load time
    and the input shape read from its held-out data; /metrics counts requests by endpoint
    and status, predictions by class, and the served version; /openapi.json describes every
    endpoint with the model's shape and the error schema."""
    client = serve().test_client()
    health = client.get("/health")
    assert health.status_code == 200
    assert health.get_json()["version"] == "1" and health.get_json()["status"] == "ok"

    info = client.get("/model").get_json()
    assert info["model"] == "eeg" and info["version"] == "1" and info["alias"] == "champion"
    assert info["family"] == "eeg" and info["chain"] == "eeg" and len(info["commit"]) == 40
    assert set(info["metrics"]) >= {"val_accuracy", "test_accuracy"}
    assert info["input"] == {
        "shape": ["N", 22, 750],
        "dtype": "float64",
        "shape_from": "held-out data",
    }
    assert info["loaded_at"].endswith("Z")
    assert info["challenger"] is None  # the registry has no challenger alias for eeg

    labels = _classify(client, registry.x_test[:5]).get_json()["labels"]
    client.post("/classify", data=b"[]", content_type="application/json")
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        'trainchain_serving_requests_total{endpoint="/classify",method="POST",status="200"} 1.0'
        in text
    )
    assert (
        'trainchain_serving_requests_total{endpoint="/classify",method="POST",status="400"} 1.0'
        in text
    )
    for label in set(labels):
        line = (
            f'trainchain_serving_predictions_total{{alias="champion",label="{label}",'
            f'model="eeg",version="1"}} {float(labels.count(label))}'
        )
        assert line in text
    assert 'trainchain_serving_model_info{alias="champion",model="eeg",version="1"} 1.0' in text
    assert 'trainchain_serving_request_duration_seconds_count{endpoint="/classify"} 2.0' in text

    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.0")
    assert set(doc["paths"]) == {
        "/classify",
        "/predict",
        "/feedback",
        "/health",
        "/model",
        "/metrics",
        "/drift",
        "/openapi.json",
    }
    classify = doc["paths"]["/classify"]["post"]
    assert set(classify["requestBody"]["content"]) == {"application/json", "application/x-npy"}
    assert {"400", "409", "413", "415", "422", "503"} <= set(classify["responses"])
    epoch = doc["components"]["schemas"]["Epoch"]
    assert (epoch["minItems"], epoch["items"]["minItems"]) == (22, 750)
    assert doc["components"]["schemas"]["Error"]["required"] == ["error", "status"]


def test_shape_comes_from_the_signature_when_recorded(
    registry: EEGRegistry, serve: Callable[..., Flask]
) -> None:
    """A version saved with a tensor signature and no held-out data serves the signature's
    shape; one with neither serves the EEG default 22 x 750."""
    registry.register("eeg-signed", signature=True, heldout=False)
    registry.register("eeg-bare", heldout=False)
    signed = serve("eeg-signed").test_client().get("/model").get_json()["input"]
    bare = serve("eeg-bare").test_client().get("/model").get_json()["input"]
    assert signed == {"shape": ["N", 22, 750], "dtype": "float64", "shape_from": "signature"}
    assert bare["shape_from"] == "default" and tuple(bare["shape"][1:]) == EEG_DEFAULT_SHAPE


def test_no_champion_yet_is_503_then_served_once_promoted(
    registry: EEGRegistry, serve: Callable[..., Flask]
) -> None:
    """Before the model exists /health and /classify answer 503 JSON with the reason; once a
    version becomes champion the running app loads and serves it without a restart."""
    app = serve("eeg-later", wait=False)
    client = app.test_client()
    holder = service_of(app).holder
    assert holder.wait_for(lambda: holder.status[CHAMPION].error is not None, WAIT)
    health = client.get("/health")
    assert health.status_code == 503
    assert "no registered model named 'eeg-later'" in health.get_json()["error"]
    refused = _classify(client, registry.x_test[:1])
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert "no model loaded yet for eeg-later" in refused.get_json()["error"]

    registry.register("eeg-later")
    _loaded(app, "1")
    assert _classify(client, registry.x_test[:1]).get_json()["version"] == "1"


# --------------------------------------------------------------------------- hot reload


def test_promotion_and_rollback_swap_the_model_without_failing_a_request(
    registry: EEGRegistry, serve: Callable[..., Flask]
) -> None:
    """While two client threads keep classifying, a new champion (make_champion) is answered
    within the reload interval and `trainchain rollback` brings the previous one back; no
    request fails and no answer goes back to an older version once a newer one answered."""
    name = "eeg-reload"
    registry.register(name, c=1.0)
    app = serve(name, reload_interval=0.2)
    done = threading.Event()
    # (status, version, how many answers were in when the request was sent)
    seen: list[tuple[int, str, int]] = []
    lock = threading.Lock()
    x = registry.x_test[:4].tolist()

    def hammer() -> None:
        client = app.test_client()
        while not done.is_set():
            with lock:
                sent_after = len(seen)
            response = client.post("/classify", json=x)
            body = response.get_json()
            with lock:
                version = body.get("version", body.get("error"))
                seen.append((response.status_code, version, sent_after))

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        v2 = registry.register(name, c=0.3, alias=None)
        registry.tracker.make_champion(name, v2)
        _loaded(app, v2)

        def answered_by(version: str, since: int) -> int:
            with lock:
                return sum(v == version for _, v, _ in seen[since:])

        # keep hammering across the swap: v2 answers requests sent after its first answer
        eventually(lambda: answered_by(v2, 0) >= 5, f"five answers of v{v2}", WAIT, 0.05)
        with lock:
            mark = len(seen)
        out = run_cli("rollback", name, "--home", str(registry.settings.home))
        assert out.returncode == 0, out.stderr
        assert f"from v{v2} to v1" in out.stdout
        _loaded(app, "1")
        with lock:
            rolled_back = len(seen)
        eventually(lambda: answered_by("1", rolled_back) >= 3, "three answers of v1", WAIT, 0.05)
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert seen and all(status == 200 for status, _, _ in seen), {s for s, _, _ in seen}
    before, after = [v for _, v, _ in seen[:mark]], [v for _, v, _ in seen[mark:]]
    assert before[0] == "1" and v2 in before
    # once v2 answered, v1 does not come back: a request sent after v2's first answer is
    # answered by v2 (one sent before may still finish on v1, which it had already read)
    first_v2 = before.index(v2)
    late = [v for _, v, sent_after in seen[:mark] if sent_after > first_v2]
    assert late and "1" not in late, late
    assert after[-1] == "1"
    assert app.test_client().get("/model").get_json()["version"] == "1"


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(
    registry: EEGRegistry, serve: Callable[..., Flask]
) -> None:
    """A new champion whose stored model is broken is not swapped in: the old version keeps
    answering and /health reports the failed load."""
    name = "eeg-broken"
    registry.register(name)
    app = serve(name)
    v2 = registry.register(name, alias=None)
    run_id = registry.tracker.version_run_id(name, v2)
    broken = Path(registry.tracker.artifact_uri(run_id or "").removeprefix("file://"))
    (broken / "MLmodel").unlink()
    registry.tracker.make_champion(name, v2)
    holder = service_of(app).holder
    assert holder.wait_for(lambda: "failed" in (holder.status[CHAMPION].error or ""), WAIT)

    client = app.test_client()
    health = client.get("/health")
    assert health.status_code == 200
    body = health.get_json()
    assert body["version"] == "1"
    assert f"loading v{v2} failed" in body["error"] and "still serving v1" in body["error"]
    assert _classify(client, registry.x_test[:2]).get_json()["version"] == "1"


# --------------------------------------------------------------------------- canary, shadow


def test_pick_alias_routes_draws_under_the_share_to_a_challenger_of_the_same_family(
    tmp_path: Path,
) -> None:
    """The canary decision: below the share to the challenger; at or above it, without a
    challenger, or with a challenger of another family, to the champion."""
    eeg = LoadedModel("m", "1", served_family("eeg", False), None, tmp_path)
    other = LoadedModel("m", "2", served_family("eeg", False), None, tmp_path)
    cnn = LoadedModel("m", "3", served_family("cnn", True), None, tmp_path)
    assert pick_alias(0.1, 0.05, eeg, other) == CHALLENGER
    assert pick_alias(0.1, 0.1, eeg, other) == CHAMPION
    assert pick_alias(1.0, 0.999, eeg, other) == CHALLENGER
    assert pick_alias(0.0, 0.0, eeg, other) == CHAMPION
    assert pick_alias(0.5, 0.0, eeg, None) == CHAMPION
    assert pick_alias(0.5, 0.0, eeg, cnn) == CHAMPION
    assert served_family(None, True) == "cnn" and served_family(None, False) == "eeg"
    assert served_family("no-such-family", False) == "eeg"


def test_canary_sends_about_its_share_to_the_challenger(
    registry: EEGRegistry, serve: Callable[..., Flask]
) -> None:
    """--canary-share 0.3: about 30% of requests (seeded) are answered by the challenger's
    version, each answer naming who answered; the rest by the champion."""
    name = "eeg-canary"
    registry.register(name, c=1.0)
    challenger = registry.register(name, c=0.3, alias=CHALLENGER)
    app = serve(name, canary_share=0.3, seed=7)
    _loaded(app, challenger, CHALLENGER)
    client = app.test_client()
    answers = [_classify(client, registry.x_test[:1]).get_json() for _ in range(200)]
    by_alias = {a["alias"] for a in answers}
    assert by_alias == {CHAMPION, CHALLENGER}
    assert all(a["version"] == ("1" if a["alias"] == CHAMPION else challenger) for a in answers)
    share = sum(a["alias"] == CHALLENGER for a in answers) / len(answers)
    assert 0.15 <= share <= 0.45
    served = client.get("/model").get_json()["challenger"]
    assert (served["version"], served["alias"], served["served"]) == (challenger, CHALLENGER, True)
    assert (served["mode"], served["canary_share"], served["family"]) == ("canary", 0.3, "eeg")


def test_model_reports_the_challenger_alias_even_when_it_is_not_served(
    registry: EEGRegistry, serve: Callable[..., Flask]
) -> None:
    """/model names the registry's challenger version without --canary-share or --shadow,
    says it is not served and why, and follows the alias when it moves."""
    name = "eeg-challenged"
    registry.register(name, c=1.0)
    v2 = registry.register(name, c=0.3, alias=CHALLENGER)
    app = serve(name)
    client = app.test_client()
    assert client.get("/model").get_json()["challenger"] == {
        "version": v2,
        "alias": CHALLENGER,
        "served": False,
        "mode": None,
        "canary_share": 0.0,
        "why": "this service was started without --canary-share or --shadow",
    }
    v3 = registry.register(name, c=0.5, alias=CHALLENGER)
    holder = service_of(app).holder
    assert holder.wait_for(lambda: holder.registered_version(CHALLENGER) == v3, WAIT)
    assert client.get("/model").get_json()["challenger"]["version"] == v3


def test_shadow_answers_from_the_champion_and_logs_the_comparison(
    registry: EEGRegistry, serve: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """--shadow: every answer comes from the champion; the challenger classifies the same
    epochs in the background, one log line shows both labels and whether they agree, and
    /metrics counts the agreeing and disagreeing predictions."""
    caplog.set_level(logging.INFO, logger="trainchain.serving")
    name = "eeg-shadow"
    registry.register(name, c=1.0)
    challenger = registry.register(name, c=0.3, alias=CHALLENGER)
    app = serve(name, shadow=True)
    _loaded(app, challenger, CHALLENGER)
    client = app.test_client()
    x = registry.x_test[:6]
    for _ in range(3):
        body = _classify(client, x).get_json()
        assert (body["alias"], body["version"]) == (CHAMPION, "1")

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("shadow:")]

    eventually(lambda: len(logged()) >= 3, "three shadow comparisons logged", WAIT, poll=0.05)
    lines = logged()
    assert len(lines) == 3
    champion_labels = ",".join(registry.pipeline(1.0).predict(x))
    shadow_labels = ",".join(registry.pipeline(0.3).predict(x))
    assert f"champion v1 [{champion_labels}]" in lines[0]
    assert f"challenger v{challenger} [{shadow_labels}]" in lines[0]
    agree = sum(
        a == b for a, b in zip(champion_labels.split(","), shadow_labels.split(","), strict=True)
    )
    assert f"({agree} of 6 agree)" in lines[0]
    text = client.get("/metrics").get_data(as_text=True)
    assert f'trainchain_serving_shadow_comparisons_total{{outcome="agree"}} {3.0 * agree}' in text
    assert (
        f'trainchain_serving_shadow_comparisons_total{{outcome="disagree"}} {3.0 * (6 - agree)}'
        in text
    )


# --------------------------------------------------------------------------- bad input


def _pickled_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


GOOD = np.zeros((2, 22, 750))
BAD_CLASSIFY = [
    (
        "wrong shape",
        "application/json",
        json.dumps(np.zeros((3, 22, 749)).tolist()),
        400,
        "wrong shape: received an array of shape (3, 22, 749), expected (N, 22, 750)",
    ),
    (
        "wrong shape npy",
        "application/x-npy",
        _npy(np.zeros((2, 750, 22))),
        400,
        "received an array of shape (2, 750, 22)",
    ),
    (
        "strings",
        "application/json",
        json.dumps([[["1.5"] * 750] * 22]),
        400,
        'wrong type at [0][0][0]: received a string ("1.5"), expected a number',
    ),
    (
        "a boolean among numbers",
        "application/json",
        json.dumps([[[0.0] * 749 + [True]] * 22]),
        400,
        "wrong type at [0][0][749]: received a boolean (true)",
    ),
    (
        "nested wrongly",
        "application/json",
        json.dumps([[0.0] * 750, [[0.0]] * 750]),
        400,
        "arrays nested unevenly: [0][0] is a number but [1][0] is an array",
    ),
    (
        "ragged",
        "application/json",
        json.dumps([[0.0] * 750] * 21 + [[0.0] * 749]),
        400,
        "ragged arrays: [21] has 749 items but [0] has 750",
    ),
    (
        "NaN literal",
        "application/json",
        "[[" + ",".join(["NaN"] * 750) + "]]",
        400,
        "non-finite values: the body holds NaN",
    ),
    (
        "overflowing number",
        "application/json",
        json.dumps([[[0.0] * 750] * 22]).replace("0.0", "1e999", 1),
        400,
        "non-finite values: 1 NaN or infinite value(s), the first at epoch 0, channel 0, sample 0",
    ),
    (
        "NaN in npy",
        "application/x-npy",
        _npy(np.where(GOOD == 0, np.nan, GOOD)),
        400,
        "non-finite values: 33000 NaN or infinite value(s)",
    ),
    ("empty JSON body", "application/json", b"", 400, "empty body"),
    ("empty npy body", "application/x-npy", b"", 400, "empty body"),
    ("not JSON", "application/json", b"{oops", 400, "the body is not valid JSON"),
    ("an object", "application/json", b'{"epochs": []}', 400, "wrong type: received an object"),
    ("no epochs", "application/json", b"[]", 400, "empty array: expected at least one epoch"),
    ("too deep", "application/json", b"[[[[1]]]]", 400, "arrays nested too deeply"),
    ("pickled npy", "application/x-npy", _pickled_npy(), 400, "dtype object"),
    ("boolean npy", "application/x-npy", _npy(GOOD > 0), 400, "dtype bool"),
    ("npz", "application/x-npy", b"PK\x03\x04rest", 400, ".npz archive"),
    ("truncated npy", "application/x-npy", _npy(GOOD)[:-8], 400, "the .npy is truncated"),
    ("garbage npy", "application/x-npy", b"\x93NUMPY garbage", 400, "not a readable .npy"),
    (
        "too many epochs",
        "application/x-npy",
        _npy(np.zeros((257, 22, 750), np.float16)),
        413,
        "too many epochs: received 257, at most 256",
    ),
    ("wrong content type", "text/plain", b"[]", 415, "content type 'text/plain' is not read here"),
    (
        "form content type",
        "application/x-www-form-urlencoded",
        b"a=1",
        415,
        "send epochs as application/json or application/x-npy",
    ),
]


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    [case[1:] for case in BAD_CLASSIFY],
    ids=[case[0] for case in BAD_CLASSIFY],
)
def test_bad_classify_bodies_get_a_4xx_that_says_what_was_wrong(
    serve: Callable[..., Flask], content_type: str, body: Any, status: int, message: str
) -> None:
    """Each kind of bad /classify body gets its 4xx status and a JSON error naming what was
    received and what was expected."""
    response = serve().test_client().post("/classify", data=body, content_type=content_type)
    assert response.status_code == status
    assert response.is_json
    error = response.get_json()
    assert message in error["error"]
    assert error["status"] == status


def test_transport_errors_are_json_too(serve: Callable[..., Flask]) -> None:
    """A body over --max-body is 413, a wrong method 405 (with Allow), an unknown path 404,
    an image to an EEG model 409 pointing at /classify: all JSON with the status."""
    client = serve(max_body=parse_size("64KiB")).test_client()
    big = client.post("/classify", data=b"[" * 70_000, content_type="application/json")
    assert big.status_code == 413
    assert "larger than the limit of 64 KiB" in big.get_json()["error"]

    wrong_method = client.get("/classify")
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"]
    assert "GET is not allowed on /classify" in wrong_method.get_json()["error"]

    missing = client.get("/nowhere")
    assert missing.status_code == 404 and "no endpoint /nowhere" in missing.get_json()["error"]

    image = client.post("/predict", data=b"\x89PNG", content_type="image/png")
    assert image.status_code == 409
    assert "eeg-family model, not cnn; send it to POST /classify" in image.get_json()["error"]
    assert client.post("/predict", data=b"x", content_type="text/csv").status_code == 415


def test_the_413_for_epochs_says_how_many_fit_and_how_much_smaller_npy_is() -> None:
    """Over --max-body, /classify's 413 advice counts the epochs of the served shape that fit:
    for JSON at its own bytes per value (judged from the body's first bytes), with .npy's
    float64 and float32 counts and how many times smaller they are; for float64 .npy, the
    count and float32's; without a shape, the advice alone."""
    shape = (22, 750)
    sample = json.dumps(np.full((2, 22, 750), -1.9300000190734863e-05).tolist()).encode()
    per_value = value_size(sample[:65536], "application/json")
    assert 24 <= per_value <= 26  # "-1.9300000190734863e-05, " and the brackets
    text, details = too_large_advice(16 << 20, "application/json", shape, 256, per_value)
    fit = int((16 << 20) // (per_value * 22 * 750))
    assert details == {"max_epochs_per_request": fit} and 40 <= fit <= 46
    assert text.startswith("as JSON a 22 x 750 epoch takes about ")
    assert f"split the batch into requests of at most {fit} epochs, or send the epochs as " in text
    assert (
        "application/x-npy (np.save): about 3x smaller as float64 (at most 127 epochs per "
        "request), about 6x smaller as float32 (at most 254)" in text
    )

    npy_sample = _npy(np.zeros((200, 22, 750)))[:65536]
    assert value_size(npy_sample, "application/x-npy") == 8.0
    assert value_size(_npy(np.zeros((2, 22, 750), np.float32)), "application/x-npy") == 4.0
    assert value_size(b"garbage", "application/x-npy") == 8.0
    assert value_size(b"[[[1, 2]]]", "application/json") == 24.0  # too few to tell
    text, details = too_large_advice(16 << 20, "application/x-npy", shape, 256, 8.0)
    assert details == {"max_epochs_per_request": 127}
    assert "a 22 x 750 epoch takes 129 KiB; split the batch into requests of at most 127" in text
    assert "send float32 (x.astype(np.float32)), half the bytes of float64 (at most 254" in text
    assert too_large_advice(1 << 20, "application/json", None, 256, 24.0) == (
        "split the batch into smaller requests, or send the epochs as application/x-npy "
        "(np.save): about 3x smaller as float64, about 6x smaller as float32",
        {},
    )
    assert (
        "--max-body must grow" in too_large_advice(8 << 10, "application/json", shape, 256, 24.0)[0]
    )


def test_drain_reads_the_unread_rest_of_a_body_up_to_its_bound() -> None:
    """DrainBody: after an app that reads nothing answered, a body of at most the bound is
    read to its end (what the app read is not read twice); a larger one is left alone; a
    chunked one is read to its end or to the bound."""
    from werkzeug.test import EnvironBuilder

    def answer(read: int) -> Any:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            if read:
                environ["wsgi.input"].read(read)
            start_response("413 Request Entity Too Large", [])
            return [b"{}"]

        return app

    def left_after(size: int, read: int = 0, chunked: bool = False) -> int:
        environ = EnvironBuilder(method="POST", data=b"x" * size).get_environ()
        raw = environ["wsgi.input"]
        if chunked:
            del environ["CONTENT_LENGTH"]
            environ["wsgi.input_terminated"] = True
        DrainBody(answer(read), bound=4000)(environ, lambda *_: None)
        return size - raw.tell()

    assert left_after(4000) == 0 and left_after(3000, read=1000) == 0
    assert left_after(4001) == 4001
    assert left_after(3000, chunked=True) == 0 and left_after(9000, chunked=True) == 5000


def test_serve_config_and_command_line_errors(
    registry: EEGRegistry, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sizes parse with binary units; a missing model, canary with shadow, a share outside 0..1 and
    an unreadable size are refused with a message and exit status 2."""
    assert parse_size("16MiB") == 16 * 1024 * 1024 and parse_size("500kB") == 512_000
    assert human_size(16 * 1024 * 1024) == "16 MiB"
    monkeypatch.delenv("TRAINCHAIN_SERVE_MODEL", raising=False)
    home = str(registry.settings.home)
    cases = [
        ([], "no model to serve: --model is not given and TRAINCHAIN_SERVE_MODEL is not set"),
        (["--model", "eeg", "--canary-share", "0.1", "--shadow"], "--shadow and --canary-share"),
        (["--model", "eeg", "--canary-share", "1.5"], "--canary-share must be between 0 and 1"),
        (["--model", "eeg", "--max-body", "lots"], "--max-body 'lots' is not a size"),
    ]
    for argv, message in cases:
        assert cli_main(["serve", "--home", home, *argv]) == 2
        assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- images


def _mlmodel_with(folder: Path, preprocessing: Preprocessing) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text(
        yaml.safe_dump({"flavors": {}, "metadata": {"trainchain": preprocessing.as_metadata()}})
    )
    return folder


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_are_converted_and_resized_as_the_mlmodel_records(tmp_path: Path) -> None:
    """The preprocessing read back from an MLmodel (read_preprocessing) turns a PNG of any
    size and mode into (1, height, width, channels) uint8: RGBA to RGB, RGB to grayscale,
    resized to image_size, colours kept."""
    from PIL import Image

    rgb = read_preprocessing(
        _mlmodel_with(tmp_path / "rgb", Preprocessing((32, 48), "rgb", ("cat", "dog")))
    )
    gray = read_preprocessing(
        _mlmodel_with(tmp_path / "gray", Preprocessing((24, 24), "grayscale", ("a", "b", "c")))
    )
    png = _png(Image.new("RGBA", (100, 60), (200, 30, 10, 255)))
    pixels = decode_image(png, rgb, max_pixels=10_000)
    assert pixels.shape == (1, 32, 48, 3) and pixels.dtype == np.uint8
    assert np.all(pixels[0, :, :] == (200, 30, 10))
    g = decode_image(_png(Image.new("RGB", (7, 9), (255, 255, 255))), gray, max_pixels=10_000)
    assert g.shape == (1, 24, 24, 1) and np.all(g == 255)
    jpeg = io.BytesIO()
    Image.new("RGB", (24, 24), (0, 0, 0)).save(jpeg, format="JPEG")
    assert decode_image(jpeg.getvalue(), gray, max_pixels=10_000).shape == (1, 24, 24, 1)


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"", 400, "empty body"),
        (b"GIF89a but not really", 400, "unreadable image"),
        (b"plain text, not an image", 400, "Pillow does not recognise these 24 bytes"),
        ("truncated", 400, "unreadable image (PNG 64x64)"),
        ("huge", 413, "the image is too large: 200 x 100 = 20000 pixels, at most 10000"),
    ],
    ids=["empty", "bad header", "not an image", "truncated", "too many pixels"],
)
def test_bad_images_are_refused_before_they_reach_the_model(
    tmp_path: Path, data: Any, status: int, message: str
) -> None:
    """Empty, unrecognised, truncated and oversized images are a 400 or 413 RequestError
    with the reason; the pixel count is checked from the header, before decoding."""
    from PIL import Image

    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    samples = {"truncated": _png(noisy)[:-600], "huge": _png(Image.new("RGB", (200, 100)))}
    prep = Preprocessing((16, 16), "rgb", ("a", "b"))
    with pytest.raises(RequestError) as caught:
        decode_image(samples.get(data, data) if isinstance(data, str) else data, prep, 10_000)
    assert caught.value.status == status
    assert message in caught.value.message


@pytest.mark.tensorflow
def test_predict_answers_with_a_keras_cnn_champion(
    registry: EEGRegistry,
    serve: Callable[..., Flask],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A tiny real Keras CNN saved with trainchain's preprocessing metadata and made champion:
    /predict (multipart and raw PNG) returns its label and the probabilities the model itself
    gives for the image, printing nothing (no Keras progress bar per request); /classify on
    it is a 409 pointing at /predict."""
    pytest.importorskip("tensorflow")
    import keras
    from PIL import Image

    from trainchain.families.cnn import input_layers, save_model

    prep = Preprocessing((16, 16), "rgb", ("cat", "dog", "owl"))
    keras.utils.set_random_seed(0)
    inputs, x = input_layers(prep)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).integers(0, 255, (12, 16, 16, 3)).astype(np.uint8)
    model.fit(images, np.arange(12) % 3, epochs=1, verbose=0)
    save_model(model, tmp_path / "model", prep)

    tracker = registry.tracker
    name = "cnn"
    run_id = tracker.start_run(tracker.experiment_id(name), "cnn", {"trainchain.family": "cnn"})
    tracker.log_artifacts(run_id, tmp_path / "model", "model")
    tracker.finish(run_id, ok=True)
    tracker.make_champion(name, tracker.register(name, run_id, {"trainchain.family": "cnn"}))

    client = serve(name).test_client()
    image = images[5]
    expected = model.predict(image[np.newaxis].astype(np.float32), verbose=0)[0]
    png = _png(Image.fromarray(image))
    capfd.readouterr()
    for response in (
        client.post("/predict", data={"image": (io.BytesIO(png), "x.png")}),
        client.post("/predict", data=png, content_type="image/png"),
    ):
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert list(body["probabilities"]) == ["cat", "dog", "owl"]
        assert np.allclose(list(body["probabilities"].values()), expected, atol=1e-5)
        assert body["label"] == prep.class_names[int(np.argmax(expected))]
        assert (body["model"], body["version"], body["alias"]) == ("cnn", "1", "champion")
    printed = capfd.readouterr()
    assert "step" not in printed.out + printed.err
    wrong = client.post("/classify", json=GOOD.tolist())
    assert wrong.status_code == 409 and "send it to POST /predict" in wrong.get_json()["error"]
    unreadable = client.post("/predict", data=b"not an image", content_type="image/png")
    assert unreadable.status_code == 400 and "unreadable image" in unreadable.get_json()["error"]


# --------------------------------------------------------------------------- the real server


def test_trainchain_serve_runs_gunicorn_workers_that_follow_the_champion(
    registry: EEGRegistry, tmp_path: Path
) -> None:
    """`trainchain serve --workers 2` prints its URL and champion, answers /classify with the
    model's labels, aggregates /metrics over both worker processes, follows a promotion,
    and on SIGTERM exits 0 leaving no temporary folder behind."""
    name = "eeg-served"
    registry.register(name, c=1.0)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = clean_env(TMPDIR=str(tmp), TRAINCHAIN_SERVE_MODEL=name)
    args = ["--workers", "2", "--reload-interval", "0.5"]
    with serving(registry.settings.home, *args, log=tmp_path / "serve.log", env=env) as served:
        served.wait_healthy(WAIT)
        url = served.url
        x = registry.x_test[:8]
        expected = registry.pipeline(1.0).predict(x).tolist()
        for _ in range(8):  # spread over both workers
            code, body = fetch(f"{url}/classify", json.dumps(x.tolist()).encode())
            assert code == 200 and body["labels"] == expected and body["version"] == "1"
        code, body = fetch(f"{url}/classify", b"[1, 2]")
        assert code == 400 and "wrong shape" in body["error"]

        v2 = registry.register(name, c=0.3)
        answered: set[str] = set()

        def promoted() -> bool:
            code, body = fetch(f"{url}/classify", _npy(x), "application/x-npy")
            assert code == 200, body
            answered.add(body["version"])
            return body["version"] == v2 and fetch(f"{url}/health")[1]["version"] == v2

        eventually(promoted, f"v{v2} to answer and be healthy", WAIT, poll=0.05)
        assert answered <= {"1", v2} and v2 in answered

        _, metrics = fetch(f"{url}/metrics")
        pids = {
            line.split('pid="')[1].split('"')[0]
            for line in metrics.splitlines()
            if line.startswith("trainchain_serving_model_version{")
        }
        assert len(pids) == 2, metrics
        assert (
            'trainchain_serving_requests_total{endpoint="/classify",method="POST",status="400"} 1.0'
            in metrics
        )
    output = served.output()
    assert served.proc.returncode == 0, output
    assert f"serving:   {name} at {url} (2 worker(s))" in output
    assert f"champion:  {name} v1" in output
    assert list(tmp.iterdir()) == [], "trainchain serve left temporary files"
    shutil.rmtree(tmp)


def test_serve_refuses_a_model_the_registry_does_not_hold(registry: EEGRegistry) -> None:
    """`trainchain serve --model` of a name the registry does not hold fails at once, as
    `trainchain models` does: exit 7, the same message, and a hint naming --wait-for-model."""
    home = str(registry.settings.home)
    port = str(free_port())
    served = run_cli("serve", "--home", home, "--model", "no-such-model", "--port", port)
    listed = run_cli("models", "no-such-model", "--home", home)
    assert (served.returncode, listed.returncode) == (7, 7), served.stderr
    first = served.stderr.splitlines()[0]
    assert first == listed.stderr.splitlines()[0]
    assert first.startswith("error: no registered model named 'no-such-model' in sqlite:")
    assert "pass --wait-for-model to start now" in served.stderr
    assert "serving:" not in served.stdout


def _post(port: int, path: str, body: bytes, content_type: str) -> tuple[int, Any]:
    """POST as most clients do: the whole body first, then read the answer (http.client)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"content-type": content_type})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_wait_for_model_and_bodies_over_the_limit_get_their_json_answer(
    registry: EEGRegistry, tmp_path: Path
) -> None:
    """`serve --wait-for-model --max-body 2MiB` of a model not registered yet starts, answers
    503 until it has a champion, then serves it. Bodies over the limit (up to 4x it), sent
    whole before the answer is read, get the JSON error, not a reset: a 503 before the model,
    then a 413 whose advice (.npy, at most N epochs) works when followed."""
    name = "eeg-awaited"
    args = ["--model", name, "--wait-for-model", "--max-body", "2MiB", "--reload-interval", "0.2"]
    args.append("--no-drift")
    x = registry.x_test[:20]
    as_json = json.dumps(x.tolist()).encode()  # about 7.3 MiB: more than loopback buffers
    as_npy = _npy(x)  # about 2.5 MiB: 20 float64 epochs
    assert (2 << 20) < len(as_npy) < len(as_json) < (8 << 20)

    def not_registered() -> bool:
        if not served.health():  # nothing answers yet
            return False
        code, body = fetch(f"{served.url}/health")
        return code == 503 and "no registered model named" in body["error"]

    with serving(registry.settings.home, *args, log=tmp_path / "serve.log") as served:
        port = served.port
        eventually(not_registered, "/health to say 503, not registered", WAIT, 0.2, served.output)
        code, body = _post(port, "/classify", as_json, "application/json")
        assert code == 503 and f"no registered model named {name!r}" in body["error"]

        registry.register(name)
        served.wait_healthy(WAIT)
        code, body = _post(port, "/classify", as_json, "application/json")
        assert code == 413, body
        fit, error = body["max_epochs_per_request"], body["error"]
        assert error.startswith(
            f"the body ({rounded_size(len(as_json))}) is larger than the limit of 2 MiB "
            "(trainchain serve --max-body): as JSON a 22 x 750 epoch takes about "
        )
        assert (
            f"split the batch into requests of at most {fit} epochs, or send the epochs as "
            "application/x-npy (np.save): about 3x smaller as float64 (at most 15 epochs" in error
        )
        assert body["max_body"] == 2 << 20 and fit >= 1
        code, body = _post(
            port, "/classify", json.dumps(x[:fit].tolist()).encode(), "application/json"
        )
        assert code == 200 and len(body["labels"]) == fit, body

        code, body = _post(port, "/classify", as_npy, "application/x-npy")
        assert code == 413 and body["max_epochs_per_request"] == 15, body
        assert (
            "send float32 (x.astype(np.float32)), half the bytes of float64 (at most 31"
            in body["error"]
        )
        code, body = _post(port, "/classify", _npy(x[:15]), "application/x-npy")
        assert code == 200 and len(body["labels"]) == 15, body
    output = served.output()
    assert served.proc.returncode == 0, output
    assert f"champion:  none yet in sqlite:///{registry.settings.home}" in output
