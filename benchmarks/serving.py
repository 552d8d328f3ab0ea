"""Serving throughput and latency: `trainchain serve` against MLflow's scoring server.

Two registered models, one after the other (``--models eeg,image``), one machine, two
servers side by side for each:

The EEG model (band-pass + CSP + SVM on 22 x 750 epochs):

- trainchain: ``trainchain serve --model eeg-motor-imagery --workers W`` (Flask under
  gunicorn), ``POST /classify`` with a JSON array of epochs or the same array as
  ``.npy`` (``application/x-npy``);
- mlflow: ``mlflow models serve -m models:/eeg-motor-imagery@champion --env-manager
  local -w W`` (MLflow's scoring server: FastAPI under uvicorn), ``POST /invocations``
  with ``{"inputs": [...]}``. It takes JSON, CSV and Parquet only; CSV and Parquet are
  data frames (2-D), so a 3-D array goes as JSON only. The run sends it one ``.npy``
  body and prints its answer, and compares JSON only for it. With W > 1 it also runs
  with one worker (``mlflow-w1``): uvicorn's multi-worker mode leaves TCP_NODELAY off,
  which costs ~40 ms per keep-alive request (see UVICORN_NOTE); both are shown.

The image model (``cats-vs-dogs-bench``: the cats-vs-dogs example's small convnet,
four Conv2D + MaxPooling2D blocks, 128 x 128 RGB, on trainchain.families.cnn's input
layers; trained for ``--image-epochs`` on ../shared/data/cats-vs-dogs, or on synthetic
JPEGs where that folder is absent, and saved as the examples save it, drift reference
included): one photo per request, at 1 and 4 clients (``--clients``):

- trainchain: ``trainchain serve --model cats-vs-dogs-bench --workers W`` (its defaults:
  batching, TensorFlow's threads shared out), ``POST /predict`` with the JPEG file;
- mlflow: ``mlflow models serve`` of the same version (W workers, and 1), ``POST
  /invocations`` with the photo's pixels (as trainchain.families.cnn.read_images makes
  them: what training and /predict make of the file) as JSON ``{"inputs": ...}``: its
  scoring server takes tensors, not image files.

It prints issue 17's target (at 4 clients, trainchain at least 2x the requests per
second of MLflow's best configuration, p99 at most half) as met or not.

Setup: a temporary TRAINCHAIN_HOME; for the EEG model synthetic EEG (``trainchain data synth-eeg``,
medium, seed 0); ``trainchain run examples/eeg-motor-imagery --executor local
--max-trials 2 --threshold 0.5`` registers the champion (the threshold only makes sure
there is one). The servers start on free ports on 127.0.0.1 and must answer /health.
Every route and the model loaded in-process must give the same labels to the same
epochs (photos) before anything is measured.

Each cell (server, body, epochs per request, concurrent clients) is warmed up, then
measured for a fixed time: C threads, each with its own ``http.client`` connection
(keep-alive; reopened when the server closes it, which is counted), send requests
back to back, cycling through distinct bodies encoded beforehand. Requests per second
are completed requests over the cell's time; latency is per request, from sending to
the last byte of the answer. Cells of the servers alternate. The client runs on the
same two cores as the servers, the same for both.

Every wait is bounded; the servers are stopped (their process groups) however the run
ends, and the temporary folder is deleted unless --keep.

    .venv/bin/python benchmarks/serving.py [--quick] [--seconds 15] [--warmup 3] [--workers 2]
        [--clients 1,4] [--batches 1,8] [--models eeg,image] [--image-workers W]
        [--image-epochs 5] [--trainchain-args '--batch-wait 2'] [--max-seconds 1200] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import io
import itertools
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import Deadline, OutOfTime, free_port, loadavg

os.environ.setdefault("MNE_LOGGING_LEVEL", "ERROR")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "eeg-motor-imagery"
MODEL = "eeg-motor-imagery"
BIN = Path(sys.executable).parent  # .venv/bin: trainchain, mlflow, uvicorn
HOST = "127.0.0.1"
DISTINCT_BODIES = 16  # bodies per cell, cycled: different epochs, no repeated request
CHECK_EPOCHS = 24  # epochs whose labels every route must agree on
# Enough trials for a champion: the threshold is low only so that there is one.
TRIALS = ("--max-trials", "2", "--threshold", "0.5")
READY_S = 180.0  # a server must answer /health 200 within this
STOP_S = 15.0
REQUEST_TIMEOUT_S = 60.0


def say(text: str = "") -> None:
    print(text, flush=True)


def run(cmd: Sequence[str], env: dict[str, str], timeout: float) -> str:
    """A setup command; its output, or an error with its tail."""
    done = subprocess.run(
        list(cmd), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{tail}")
    return done.stdout


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """One HTTP server in its own process group, logging to a file."""

    name: str
    cmd: list[str]  # without the port, which start() appends in the server's own syntax
    env: dict[str, str]
    log: Path
    port_option: str = "--port"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*self.cmd, self.port_option, str(self.port)],
                env=self.env,
                cwd=self.log.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}; its log ({self.log}) ends:\n"
                f"{self.tail()}"
            )

    def wait_ready(self, deadline: Deadline) -> float:
        """Seconds until GET /health answers 200."""
        started = time.monotonic()
        limit = deadline.limit(READY_S)
        status = None
        while time.monotonic() - started < limit:
            self.check_alive()
            with contextlib.suppress(OSError, http.client.HTTPException):
                status = request(("GET", "/health", None, {}), self.port, timeout=5)[0]
                if status == 200:
                    return time.monotonic() - started
            time.sleep(0.25)
        raise OutOfTime(
            f"{self.name} did not answer /health 200 within {limit:.0f} s (last: {status}); "
            f"its log ends:\n{self.tail()}"
        )

    def stop(self) -> None:
        """SIGTERM to the process group, then SIGKILL if it is still there after STOP_S."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_S)


