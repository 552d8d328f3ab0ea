"""/predict's batcher: concurrent image requests in one model call.

First the batcher alone (serving/batching.py) with a NumPy function for a model: who
gets which row, a batch formed from the requests still decoding, a failed batch, a full
queue, a request that waits too long, and close. Then the real thing (marked
``tensorflow``): small Keras CNNs built with trainchain.families.cnn, trained on
coloured PNGs, registered in a real MLflow SQLite registry and served by the Flask app
and by a real `trainchain serve` (gunicorn): concurrent requests each get their own
image's label, the one the model itself gives for the training loader's array of that
photo; a model that fails on every batch answers each request with the error; the
batcher stops when its version is swapped out and when the service closes.
"""

from __future__ import annotations

import http.client
import io
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask

from tests.conftest import eventually, run_cli, served_apps, serving
from trainchain.adapters.tracking import CHAMPION, Tracker
from trainchain.core.settings import Settings, load_settings
from trainchain.families import cnn
from trainchain.serving.app import service_of
from trainchain.serving.batching import (
    BatchClosed,
    Batcher,
    BatchFailed,
    BatchQueueFull,
    BatchTimeout,
)
from trainchain.serving.config import BatchOptions, ServeConfig, default_tf_threads

WAIT = 60.0  # bound on every wait for a model, an answer or a thread


# --------------------------------------------------------------------------- the batcher


def _means(x: np.ndarray) -> np.ndarray:
    """A stand-in model: each image's mean and its first pixel, one row per image."""
    return np.stack([x.mean(axis=(1, 2, 3)), x[:, 0, 0, 0]], axis=1)


def _image(value: int) -> np.ndarray:
    return np.full((1, 4, 4, 1), value, dtype=np.uint8)


@pytest.fixture
def batchers() -> Iterator[Callable[..., Batcher]]:
    """Make batchers; every one is closed (and its thread stopped) afterwards."""
    made: list[Batcher] = []

    def make(predict: Callable[[np.ndarray], Any] = _means, **options: Any) -> Batcher:
        batcher = Batcher(predict, BatchOptions(**options), "toy v1")
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        assert batcher.close(timeout=WAIT), "a batcher thread did not stop"


def test_requests_decoding_together_are_answered_in_one_call_each_with_its_row(
    batchers: Callable[..., Batcher],
) -> None:
    """Eight requests that announced themselves (expecting) are predicted in one call of
    the model as float32, in the batcher's thread, each getting the row of its own image;
    a request alone later is predicted at once, in its own thread."""
    calls: list[tuple[int, np.dtype[Any], str]] = []

    def model(x: np.ndarray) -> np.ndarray:
        calls.append((len(x), x.dtype, threading.current_thread().name))
        return _means(x)

    batcher = batchers(model, max_batch=32, max_wait=1.0)  # the arrivals end the wait
    ready = threading.Barrier(8)

    def request(value: int) -> np.ndarray:
        with batcher.expecting():
            ready.wait(timeout=WAIT)  # all eight are "decoding" before any is queued
            image = _image(value)
        return batcher.submit(image)

    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(request, range(10, 90, 10)))
    assert [row.tolist() for row in rows] == [[v, v] for v in range(10, 90, 10)]
    assert calls == [(8, np.dtype(np.float32), "trainchain-batcher-toy v1")]
    assert batcher.submit(_image(7)).tolist() == [7.0, 7.0]
    assert calls[-1] == (1, np.dtype(np.float32), threading.current_thread().name)
    assert (batcher.batches, batcher.largest) == (2, 8)


