"""Fuzzing trainchain serve: no request, however malformed, gets a 5xx (about 3000 cases).

Schemathesis generates requests from the service's own /openapi.json, bodies that fit
it (positive) and bodies that break it (negative), and checks each response against the
document (documented status, content type and body schema). Hypothesis adds arbitrary
bytes under arbitrary content types, methods and paths, and arrays of every numeric
dtype, byte order and extreme value as .npy and JSON.

The served model is a real EEG pipeline (band-pass, CSP, SVM) in a real SQLite registry,
trained on synthetic epochs cut to 3 channels x 64 samples: the service reads that shape
from the version's held-out data and publishes it in /openapi.json, so valid bodies are
small enough to generate by the hundred (22 x 750 numbers per epoch are not).

Every Hypothesis test runs as an inner ``@given`` function: Hypothesis's pytest plugin
otherwise writes a cache into ./.hypothesis while collecting.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.test_serving import EEGRegistry, _loaded
from trainchain.adapters.tracking import Tracker
from trainchain.core.settings import load_settings
from trainchain.serving.app import create_app, service_of

pytestmark = pytest.mark.slow

SHAPE = (3, 64)
CHANNELS = (7, 9, 11)  # C3, Cz, C4 of the BCI IV 2a montage
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
FUZZ = settings(
    deadline=None,
    database=None,  # nothing written into the working tree
    derandomize=True,  # the same cases on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", autouse=True)
def _hypothesis_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hypothesis caches under ./.hypothesis even without a database: keep it out of the
    working tree."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    from trainchain.families.eeg import load_epochs
    from trainchain.families.eeg_synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("fuzz")
    write_synthetic_dataset(
        root / "eeg", subjects=1, difficulty="easy", seed=1, trials_per_class=60
    )
    x, y, _ = load_epochs(root / "eeg")
    x = np.ascontiguousarray(x[:, list(CHANNELS), 150 : 150 + SHAPE[1]])
    settings_ = load_settings({"TRAINCHAIN_HOME": str(root / "home")})
    registry = EEGRegistry(
        settings=settings_,
        tracker=Tracker(settings_.tracking_uri, settings_.artifacts),
        x_fit=x[:90],
        y_fit=y[:90],
        x_test=x[90:],
        y_test=y[90:],
    )
    registry.pipelines["C=1.0"] = _small_pipeline().fit(registry.x_fit, registry.y_fit)
    registry.register("eeg-small")
    app = create_app(registry.config("eeg-small", max_body=256 * 1024))
    _loaded(app)
    yield app
    service_of(app).close()


def _small_pipeline() -> Any:
    from trainchain.families.eeg import build_pipeline

    return build_pipeline({"csp_components": 2}, 250.0)


@pytest.fixture(scope="module")
def api(app: Flask) -> Any:
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


def test_the_published_shape_is_the_models(app: Flask) -> None:
    """The service publishes the served model's own epoch shape (read from its held-out
    data), which is what makes the schema's valid bodies small."""
    doc = app.test_client().get("/openapi.json").get_json()
    epoch = doc["components"]["schemas"]["Epoch"]
    assert (epoch["minItems"], epoch["items"]["maxItems"]) == SHAPE


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("label", ["POST /classify", "POST /predict"])
def test_schema_generated_requests_never_get_a_5xx(
    api: Any, label: str, mode: GenerationMode
) -> None:
    """Requests Schemathesis generates from /openapi.json, fitting it and breaking it, get
    a documented status (never 5xx) with a body that matches the documented schema."""
    operation = api.find_operation_by_label(label)
    assert operation is not None
    statuses: list[int] = []

    # valid /classify bodies cost Hypothesis ~0.1 s each to draw (hundreds of floats)
    examples = 150 if label == "POST /classify" else 400

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(FUZZ, max_examples=examples)
    def run(case: Any) -> None:
        response = case.call()
        statuses.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()
    assert len(statuses) >= 100 and max(statuses) < 500
    if label == "POST /classify" and mode == GenerationMode.POSITIVE:
        assert 200 in statuses  # valid bodies reached the model


@pytest.mark.parametrize(
    "label", ["GET /health", "GET /model", "GET /metrics", "GET /drift", "GET /openapi.json"]
)
def test_get_endpoints_answer_as_documented(api: Any, label: str) -> None:
    """Each GET endpoint answers with a documented status, content type and body."""
    operation = api.find_operation_by_label(label)
    case = operation.Case()
    response = case.call()
    case.validate_response(response, checks=CHECKS)
    assert response.status_code == 200


CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/x-npy",
            "image/png",
            "image/jpeg",
            "application/octet-stream",
            "multipart/form-data",
            "multipart/form-data; boundary=xyz",
            "text/plain",
            "",
        ]
    ),
    # printable ASCII: a test client cannot send control characters in a header at all
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
PATHS = st.one_of(
    st.sampled_from(
        ["/classify", "/predict", "/health", "/model", "/metrics", "/openapi.json", "/"]
    ),
    st.text(alphabet=st.characters(codec="ascii", categories=["L", "N", "P"]), max_size=30).map(
        lambda s: "/" + s.lstrip("/")  # "//host:port/..." would name another server
    ),
)