def request(
    req: tuple[str, str, bytes | None, dict[str, str]], port: int, timeout: float
) -> tuple[int, bytes]:
    method, path, body, headers = req
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- bodies


def npy_bytes(array: Any) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@dataclass(frozen=True)
class Route:
    """How one server takes one body format."""

    server: str  # "trainchain", "mlflow" (W workers) or "mlflow-w1" (one worker)
    body: str  # "json" or "npy"
    path: str
    content_type: str

    def encode(self, epochs: Any) -> bytes:
        if self.body == "npy":
            return npy_bytes(epochs)
        if self.server.startswith("mlflow"):
            return json.dumps({"inputs": epochs.tolist()}).encode()
        return json.dumps(epochs.tolist()).encode()

    def labels(self, answer: bytes) -> list[str]:
        data = json.loads(answer)
        return [
            str(v)
            for v in (data["predictions"] if self.server.startswith("mlflow") else data["labels"])
        ]


TC_JSON = Route("trainchain", "json", "/classify", "application/json")
TC_NPY = Route("trainchain", "npy", "/classify", "application/x-npy")
ML_JSON = Route("mlflow", "json", "/invocations", "application/json")
ML1_JSON = Route("mlflow-w1", "json", "/invocations", "application/json")
ML_NPY = Route("mlflow", "npy", "/invocations", "application/x-npy")


# --------------------------------------------------------------------------- client