def test_a_failed_batch_answers_each_of_its_requests_with_the_error(
    batchers: Callable[..., Batcher],
) -> None:
    """The model raising on a batch: each of its requests gets BatchFailed naming the error
    and the batch size; the batcher goes on and answers the next batch."""
    fail = threading.Event()
    fail.set()

    def model(x: np.ndarray) -> np.ndarray:
        if fail.is_set():
            raise RuntimeError("out of memory in conv2d")
        return _means(x)

    batcher = batchers(model, max_wait=1.0)
    ready = threading.Barrier(3)

    def request(value: int) -> BaseException | np.ndarray:
        with batcher.expecting():
            ready.wait(timeout=WAIT)
        try:
            return batcher.submit(_image(value))
        except BatchFailed as err:
            return err

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(request, (1, 2, 3)))
    for answer in answers:
        assert isinstance(answer, BatchFailed)
        assert answer.message == (
            "the model failed on a batch of 3 image(s): RuntimeError: out of memory in conv2d"
        )
        assert isinstance(answer.cause, RuntimeError) and answer.size == 3
    fail.clear()
    assert batcher.submit(_image(5)).tolist() == [5.0, 5.0]


def test_a_model_that_answers_the_wrong_number_of_rows_fails_the_batch(
    batchers: Callable[..., Batcher],
) -> None:
    """One row for two images is not split between them: both requests get BatchFailed."""
    batcher = batchers(lambda x: _means(x)[:1], max_wait=1.0)
    ready = threading.Barrier(2)

    def request(value: int) -> str:
        with batcher.expecting():
            ready.wait(timeout=WAIT)
        with pytest.raises(BatchFailed) as caught:
            batcher.submit(_image(value))
        return caught.value.message

    with ThreadPoolExecutor(2) as pool:
        messages = list(pool.map(request, (1, 2)))
    assert (
        messages
        == [
            "the model failed on a batch of 2 image(s): ValueError: the model returned an array "
            "of shape (1, 2) for 2 images"
        ]
        * 2
    )


def test_a_full_queue_and_a_late_answer_are_errors_that_say_so(
    batchers: Callable[..., Batcher],
) -> None:
    """While the model is busy (with a request alone, in that request's thread), images
    queue up to --batch-queue; one more is refused at once (BatchQueueFull), and a queued
    request whose answer does not come within the timeout gets BatchTimeout; once the model
    is free the queued ones are answered."""
    busy, release = threading.Event(), threading.Event()

    def model(x: np.ndarray) -> np.ndarray:
        busy.set()
        assert release.wait(WAIT), "the test never released the model"
        return _means(x)

    batcher = batchers(model, max_batch=2, max_wait=0.0, queue=2, timeout=WAIT)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher.submit, _image(1))
        assert busy.wait(WAIT)  # image 1 is in the model
        queued = [pool.submit(batcher.submit, _image(v)) for v in (2, 3)]
        eventually(lambda: len(batcher._pending) == 2, "two images to wait", WAIT, 0.01)
        with pytest.raises(BatchQueueFull) as full:
            batcher.submit(_image(4))
        assert full.value.message == (
            "toy v1: 2 images are waiting for the model already (trainchain serve "
            "--batch-queue 2); retry shortly, or start the service with more --workers"
        )
        release.set()
        assert [f.result(WAIT).tolist() for f in (first, *queued)] == [[1, 1], [2, 2], [3, 3]]

    busy.clear()
    release.clear()
    patient = batchers(model, max_wait=0.0, timeout=0.05)
    with ThreadPoolExecutor(1) as pool:
        alone = pool.submit(patient.submit, _image(1))  # alone: the model in its own thread
        assert busy.wait(WAIT)
        with pytest.raises(BatchTimeout, match=r"toy v1: no answer within 0\.05 s"):
            patient.submit(_image(2))  # queued behind it
        release.set()
        assert alone.result(WAIT).tolist() == [1, 1]


