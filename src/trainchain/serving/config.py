"""The service's settings: one frozen object, checked once, passed to ``create_app``."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from trainchain.core.config import Monitoring
from trainchain.core.errors import ConfigError
from trainchain.core.settings import Settings
from trainchain.core.sizes import human_size

DEFAULT_MAX_BODY = 16 * 1024 * 1024
# a body over max_body but at most this many times it is read (and discarded) before the
# 413, so a client that sends the whole body first reads the answer (serving/drain.py)
DRAIN_FACTOR = 4
DEFAULT_MAX_EPOCHS = 256
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000  # 5000 x 5000; Pillow's own bomb limit is 89 M
MIN_BODY = 1024  # `serve --max-body` below 1 KiB would refuse every request
DEFAULT_CAPTURE_RATE = 0.1
DEFAULT_CAPTURE_MAX = 500 * 1024 * 1024
MIN_CAPTURE_MAX = 64 * 1024


@dataclass(frozen=True)
class CaptureConfig:
    """Where captures go, which share of requests, and the folder's size cap in bytes."""

    folder: Path
    rate: float = DEFAULT_CAPTURE_RATE
    max_bytes: int = DEFAULT_CAPTURE_MAX
    queue: int = 64

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and 0.0 < self.rate <= 1.0):
            raise ConfigError(
                f"--capture-rate must be a share of requests in (0, 1], got {self.rate}",
                hint="0.1 stores one request in ten; leave out --capture to store none",
            )
        if self.max_bytes < MIN_CAPTURE_MAX:
            raise ConfigError(
                f"--capture-max {human_size(self.max_bytes)} is below "
                f"{human_size(MIN_CAPTURE_MAX)}: too small to hold a capture"
            )
        if self.queue < 1:
            raise ConfigError(f"the capture queue must be at least 1, got {self.queue}")


DEFAULT_BATCH_MAX = 32
DEFAULT_BATCH_WAIT = 0.005  # seconds after the first image of a batch
DEFAULT_BATCH_QUEUE = 128
DEFAULT_BATCH_TIMEOUT = 30.0  # a request's wait for its answer


@dataclass(frozen=True)
class BatchOptions:
    """How ``/predict``'s batcher (``serving/batching.py``) groups the requests of one
    worker: at most ``max_batch`` images per model call, waiting at most ``max_wait``
    seconds after the first for others being decoded to join; at most ``queue`` images
    waiting; a request waits at most ``timeout`` seconds for its answer. ``max_batch`` 1
    turns batching off (each request calls the model itself)."""

    max_batch: int = DEFAULT_BATCH_MAX
    max_wait: float = DEFAULT_BATCH_WAIT
    queue: int = DEFAULT_BATCH_QUEUE
    timeout: float = DEFAULT_BATCH_TIMEOUT

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= 1024:
            raise ConfigError(
                f"--batch-max must be 1 to 1024 images per model call, got {self.max_batch}",
                hint="1 turns batching off; 32 is the default",
            )
        if not (math.isfinite(self.max_wait) and 0.0 <= self.max_wait <= 1.0):
            raise ConfigError(
                f"--batch-wait must be 0 to 1000 ms, got {self.max_wait * 1000:g} ms",
                hint="5 ms is the default; 0 batches only what is already waiting",
            )
        if self.queue < 1:
            raise ConfigError(f"--batch-queue must be at least 1 image, got {self.queue}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"a batch timeout of {self.timeout} s: expected > 0 s")

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_tf_threads(workers: int, cores: int | None = None) -> tuple[int, int]:
    """TensorFlow's (intra-op, inter-op) threads per worker when --tf-threads is not given:
    the cores shared out between the workers (at least one each), one inter-op thread (a
    convnet's operations run one after another)."""
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, workers)), 1


DEFAULT_RETRAIN_COOLDOWN = 6 * 3600.0  # as `trainchain hooks serve --retrain-cooldown`
DEFAULT_RETRAIN_TIMEOUT = 10.0


@dataclass(frozen=True)
class RetrainConfig:
    """The direct path of a retrain request (``serve --retrain-url``): once the drift test
    said drifted ``monitoring.persist_windows`` times in a row, POST a drift alert in
    Alertmanager's webhook JSON to ``url`` (`trainchain hooks serve`'s ``/alerts``) with
    ``Authorization: Bearer token``; at most once per ``cooldown`` seconds per model from
    this server, each POST bounded by ``timeout`` seconds."""

    url: str
    token: bytes = field(repr=False)
    cooldown: float = DEFAULT_RETRAIN_COOLDOWN
    timeout: float = DEFAULT_RETRAIN_TIMEOUT

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(
                f"--retrain-url {self.url!r} is not an http(s) URL",
                hint="give `trainchain hooks serve`'s alert endpoint, e.g. "
                "http://127.0.0.1:8088/alerts",
            )
        if not self.token:
            raise ConfigError(
                "the retrain token is empty",
                hint="put hooks serve's --alert-token-file token in --retrain-token-file",
            )
        if not (math.isfinite(self.cooldown) and self.cooldown >= 0):
            raise ConfigError(f"--retrain-cooldown must be >= 0 seconds, got {self.cooldown}")
        if not (math.isfinite(self.timeout) and 0 < self.timeout <= 300):
            raise ConfigError(f"a retrain timeout of {self.timeout} s: expected 0 to 300 s")