@dataclass
class Cell:
    route: Route
    batch: int
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    connections: int = 0
    first_error: str = ""
    body_bytes: int = 0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """The q-th percentile of latency in ms (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
        return ordered[rank] * 1000


def hammer(
    port: int,
    route: Route,
    *,
    bodies: Sequence[bytes],
    clients: int,
    seconds: float,
    cell: Cell | None,
    alive: Callable[[], None],
) -> None:
    """C threads send requests back to back for ``seconds``; results go to ``cell``."""
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    headers = {"content-type": route.content_type}

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
        latencies: list[float] = []
        errors = connections = 0
        first_error = ""
        try:
            for i in itertools.count(offset):
                if time.monotonic() >= stop_at:
                    break
                if conn.sock is None:
                    connections += 1
                body = bodies[i % len(bodies)]
                started = time.perf_counter()
                try:
                    conn.request("POST", route.path, body=body, headers=headers)
                    response = conn.getresponse()
                    answer = response.read()
                    elapsed = time.perf_counter() - started
                    if response.status == 200:
                        latencies.append(elapsed)
                    else:
                        errors += 1
                        first_error = first_error or f"HTTP {response.status}: {answer[:200]!r}"
                except (OSError, http.client.HTTPException) as err:
                    errors += 1
                    first_error = first_error or f"{err.__class__.__name__}: {err}"
                    conn.close()
        finally:
            conn.close()
        if cell is not None:
            with lock:
                cell.latencies.extend(latencies)
                cell.errors += errors
                cell.connections += connections
                cell.first_error = cell.first_error or first_error

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(worker, n * 7) for n in range(clients)]
        for future in futures:
            future.result(timeout=seconds + REQUEST_TIMEOUT_S + 10)
    if cell is not None:
        cell.seconds = time.monotonic() - started
    alive()


# --------------------------------------------------------------------------- setup


def register_model(home: Path, env: dict[str, str], deadline: Deadline) -> tuple[Path, str]:
    """Synthetic recordings and a champion of eeg-motor-imagery; (data folder, version)."""
    data = home / "data" / "eeg-synth-medium"
    trainchain = str(BIN / "trainchain")
    run(
        [trainchain, "data", "synth-eeg", "--out", str(data), *("--difficulty", "medium")],
        env,
        deadline.limit(300),
    )
    out = run(
        [trainchain, "run", str(EXAMPLE), "--data", str(data), "--executor", "local", *TRIALS],
        env,
        deadline.limit(600),
    )
    for line in out.splitlines():
        if line.startswith(("goal:", "champion:")):
            say(f"    {line}")
    from mlflow import MlflowClient

    version = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(MODEL, "champion")
    return data, str(version.version)


def versions() -> str:
    names = ("mlflow", "Flask", "gunicorn", "fastapi", "uvicorn", "scikit-learn", "numpy")
    found = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


def check_labels(
    servers: dict[str, Server], *, epochs: Any, truth: Any, model_uri: str, deadline: Deadline
) -> str:
    """Every route and the in-process model agree on CHECK_EPOCHS epochs (one request each
    route); the agreement line to print."""
    import mlflow.sklearn

    local = [str(v) for v in mlflow.sklearn.load_model(model_uri).predict(epochs)]
    answers = {}
    for route in routes_of(servers):
        status, body = request(
            ("POST", route.path, route.encode(epochs), {"content-type": route.content_type}),
            servers[route.server].port,
            timeout=deadline.limit(REQUEST_TIMEOUT_S),
        )
        if status != 200:
            raise RuntimeError(f"{route.server} {route.body}: HTTP {status}: {body[:500]!r}")
        answers[f"{route.server} {route.body}"] = route.labels(body)
    for name, labels in answers.items():
        if labels != local:
            raise RuntimeError(f"{name} labels differ from the model in-process: {labels}")
    right = sum(a == str(b) for a, b in zip(local, truth, strict=True))
    return (
        f"labels: {', '.join(answers)} and the model in-process agree on all {len(local)} "
        f"epochs ({right}/{len(local)} match the true labels)"
    )


def routes_of(servers: dict[str, Server]) -> list[Route]:
    """The measured routes, in the order cells alternate."""
    return [r for r in (TC_JSON, ML_JSON, ML1_JSON, TC_NPY) if r.server in servers]


def probe_mlflow_npy(ml: Server, epochs: Any, deadline: Deadline) -> str:
    status, body = request(
        ("POST", ML_NPY.path, ML_NPY.encode(epochs), {"content-type": ML_NPY.content_type}),
        ml.port,
        timeout=deadline.limit(REQUEST_TIMEOUT_S),
    )
    text = body.decode(errors="replace").strip().replace("\n", " ")
    return f"mlflow with an .npy body: HTTP {status}: {text[:160]}"


def fmt_row(cells: Sequence[str], widths: Sequence[int], left: int = 2) -> str:
    """The first ``left`` columns flush left, the numbers flush right."""
    return "  ".join(
        c.ljust(w) if i < left else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def print_cells(cells: Sequence[Cell], *, per_request: bool) -> None:
    """One row per measured cell; ``per_request``: with the epochs per request."""
    head = ["server", "body", *(["epochs/req"] if per_request else []), "clients", "requests"]
    head += ["req/s", "p50 ms", "p99 ms", "errors", "conns", "body KB"]
    rows = [
        [
            c.route.server,
            c.route.body,
            *([str(c.batch)] if per_request else []),
            str(c.clients),
            str(len(c.latencies)),
            f"{c.rps:.1f}",
            f"{c.pct(50):.1f}",
            f"{c.pct(99):.1f}",
            str(c.errors),
            str(c.connections),
            f"{c.body_bytes / 1000:.0f}",
        ]
        for c in cells
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    say(fmt_row(head, widths))
    say(fmt_row(["-" * w for w in widths], widths))
    for row in rows:
        say(fmt_row(row, widths))


def print_table(cells: list[Cell], npy_note: str) -> None:
    print_cells(cells, per_request=True)
    say(f"(mlflow .npy: not measured; {npy_note})")


def print_ratios(cells: list[Cell], workers: int) -> None:
    def find(route: Route, batch: int, clients: int) -> Cell | None:
        for c in cells:
            if c.route == route and c.batch == batch and c.clients == clients and c.latencies:
                return c
        return None

    say()
    say("ratios trainchain / mlflow (req/s: above 1 is faster; latency: below 1 is faster)")
    head = ["epochs/req", "clients", "trainchain", "vs mlflow", "req/s", "p50", "p99"]
    rows = []
    for batch, clients in sorted({(c.batch, c.clients) for c in cells}):
        same = find(ML_JSON, batch, clients)
        one = find(ML1_JSON, batch, clients)
        mlflows = [(f"-w {workers} JSON", same)]
        if one is not None and same is not None:
            best = max((same, one), key=lambda c: c.rps)
            mlflows.append((f"best (-w {workers if best is same else 1}) JSON", best))
        for route in (TC_JSON, TC_NPY):
            tc = find(route, batch, clients)
            for label, ml in mlflows:
                if tc is None or ml is None:
                    continue
                rows.append(
                    [
                        str(batch),
                        str(clients),
                        f"-w {workers} {'JSON' if route.body == 'json' else '.npy'}",
                        label,
                        f"{tc.rps / ml.rps:.2f}",
                        f"{tc.pct(50) / ml.pct(50):.2f}",
                        f"{tc.pct(99) / ml.pct(99):.2f}",
                    ]
                )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    say(fmt_row(head, widths, left=4))
    say(fmt_row(["-" * w for w in widths], widths, left=4))
    for row in rows:
        say(fmt_row(row, widths, left=4))


def measure(
    args: argparse.Namespace, servers: dict[str, Server], X: Any, deadline: Deadline
) -> list[Cell]:
    routes = routes_of(servers)

    def alive() -> None:
        for server in servers.values():
            server.check_alive()

    bodies: dict[tuple[Route, int], list[bytes]] = {}
    for batch in args.batches:
        for route in routes:
            bodies[route, batch] = [
                route.encode(X[(i * batch) % (len(X) - batch) :][:batch])
                for i in range(DISTINCT_BODIES)
            ]
    # Warm-up: every route and batch size, at the highest concurrency, not recorded.
    for batch in args.batches:
        for route in routes:
            deadline.limit(args.warmup)
            hammer(
                servers[route.server].port,
                route,
                bodies=bodies[route, batch],
                clients=max(args.clients),
                seconds=args.warmup,
                cell=None,
                alive=alive,
            )
    cells = []
    for clients in args.clients:
        for batch in args.batches:
            for route in routes:
                deadline.limit(args.seconds + 30)
                cell = Cell(route, batch, clients)
                cell.body_bytes = round(statistics.mean(len(b) for b in bodies[route, batch]))
                hammer(
                    servers[route.server].port,
                    route,
                    bodies=bodies[route, batch],
                    clients=clients,
                    seconds=args.seconds,
                    cell=cell,
                    alive=alive,
                )
                say(
                    f"    {route.server:10} {route.body:4} {batch:2} epochs/req {clients} "
                    f"clients: {cell.rps:7.1f} req/s, p50 {cell.pct(50):7.1f} ms, "
                    f"p99 {cell.pct(99):7.1f} ms, errors {cell.errors}"
                    + (f" ({cell.first_error})" if cell.errors else "")
                )
                cells.append(cell)
    return cells


@contextlib.contextmanager
def stopped_on_exit(servers: Sequence[Server]) -> Iterator[None]:
    """Stop every server however the block ends (also on SIGTERM and Ctrl-C)."""

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        for server in servers:
            try:
                server.stop()
            except Exception as err:  # stop the others all the same
                say(f"could not stop {server.name} (pid {server.proc and server.proc.pid}): {err}")
        signal.signal(signal.SIGTERM, previous)


def mlflow_server(model: str, workers: int, env: dict[str, str], home: Path) -> Server:
    """MLflow's scoring server for the champion of ``model``, in the local environment."""
    return Server(
        f"mlflow models serve -w {workers}",
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{model}@champion",
            "--env-manager",
            "local",
            "-h",
            HOST,
            "-w",
            str(workers),
        ],
        env,
        home / f"mlflow-serve-{model}-w{workers}.log",
        port_option="-p",
    )