def test_close_answers_what_is_queued_then_stops_the_thread(
    batchers: Callable[..., Batcher],
) -> None:
    """close() while images wait: they are still answered, a later submit is BatchClosed
    (the model answers it directly), and the batcher's thread has ended."""
    busy, release = threading.Event(), threading.Event()

    def model(x: np.ndarray) -> np.ndarray:
        busy.set()
        assert release.wait(WAIT)
        return _means(x)

    batcher = batchers(model, max_batch=4, max_wait=0.0)
    with ThreadPoolExecutor(4) as pool:  # three requests and the close
        answers = [pool.submit(batcher.submit, _image(1))]
        assert busy.wait(WAIT)
        answers += [pool.submit(batcher.submit, _image(v)) for v in (2, 3)]
        eventually(lambda: len(batcher._pending) == 2, "two images to wait", WAIT, 0.01)
        closing = pool.submit(batcher.close, WAIT)
        eventually(lambda: batcher._closed, "the batcher to be closing", WAIT, 0.01)
        with pytest.raises(BatchClosed):
            batcher.submit(_image(4))
        release.set()
        assert closing.result(WAIT) is True
        assert [a.result(WAIT).tolist() for a in answers] == [[1, 1], [2, 2], [3, 3]]
    assert not batcher.alive


def test_batch_options_and_thread_defaults_are_checked() -> None:
    """Out-of-range options are refused with the flag and the allowed range; TensorFlow's
    threads default to the cores shared out between the workers."""
    from trainchain.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--batch-max must be 1 to 1024 .* got 0"):
        BatchOptions(max_batch=0)
    with pytest.raises(ConfigError, match=r"--batch-wait must be 0 to 1000 ms, got 2000 ms"):
        BatchOptions(max_wait=2.0)
    with pytest.raises(ConfigError, match="--batch-queue must be at least 1"):
        BatchOptions(queue=0)
    assert not BatchOptions(max_batch=1).enabled and BatchOptions().enabled
    assert default_tf_threads(1, cores=2) == (2, 1)
    assert default_tf_threads(2, cores=2) == (1, 1)
    assert default_tf_threads(4, cores=2) == (1, 1)
    with pytest.raises(ConfigError, match="--tf-threads must be INTRA,INTER"):
        ServeConfig("m", "sqlite:///x.db", Path("/tmp"), tf_threads=(0, 1))


# --------------------------------------------------------------------------- real models

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 210)}
PREP = cnn.Preprocessing((16, 16), "rgb", tuple(sorted(COLOURS)))  # load_images's order