def _defaults() -> Monitoring:
    """``monitoring:``'s defaults (core.config.Monitoring)."""
    return Monitoring()  # type: ignore[call-arg]


@dataclass(frozen=True)
class ServeConfig:
    """What one serving process needs: the model, the registry, and every bound.

    ``canary_share`` of the requests go to the ``challenger`` alias's version;
    ``shadow`` sends every request to the challenger too and answers from the
    champion. The two are exclusive. ``seed`` seeds the canary's draws (None: from
    the operating system, so each worker process draws its own sequence).
    ``workdir`` is where models are downloaded (None: a temporary folder per app).
    ``metrics_dir`` is prometheus_client's multiprocess folder (None: one process).
    ``capture`` stores a sampled share of requests for ``POST /feedback`` (None: none).

    Drift (``serving/drift.py``): ``monitoring`` is trainchain.yaml's ``monitoring:``
    (None: off); ``drift_db`` the window the workers share (None: a temporary file per
    app); the window is tested at most every ``drift_interval`` seconds per worker;
    ``drift_queue`` summaries wait for the writer thread, more are dropped and counted.
    ``retrain`` asks for a retrain when drift persists (None: only the metrics say so).

    Image models: ``batching`` groups concurrent ``/predict`` requests into one model call;
    ``tf_threads`` is TensorFlow's (intra-op, inter-op) threads in each worker (None:
    TensorFlow's own default, every core), set before the worker loads its first CNN.
    """

    model: str
    tracking_uri: str
    artifact_root: Path
    reload_interval: float = 5.0
    canary_share: float = 0.0
    shadow: bool = False
    max_body: int = DEFAULT_MAX_BODY
    max_epochs: int = DEFAULT_MAX_EPOCHS
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    shadow_queue: int = 32
    seed: int | None = None
    workdir: Path | None = None
    metrics_dir: Path | None = None
    capture: CaptureConfig | None = None
    monitoring: Monitoring | None = field(default_factory=_defaults)
    drift_db: Path | None = None
    drift_interval: float = 10.0
    drift_queue: int = 1024
    retrain: RetrainConfig | None = None
    batching: BatchOptions = field(default_factory=BatchOptions)
    tf_threads: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ConfigError(
                "no model to serve: the model name is empty",
                hint="pass --model NAME or set TRAINCHAIN_SERVE_MODEL (`trainchain models NAME` "
                "lists a model's versions)",
            )
        if not (math.isfinite(self.reload_interval) and self.reload_interval > 0):
            raise ConfigError(
                f"--reload-interval must be a number of seconds > 0, got {self.reload_interval}"
            )
        if not 0.0 <= self.canary_share <= 1.0:
            raise ConfigError(
                f"--canary-share must be between 0 and 1 (a share of requests), "
                f"got {self.canary_share}"
            )
        if self.shadow and self.canary_share > 0:
            raise ConfigError(
                f"--shadow and --canary-share {self.canary_share} were both given: expected one",
                hint="canary answers a share of requests from the challenger; shadow answers all "
                "from the champion and only compares: choose one",
            )
        if not (math.isfinite(self.drift_interval) and self.drift_interval >= 0):
            raise ConfigError(
                f"--drift-interval must be a number of seconds >= 0, got {self.drift_interval}"
            )
        for name in ("max_body", "max_epochs", "max_image_pixels", "shadow_queue", "drift_queue"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")

        if self.tf_threads is not None and (len(self.tf_threads) != 2 or min(self.tf_threads) < 1):
            raise ConfigError(
                f"--tf-threads must be INTRA,INTER threads >= 1, got {self.tf_threads}",
                hint="e.g. --tf-threads 2,1; leave it out for one per core per worker",
            )
        if self.retrain is not None and self.monitoring is None:
            raise ConfigError(
                "--retrain-url and --no-drift were both given: a retrain is asked for when "
                "the drift monitoring finds drift",
                hint="leave out --no-drift, or --retrain-url",
            )

    @property
    def uses_challenger(self) -> bool:
        return self.shadow or self.canary_share > 0

    @property
    def drain_bound(self) -> int:
        """The largest body read to its end, whatever the answer: DRAIN_FACTOR x max_body."""
        return DRAIN_FACTOR * self.max_body

    @classmethod
    def from_settings(cls, settings: Settings, model: str, **options: object) -> ServeConfig:
        """The registry and artifact root from ``settings``; everything else from ``options``."""
        return cls(
            model=model,
            tracking_uri=settings.tracking_uri,
            artifact_root=settings.artifacts,
            **options,  # type: ignore[arg-type]
        )