def test_arbitrary_bytes_methods_and_paths_never_get_a_5xx(app: Flask) -> None:
    """Any bytes under any content type, method and path: a status below 500, and every
    error is a JSON body with the message and the status."""
    client = app.test_client()

    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
        path=PATHS,
        content_type=CONTENT_TYPES,
        body=st.one_of(
            st.binary(max_size=2048),
            st.binary(max_size=64).map(lambda b: b"\x93NUMPY" + b),
            st.binary(max_size=64).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
            st.binary(max_size=64).map(lambda b: b"[[[" + b),
        ),
    )
    @settings(FUZZ, max_examples=1500)
    def run(method: str, path: str, content_type: str, body: bytes) -> None:
        headers = {"content-type": content_type} if content_type else {}
        response = client.open(path, method=method, data=body, headers=headers)
        assert response.status_code < 500, response.get_data()[:300]
        if response.status_code >= 400 and method != "HEAD":
            error = response.get_json()
            assert isinstance(error["error"], str) and error["status"] == response.status_code

    run()


FLOAT_DTYPES = hnp.floating_dtypes(sizes=(16, 32, 64), endianness="?")
NUMERIC_DTYPES = st.one_of(
    FLOAT_DTYPES, hnp.integer_dtypes(endianness="?"), hnp.unsigned_integer_dtypes(endianness="?")
)


@st.composite
def epochs(draw: Any) -> np.ndarray:
    """Arrays of the served shape (or a near miss), any numeric dtype, any values."""
    n = draw(st.integers(0, 4))
    shape = draw(
        st.sampled_from([(n, *SHAPE), SHAPE, (n, SHAPE[1], SHAPE[0]), (n, SHAPE[0], SHAPE[1] + 1)])
    )
    dtype = draw(NUMERIC_DTYPES)
    array = draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(dtype, allow_subnormal=True)))
    return np.asfortranarray(array) if draw(st.booleans()) else array


def test_arrays_of_any_dtype_and_values_get_labels_or_a_4xx(app: Flask) -> None:
    """Arrays of every numeric dtype and byte order, with NaN, infinities, huge and subnormal
    values, near-miss shapes, as .npy or JSON: labels for well-formed finite epochs, else a
    4xx that names the problem; never a 5xx."""
    client = app.test_client()

    @given(array=epochs(), as_json=st.booleans())
    @settings(FUZZ, max_examples=400)
    def run(array: np.ndarray, as_json: bool) -> None:
        check(client, array, as_json)

    run()


def check(client: Any, array: np.ndarray, as_json: bool) -> None:
    """/classify's answer to ``array``: labels if well-formed and finite, else the 4xx."""
    if as_json:
        values = array.astype(np.float64).tolist()
        text = json.dumps(values)  # NaN/Infinity literals, which the service refuses
        response = client.post("/classify", data=text, content_type="application/json")
    else:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        response = client.post(
            "/classify", data=buffer.getvalue(), content_type="application/x-npy"
        )
    status = response.status_code
    assert status < 500, response.get_json()
    body = response.get_json()
    well_formed = array.shape[-2:] == SHAPE and (array.ndim == 2 or array.shape[0] >= 1)
    finite = np.isfinite(array.astype(np.float64)).all() if array.size else True
    if status == 200:
        assert well_formed and finite
        assert len(body["labels"]) == (1 if array.ndim == 2 else array.shape[0])
        assert set(body["labels"]) <= {"left", "right"}
    else:
        assert status in (400, 413, 422), body
        if not well_formed:  # JSON parsing may meet an Infinity before the shape
            words = ("shape", "no epochs", "empty array", *(() if finite else ("non-finite",)))
            assert any(word in body["error"] for word in words), (array.shape, body)
        elif not finite:
            assert "non-finite" in body["error"]


def _image_bytes(fmt: str, mode: str, size: tuple[int, int]) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 255, (size[1], size[0], channels), np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def damaged_images(draw: Any) -> bytes:
    """A real PNG, JPEG, GIF or BMP with some bytes overwritten, cut short or extended."""
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP"]))
    mode = draw(st.sampled_from(["L", "RGB"] + (["RGBA"] if fmt == "PNG" else [])))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    data = bytearray(_image_bytes(fmt, mode, size))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=32))


def test_image_decoding_gives_the_models_input_or_a_request_error() -> None:
    """Damaged real images and arbitrary bytes decode to (1, height, width, channels) uint8
    at the model's size, or fail as a 400/413 RequestError: never another exception."""
    from trainchain.families.cnn import Preprocessing
    from trainchain.serving.inputs import RequestError, decode_image

    preps = [
        Preprocessing((8, 12), "rgb", ("a", "b")),
        Preprocessing((5, 5), "grayscale", ("a", "b"), interpolation="nearest"),
    ]

    @given(
        data=st.one_of(damaged_images(), st.binary(max_size=512)),
        which=st.integers(0, len(preps) - 1),
    )
    @settings(FUZZ, max_examples=500)
    def run(data: bytes, which: int) -> None:
        prep = preps[which]
        try:
            pixels = decode_image(data, prep, max_pixels=1200)
        except RequestError as err:
            assert err.status in (400, 413) and err.message
        else:
            assert pixels.shape == (1, *prep.image_size, prep.channels)
            assert pixels.dtype == np.uint8

    run()