def _photos(folder: Path, per_class: int, seed: int) -> list[tuple[Path, str]]:
    """PNGs of a size other than the model's (24 x 20), one colour per class, noisy."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for name, colour in COLOURS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(colour, 40, (20, 24, 3)), 0, 255).astype(np.uint8)
            path = folder / name / f"{i:03d}.png"
            Image.fromarray(pixels).save(path)
            out.append((path, name))
    return out


@dataclass
class ImageRegistry:
    """A real MLflow SQLite registry and small Keras CNNs for it."""

    settings: Settings
    tracker: Tracker
    root: Path
    models: dict[str, Any]

    def build(self, seed: int, fixed_size: tuple[int, int] | None = None) -> Any:
        """A small CNN (trainchain.families.cnn's input layers) trained on the coloured
        photos as the training loader reads them; ``fixed_size``: a model that takes only
        that size, not the size its preprocessing records (it fails on every batch)."""
        import keras

        keras.utils.set_random_seed(seed)
        data = cnn.load_images(self.root / "photos", image_size=PREP.image_size, seed=seed)
        if fixed_size is None:
            inputs, x = cnn.input_layers(PREP)
        else:
            inputs = keras.Input(shape=(*fixed_size, 3))
            x = keras.layers.Rescaling(PREP.scale)(inputs)
        x = keras.layers.Conv2D(4, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D(4)(x)
        x = keras.layers.Flatten()(x)  # the number of features depends on the image size
        outputs = keras.layers.Dense(len(COLOURS), activation="softmax")(x)
        model = keras.Model(inputs, outputs)
        if fixed_size is None:
            model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
            model.fit(data.x_train, data.y_train, epochs=30, batch_size=16, verbose=0)
        return model

    def register(self, name: str, model: Any) -> str:
        """``model`` saved as the chain saves it, registered, and made champion."""
        tracker = self.tracker
        folder = self.root / f"{name}-{len(self.models)}"
        cnn.save_model(model, folder, PREP)
        run_id = tracker.start_run(tracker.experiment_id(name), name, {"trainchain.family": "cnn"})
        tracker.log_artifacts(run_id, folder, "model")
        tracker.finish(run_id, ok=True)
        version = tracker.register(name, run_id, {"trainchain.family": "cnn"})
        tracker.make_champion(name, version)
        self.models[f"{name} v{version}"] = model
        return version

    def config(self, name: str, **options: Any) -> ServeConfig:
        options.setdefault("reload_interval", 0.2)
        options.setdefault("monitoring", None)
        return ServeConfig.from_settings(self.settings, name, **options)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageRegistry:
    pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("batch")
    for part, seed in (("train", 0), ("test", 1)):
        _photos(root / "photos" / part, 12, seed)
    settings = load_settings({"TRAINCHAIN_HOME": str(root / "home")})
    registry = ImageRegistry(settings, Tracker(settings.tracking_uri, settings.artifacts), root, {})
    registry.register("colours", registry.build(seed=0))
    return registry


@pytest.fixture
def serve(images: ImageRegistry) -> Iterator[Callable[..., Flask]]:
    with served_apps(images.config, WAIT) as make:
        yield make


def _png(path: Path) -> bytes:
    return path.read_bytes()


def _expected(model: Any, paths: list[Path]) -> np.ndarray:
    """What the model itself gives for the photos as the training loader reads them."""
    x = cnn.read_images(paths, PREP)
    return np.asarray(model.predict(x.astype(np.float32), verbose=0))


@pytest.mark.tensorflow
def test_concurrent_requests_each_get_their_own_images_label(
    images: ImageRegistry, serve: Callable[..., Flask]
) -> None:
    """24 photos posted by 8 threads at once (multipart and raw): each answer carries the
    label and the probabilities the model gives for that photo's training array, and the
    batcher's batches stay within --batch-max."""
    app = serve("colours", batching=BatchOptions(max_batch=6, max_wait=0.05))
    model = images.models["colours v1"]
    photos = _photos(images.root / "requests", 8, seed=5)
    paths = [p for p, _ in photos]
    expected = _expected(model, paths)
    ready = threading.Barrier(8)

    def post(i: int) -> dict[str, Any]:
        client = app.test_client()
        if i < 8:
            ready.wait(timeout=WAIT)
        body = _png(paths[i])
        if i % 2:
            response = client.post("/predict", data=body, content_type="image/png")
        else:
            response = client.post("/predict", data={"image": (io.BytesIO(body), "x.png")})
        assert response.status_code == 200, response.get_json()
        answer: dict[str, Any] = response.get_json()
        return answer

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(len(paths))))
    names = list(PREP.class_names)
    for i, answer in enumerate(answers):
        assert answer["label"] == names[int(np.argmax(expected[i]))], (i, answer, expected[i])
        assert list(answer["probabilities"]) == names
        assert np.allclose(list(answer["probabilities"].values()), expected[i], atol=1e-5)
        assert (answer["version"], answer["alias"]) == ("1", CHAMPION)
    right = sum(a["label"] == colour for a, (_, colour) in zip(answers, photos, strict=True))
    assert right >= 20, f"the model knows its colours: {right}/24"
    champion = service_of(app).holder.champion
    batcher = champion.batcher if champion is not None else None
    assert batcher is not None and 1 <= batcher.largest <= 6
    assert batcher.batches <= len(paths)


@pytest.mark.tensorflow
def test_a_batch_the_model_fails_answers_each_request_with_the_error(
    images: ImageRegistry, serve: Callable[..., Flask]
) -> None:
    """A model that takes only 12 x 12 images while its preprocessing says 16 x 16 fails
    on every batch: each of the concurrent requests gets a 422 that names the model, the
    batch and Keras's error; none waits for an answer that will not come."""
    images.register("fixed", images.build(seed=1, fixed_size=(12, 12)))
    app = serve("fixed")
    photos = [p for p, _ in _photos(images.root / "fixed", 2, seed=6)]
    ready = threading.Barrier(len(photos))

    def post(path: Path) -> tuple[int, dict[str, Any]]:
        ready.wait(timeout=WAIT)
        response = app.test_client().post("/predict", data=_png(path), content_type="image/png")
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(len(photos)) as pool:
        answers = list(pool.map(post, photos))
    for status, body in answers:
        assert status == 422, body
        assert body["error"].startswith("fixed v1: the model failed on a batch of ")
        assert "image(s): ValueError: " in body["error"]
        assert 1 <= body["batch_size"] <= len(photos)