UVICORN_NOTE = """
Why mlflow-w1 is there: uvicorn with --workers > 1 binds the listening socket itself
with proto 0, so asyncio leaves TCP_NODELAY off on accepted connections, and on a
keep-alive connection every request after the first waits ~40 ms for the client's
delayed ACK (uvicorn issue #3149, https://github.com/Kludex/uvicorn/issues/3149).
With one worker uvicorn lets asyncio bind and the delay is gone. Both are shown; the
"best" ratios compare with whichever mlflow configuration served more requests."""


MODELS: dict[str, Callable[[argparse.Namespace, Path, dict[str, str], Deadline], int]] = {}


def parse_models(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names or set(names) - set(MODELS):
        raise argparse.ArgumentTypeError(f"expected eeg, image or eeg,image, got {text!r}")
    return names


def parse_ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,4, got {text!r}")
    return values


# --------------------------------------------------------------------------- images

IMAGE_MODEL = "cats-vs-dogs-bench"
IMAGE_SIZE = 128  # the cats-vs-dogs example's default image_size
PHOTOS = ROOT.parent / "shared" / "data" / "cats-vs-dogs"
IMAGE_TARGET = (2.0, 0.5)  # issue 17: at 4 clients, >= 2x mlflow's req/s and p99 <= half


@dataclass(frozen=True)
class Photo:
    """One request's image: the file as a client has it, and its pixels as the model's
    input (trainchain.families.cnn.read_images: what training and /predict make of it)."""

    path: Path
    jpeg: bytes
    pixels: Any  # uint8 (1, IMAGE_SIZE, IMAGE_SIZE, 3)


@dataclass(frozen=True)
class ImageRoute:
    """How one server takes an image: trainchain the JPEG itself, MLflow's scoring server
    a tensor, so the pixels as JSON ``{"inputs": ...}`` (it reads no image files)."""

    server: str
    body: str
    path: str
    content_type: str

    def encode(self, photo: Photo) -> bytes:
        if self.body == "jpeg":
            return photo.jpeg
        return json.dumps({"inputs": photo.pixels.tolist()}).encode()

    def label(self, answer: bytes, classes: Sequence[str]) -> str:
        data = json.loads(answer)
        if self.server == "trainchain":
            return str(data["label"])
        row = data["predictions"][0]
        return classes[max(range(len(row)), key=row.__getitem__)]


TC_IMAGE = ImageRoute("trainchain", "jpeg", "/predict", "image/jpeg")
ML_IMAGE = ImageRoute("mlflow", "json", "/invocations", "application/json")
ML1_IMAGE = ImageRoute("mlflow-w1", "json", "/invocations", "application/json")


def synthetic_photos(root: Path, seed: int = 0) -> Path:
    """Where ../shared/data is absent: JPEGs of two classes (warm and cool colours, smooth
    shapes and noise, 160-220 pixels a side), train/ and test/."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for part, count in (("train", 120), ("test", 40)):
        for c, name in enumerate(("cool", "warm")):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = (int(v) for v in rng.integers(160, 221, 2))
                yy, xx = np.mgrid[0:h, 0:w] / 20.0
                base = np.array([60, 90, 180] if c == 0 else [200, 110, 50], dtype=float)
                waves = np.sin(xx * rng.uniform(0.5, 2) + yy * rng.uniform(0.5, 2))[..., None]
                noise = rng.normal(0, 25, (h, w, 3))
                pixels = np.clip(base + 50 * waves + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def small_convnet(prep: Any) -> Any:
    """The cats-vs-dogs example's small convnet (four Conv2D + MaxPooling2D blocks of 16,
    32, 64, 64 filters, dropout, a dense layer of 256), on trainchain.families.cnn's
    input layers: any image size in, resized and scaled inside the model."""
    import keras
    from keras import layers

    from trainchain.families.cnn import input_layers

    inputs, x = input_layers(prep)
    for filters in (16, 32, 64, 64):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.5)(x)
    x = layers.Dense(256, activation="relu")(x)
    outputs = layers.Dense(len(prep.class_names), activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="small_convnet")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def register_image_model(
    args: argparse.Namespace, home: Path
) -> tuple[str, Any, Any, list[Photo], str]:
    """Train the small convnet briefly on the photos, save it as the examples do
    (trainchain.families.cnn.save_model, with its drift reference) and make it the
    champion of IMAGE_MODEL: (version, its preprocessing, the model, test photos, where
    the photos came from)."""
    import keras

    from trainchain.adapters.tracking import Tracker
    from trainchain.core.settings import load_settings
    from trainchain.families import cnn

    if PHOTOS.is_dir():
        folder, source = PHOTOS, f"Kaggle cats vs dogs photos from {PHOTOS}"
    else:
        folder = synthetic_photos(home / "photos")
        source = f"synthetic photos ({PHOTOS} is absent; see ../shared/data/README.md)"
    keras.utils.set_random_seed(0)
    data = cnn.load_images(folder, image_size=IMAGE_SIZE, validation_split=0.2, seed=0)
    prep = cnn.Preprocessing((IMAGE_SIZE, IMAGE_SIZE), "rgb", data.class_names)
    model = small_convnet(prep)
    model.fit(data.x_train, data.y_train, epochs=args.image_epochs, batch_size=32, verbose=0)
    _, val_accuracy = model.evaluate(data.x_val, data.y_val, verbose=0)
    say(
        f"    trained {args.image_epochs} epoch(s) on {len(data.y_train)} images: "
        f"val_accuracy {val_accuracy:.3f} (a model to serve, not to win)"
    )
    settings = load_settings({"TRAINCHAIN_HOME": str(home)})
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    saved = cnn.save_model(model, home / "image-model", prep, reference_images=data.x_train)
    tags = {"trainchain.family": "cnn"}
    run_id = tracker.start_run(tracker.experiment_id(IMAGE_MODEL), "benchmark", tags)
    tracker.log_artifacts(run_id, saved, "model")
    tracker.finish(run_id, ok=True)
    version = tracker.register(IMAGE_MODEL, run_id, tags)
    tracker.make_champion(IMAGE_MODEL, version)
    paths, _ = cnn.image_files(folder / "test", data.class_names)
    chosen = paths[:: max(1, len(paths) // DISTINCT_BODIES)][:DISTINCT_BODIES]
    pixels = cnn.read_images(chosen, prep)
    photos = [Photo(path, path.read_bytes(), pixels[i : i + 1]) for i, path in enumerate(chosen)]
    return version, prep, model, photos, source


def check_image_labels(
    servers: dict[str, Server],
    routes: Sequence[ImageRoute],
    *,
    photos: Sequence[Photo],
    prep: Any,
    model: Any,
    deadline: Deadline,
) -> str:
    """Every route and the model in-process give each photo the same label."""
    import numpy as np

    x = np.concatenate([p.pixels for p in photos]).astype(np.float32)
    local = [prep.class_names[int(i)] for i in np.argmax(model.predict(x, verbose=0), axis=1)]
    for route in routes:
        labels = []
        for photo in photos:
            status, body = request(
                ("POST", route.path, route.encode(photo), {"content-type": route.content_type}),
                servers[route.server].port,
                timeout=deadline.limit(REQUEST_TIMEOUT_S),
            )
            if status != 200:
                raise RuntimeError(f"{route.server} {route.body}: HTTP {status}: {body[:500]!r}")
            labels.append(route.label(body, prep.class_names))
        if labels != local:
            raise RuntimeError(f"{route.server} labels differ from the model in-process: {labels}")
    counts = ", ".join(f"{local.count(c)} {c}" for c in prep.class_names)
    return (
        f"labels: {', '.join(r.server for r in routes)} and the model in-process agree on all "
        f"{len(photos)} photos ({counts})"
    )


def measure_images(
    args: argparse.Namespace,
    servers: dict[str, Server],
    routes: Sequence[ImageRoute],
    photos: Sequence[Photo],
    deadline: Deadline,
) -> list[Cell]:
    def alive() -> None:
        for server in servers.values():
            server.check_alive()

    bodies = {route: [route.encode(p) for p in photos] for route in routes}
    for route in routes:  # warm-up at the highest concurrency, not recorded
        deadline.limit(args.warmup)
        hammer(
            servers[route.server].port,
            route,  # type: ignore[arg-type]
            bodies=bodies[route],
            clients=max(args.clients),
            seconds=args.warmup,
            cell=None,
            alive=alive,
        )
    cells = []
    for clients in args.clients:
        for route in routes:
            deadline.limit(args.seconds + 30)
            cell = Cell(route, 1, clients)  # type: ignore[arg-type]
            cell.body_bytes = round(statistics.mean(len(b) for b in bodies[route]))
            hammer(
                servers[route.server].port,
                route,  # type: ignore[arg-type]
                bodies=bodies[route],
                clients=clients,
                seconds=args.seconds,
                cell=cell,
                alive=alive,
            )
            say(
                f"    {route.server:10} {route.body:4} {clients} clients: {cell.rps:7.1f} req/s, "
                f"p50 {cell.pct(50):7.1f} ms, p99 {cell.pct(99):7.1f} ms, errors {cell.errors}"
                + (f" ({cell.first_error})" if cell.errors else "")
            )
            cells.append(cell)
    return cells


def print_image_table(cells: Sequence[Cell], workers: int) -> None:
    print_cells(cells, per_request=False)

    def find(server: str, clients: int) -> Cell | None:
        found = [c for c in cells if c.route.server == server and c.clients == clients]
        return found[0] if found and found[0].latencies else None

    say()
    say("ratios trainchain / mlflow (req/s: above 1 is faster; latency: below 1 is faster)")
    for clients in sorted({c.clients for c in cells}):
        tc = find("trainchain", clients)
        mlflows = [m for m in (find("mlflow", clients), find("mlflow-w1", clients)) if m]
        if tc is None or not mlflows:
            continue
        best = max(mlflows, key=lambda c: c.rps)
        for ml, label in ((mlflows[0], f"mlflow -w {workers}"), (best, "best mlflow")):
            if label == "best mlflow" and len(mlflows) == 1:
                continue
            say(
                f"  {clients} client(s) vs {label} ({ml.route.server}): req/s "
                f"x{tc.rps / ml.rps:.2f}, p50 x{tc.pct(50) / ml.pct(50):.2f}, "
                f"p99 x{tc.pct(99) / ml.pct(99):.2f}"
            )
    at = 4 if 4 in {c.clients for c in cells} else max(c.clients for c in cells)
    tc = find("trainchain", at)
    mlflows = [m for m in (find("mlflow", at), find("mlflow-w1", at)) if m]
    if tc is None or not mlflows:
        say("target: not measured (a server answered no request)")
        return
    best = max(mlflows, key=lambda c: c.rps)
    rps, p99 = tc.rps / best.rps, tc.pct(99) / best.pct(99)
    met = rps >= IMAGE_TARGET[0] and p99 <= IMAGE_TARGET[1]
    say(
        f"target (issue 17): at {at} clients trainchain >= {IMAGE_TARGET[0]:g}x the best "
        f"mlflow's req/s ({best.route.server}) and p99 <= {IMAGE_TARGET[1]:g}x: req/s "
        f"x{rps:.2f}, p99 x{p99:.2f}: {'MET' if met else 'NOT MET'}"
    )


def run_images(
    args: argparse.Namespace, home: Path, env: dict[str, str], deadline: Deadline
) -> int:
    """The image model: the same registered small convnet served by both servers; one JPEG
    per request to trainchain, its pixels as JSON to MLflow's scoring server."""
    workers = args.image_workers
    extra = shlex.split(args.trainchain_args)
    servers = {
        "trainchain": trainchain_server(IMAGE_MODEL, workers, env, home, extra),
        "mlflow": mlflow_server(IMAGE_MODEL, workers, env, home),
    }
    if workers > 1:
        servers["mlflow-w1"] = mlflow_server(IMAGE_MODEL, 1, env, home)
    routes = [r for r in (TC_IMAGE, ML_IMAGE, ML1_IMAGE) if r.server in servers]
    with stopped_on_exit(list(servers.values())):
        started = time.monotonic()
        say(f"==> registering {IMAGE_MODEL} (the small convnet, {IMAGE_SIZE} x {IMAGE_SIZE})")
        version, prep, model, photos, source = register_image_model(args, home)
        say(f"    champion: version {version} ({time.monotonic() - started:.1f} s); {source}")
        say(f"==> starting the servers: {', '.join(s.name for s in servers.values())}")
        for server in servers.values():
            server.start()
        for server in servers.values():
            ready = server.wait_ready(deadline)
            say(f"    {server.name} on :{server.port}: /health 200 after {ready:.1f} s")
        agreement = check_image_labels(
            servers, routes, photos=photos, prep=prep, model=model, deadline=deadline
        )
        say(f"    {agreement}")
        say(
            f"==> measuring: {args.seconds:g} s per cell after {args.warmup:g} s warm-up per "
            f"route; clients {args.clients}; one photo per request"
        )
        cells = measure_images(args, servers, routes, photos, deadline)
    jpeg_kb = statistics.mean(len(p.jpeg) for p in photos) / 1000
    say()
    say(
        f"model {IMAGE_MODEL} v{version}, the small convnet on {IMAGE_SIZE} x {IMAGE_SIZE} RGB; "
        f"trainchain = trainchain serve {' '.join(extra) + ' ' if extra else ''}(gunicorn, "
        f"{workers} workers; body: the JPEG, {jpeg_kb:.0f} KB on average), mlflow = mlflow "
        f"models serve (uvicorn, {workers} workers; body: the pixels as JSON)"
        + (", mlflow-w1 = the same with 1 worker" if workers > 1 else "")
    )
    print_image_table(cells, workers)
    return 0


def trainchain_server(
    model: str, workers: int, env: dict[str, str], home: Path, extra: Sequence[str] = ()
) -> Server:
    """`trainchain serve` of the champion of ``model``."""
    return Server(
        "trainchain serve",
        [
            str(BIN / "trainchain"),
            "serve",
            "--model",
            model,
            "--host",
            HOST,
            "--workers",
            str(workers),
            *extra,
        ],
        env,
        home / f"trainchain-serve-{model}.log",
    )


def run_eeg(args: argparse.Namespace, home: Path, env: dict[str, str], deadline: Deadline) -> int:
    """The EEG model: both servers, JSON and .npy bodies, 1 and 8 epochs per request."""
    servers = {
        "trainchain": trainchain_server(MODEL, args.workers, env, home),
        "mlflow": mlflow_server(MODEL, args.workers, env, home),
    }
    if args.workers > 1:
        servers["mlflow-w1"] = mlflow_server(MODEL, 1, env, home)
    with stopped_on_exit(list(servers.values())):
        started = time.monotonic()
        say(f"==> registering {MODEL} (synthetic medium EEG, 2 trials) in {home}")
        data, version = register_model(home, env, deadline)
        say(f"    champion: version {version} ({time.monotonic() - started:.1f} s)")

        from trainchain.families.eeg import load_epochs

        X, y, _ = load_epochs(data)
        say(f"==> starting the servers: {', '.join(s.name for s in servers.values())}")
        for server in servers.values():
            server.start()
        for server in servers.values():
            ready = server.wait_ready(deadline)
            say(f"    {server.name} on :{server.port}: /health 200 after {ready:.1f} s")
        agreement = check_labels(
            servers,
            epochs=X[:CHECK_EPOCHS],
            truth=y[:CHECK_EPOCHS],
            model_uri=f"models:/{MODEL}@champion",
            deadline=deadline,
        )
        say(f"    {agreement}")
        npy_note = probe_mlflow_npy(servers["mlflow"], X[:1], deadline)
        say(f"    {npy_note}")
        say(
            f"==> measuring: {args.seconds:g} s per cell after {args.warmup:g} s warm-up per "
            f"route; clients {args.clients}; epochs per request {args.batches}"
        )
        cells = measure(args, servers, X, deadline)

    say()
    say(
        f"model {MODEL} v{version}, epochs of 22 x 750 float64; trainchain = trainchain serve "
        f"(gunicorn, {args.workers} workers), mlflow = mlflow models serve (uvicorn, "
        f"{args.workers} workers)"
        + (", mlflow-w1 = the same with 1 worker" if args.workers > 1 else "")
    )
    print_table(cells, npy_note.removeprefix("mlflow with an .npy body: "))
    print_ratios(cells, args.workers)
    if args.workers > 1:
        say(UVICORN_NOTE)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s cells, 1 epoch per request")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per route")
    parser.add_argument("--workers", type=int, default=2, help="server workers, both servers")
    parser.add_argument("--clients", type=parse_ints, default=[1, 4], help="e.g. 1,4")
    parser.add_argument("--batches", type=parse_ints, default=[1, 8], help="epochs per request")
    parser.add_argument(
        "--models",
        type=parse_models,
        default=list(MODELS),
        help="which models: eeg, image or eeg,image (default: both, one after the other)",
    )
    parser.add_argument(
        "--image-workers",
        type=int,
        help="workers of both servers for the image model (default: --workers)",
    )
    parser.add_argument(
        "--image-epochs", type=int, default=5, help="training epochs of the image model"
    )
    parser.add_argument(
        "--trainchain-args",
        default="",
        help="more `trainchain serve` options for the image model, e.g. '--batch-wait 2'",
    )
    parser.add_argument("--max-seconds", type=float, default=1200.0, help="cap on the whole run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary TRAINCHAIN_HOME")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.batches = 1.0, 0.5, [1]
    if args.image_workers is None:
        args.image_workers = args.workers
    deadline = Deadline(args.max_seconds)

    say(f"serving benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}")
    say(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average before: {loadavg()}"
    )
    say(f"libraries: {versions()}")
    home = Path(tempfile.mkdtemp(prefix="trainchain-bench-serving-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TRAINCHAIN_", "MLFLOW_")) and k != "BUILD_URL"
    }
    env.update(
        TRAINCHAIN_HOME=str(home),
        MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # mlflow starts `uvicorn` by name
        MNE_LOGGING_LEVEL="ERROR",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    try:
        for name in args.models:
            say()
            say(f"=== the {name} model")
            MODELS[name](args, home, env, deadline)
    except (OutOfTime, RuntimeError, subprocess.TimeoutExpired) as err:
        say(f"error: {err}")
        return 1
    finally:
        if args.keep:
            say(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    say()
    say(f"load average after: {loadavg()}")
    return 0


MODELS.update(eeg=run_eeg, image=run_images)

if __name__ == "__main__":
    sys.exit(main())