@pytest.mark.tensorflow
def test_the_batcher_stops_when_its_version_is_swapped_out_and_when_the_service_closes(
    images: ImageRegistry, serve: Callable[..., Flask]
) -> None:
    """A promotion swaps v2 in: v1's batcher thread ends, v1 (held by a request in flight)
    still answers directly, v2 answers through its own batcher; closing the service stops
    that one too."""
    name = "swapped"
    images.register(name, images.models["colours v1"])
    app = serve(name)
    holder = service_of(app).holder
    old = holder.champion
    assert old is not None and old.batcher is not None and old.batcher.alive
    old_batcher = old.batcher
    client = app.test_client()
    photo = next(iter(_photos(images.root / "swap", 1, seed=7)))[0]
    assert client.post("/predict", data=_png(photo), content_type="image/png").status_code == 200

    v2 = images.register(name, images.build(seed=2))
    assert holder.wait_for(lambda: (m := holder.champion) is not None and m.version == v2, WAIT)
    eventually(lambda: not old_batcher.alive, "v1's batcher thread to end", WAIT, 0.05)
    pixels = cnn.read_images([photo], PREP)
    direct = old.predict_image(pixels)  # BatchClosed: the model answers directly
    assert np.allclose(list(direct.values()), _expected(images.models[f"{name} v1"], [photo])[0])
    answer = client.post("/predict", data=_png(photo), content_type="image/png").get_json()
    assert answer["version"] == v2
    assert np.allclose(
        list(answer["probabilities"].values()),
        _expected(images.models[f"{name} v{v2}"], [photo])[0],
        atol=1e-5,
    )
    new = holder.champion
    assert new is not None and new.batcher is not None and new.batcher.alive
    service_of(app).close()
    assert not new.batcher.alive


def _post(port: int, body: bytes) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request("POST", "/predict", body=body, headers={"content-type": "image/png"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.tensorflow
@pytest.mark.slow
def test_trainchain_serve_batches_concurrent_images_under_gunicorn(
    images: ImageRegistry, tmp_path: Path
) -> None:
    """`trainchain serve --batch-max 8 --batch-wait 20 --tf-threads 1,1` prints its batching
    and thread settings, and answers 16 photos sent over 4 connections at once each with
    its own label; --batch-max 0 is refused before anything starts."""

    refused = run_cli(
        "serve", "--home", str(images.settings.home), "--model", "colours", "--batch-max", "0"
    )
    assert refused.returncode != 0
    assert "--batch-max must be 1 to 1024 images per model call, got 0" in refused.stderr

    args = ["--model", "colours", "--no-drift", "--batch-max", "8", "--batch-wait", "20"]
    args += ["--tf-threads", "1,1"]
    photos = _photos(tmp_path / "photos", 6, seed=8)[:16]
    expected = _expected(images.models["colours v1"], [p for p, _ in photos])
    with serving(images.settings.home, *args, log=tmp_path / "serve.log") as served:
        served.wait_healthy(WAIT)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda p: _post(served.port, _png(p[0])), photos))
    output = served.output()
    assert served.proc.returncode == 0, output
    names = list(PREP.class_names)
    for (status, body), row in zip(answers, expected, strict=True):
        assert status == 200, body
        assert body["label"] == names[int(np.argmax(row))]
        assert np.allclose(list(body["probabilities"].values()), row, atol=1e-5)
    assert (
        "images:    up to 8 concurrent /predict requests per model call (waiting at most "
        "20 ms for them, 128 queued at most); TensorFlow 1 intra-op, 1 inter-op thread(s) "
        "per worker" in output
    )
