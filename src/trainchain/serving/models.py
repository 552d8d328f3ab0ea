"""The live champion: loaded from the registry in the background, swapped in one step.

A :class:`ModelHolder` checks the registry's aliases every ``reload_interval`` seconds.
When an alias moves (promote, rollback) it loads the new version completely, off the
request path, then replaces one reference: a request reads that reference once and
finishes on the model it read, so none fails during a swap. A version that fails to
load is reported (log, ``/health``) and the previous one keeps serving.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from trainchain.adapters.tracking import CHALLENGER, CHAMPION, MODEL_ARTIFACT, Tracker
from trainchain.core import keys
from trainchain.core.config import Family
from trainchain.core.drift import REFERENCE_FILE, DriftError, Reference
from trainchain.core.errors import NotInStore, StoreError
from trainchain.families.cnn import Preprocessing
from trainchain.serving.batching import BatchClosed, Batcher
from trainchain.serving.config import BatchOptions, ServeConfig

log = logging.getLogger(__name__)

EEG_DEFAULT_SHAPE = (22, 750)  # BCI Competition IV 2a: 22 channels, 3 s at 250 Hz


def served_family(tag: str | None, has_image_preprocessing: bool) -> Family:
    """The family a version is served as: its ``trainchain.family`` tag, else a CNN when its
    MLmodel records image preprocessing, else EEG (an array model)."""
    if tag:
        try:
            return Family(tag)
        except ValueError:
            log.warning("unknown %s tag %r: deciding from the MLmodel", keys.FAMILY, tag)
    return Family.CNN if has_image_preprocessing else Family.EEG


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, loaded and ready to predict."""

    name: str
    version: str
    family: Family
    model: Any  # an mlflow.pyfunc.PyFuncModel
    path: Path
    run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    epoch_shape: tuple[int, int] = EEG_DEFAULT_SHAPE
    shape_source: str = "default"
    input_dtype: str = "float64"
    preprocessing: Preprocessing | None = None
    # the labels the model answers with, when it records them (feedback is checked against them)
    classes: tuple[str, ...] | None = None
    # the Keras model inside a keras-flavor pyfunc: predicted without a progress bar
    keras_model: Any = None
    # the training data's drift statistics (None: not monitored, ``drift_note`` says why)
    drift_reference: Reference | None = field(default=None, repr=False, compare=False)
    drift_note: str = ""
    # one model call at a time per version: the batcher's, or a request's without one
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)
    # image models: concurrent /predict requests in one model call (start_batching)
    batcher: Batcher | None = field(default=None, compare=False, repr=False)

    def classify(self, epochs: Any) -> list[str]:
        """Labels of ``(N, channels, samples)`` epochs."""
        x = np.asarray(epochs).astype(self.input_dtype, copy=False)
        with np.errstate(all="ignore"):  # overflow in the pipeline surfaces as its ValueError
            out = self.model.predict(x)
        labels = np.asarray(out).reshape(-1)
        if len(labels) != len(x):
            raise ValueError(f"the model returned {len(labels)} labels for {len(x)} epochs")
        return [str(label) for label in labels]

    # ---- images ------------------------------------------------------------------------
    def start_batching(self, options: BatchOptions) -> None:
        """Give an image model its batcher (once, before it is served); it stops in
        :meth:`close`. Other families, and ``options`` that turn batching off, keep none."""
        if self.family != Family.CNN or not options.enabled or self.batcher is not None:
            return
        batcher = Batcher(self.predict_batch, options, f"{self.name} v{self.version}")
        object.__setattr__(self, "batcher", batcher)  # frozen: set once, before serving

    def close(self) -> None:
        """Stop the batcher: its queued images are still answered, later ones call the
        model directly (a request holding this version finishes on it)."""
        if self.batcher is not None:
            self.batcher.close()

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Around decoding a request's image: the batch being formed may wait for it."""
        if self.batcher is None:
            yield
        else:
            with self.batcher.expecting():
                yield

    def predict_batch(self, x: Any) -> Any:
        """Class probabilities ``(n, classes)`` of ``float32`` images ``(n, h, w, c)``: one
        model call (a Keras model's ``predict_on_batch``: no per-call dataset or progress
        bar)."""
        with self.lock:
            if self.keras_model is not None:
                return self.keras_model.predict_on_batch(x)
            return self.model.predict(x)

    def predict_image(self, pixels: Any) -> dict[str, float]:
        """Class probabilities of one image ``(1, height, width, channels)``, through the
        batcher when there is one."""
        if self.preprocessing is None:
            raise TypeError(f"{self.name} v{self.version} is not an image model")
        names = self.preprocessing.class_names
        row: Any = None
        if self.batcher is not None:
            try:
                row = self.batcher.submit(pixels)
            except BatchClosed:  # swapped out while this request held it: answer directly
                row = None
        if row is None:
            row = self.predict_batch(
                np.asarray(pixels, dtype=np.float32).reshape(1, *np.shape(pixels)[-3:])
            )
        probabilities = np.asarray(row, dtype=np.float64).reshape(-1)
        if len(probabilities) != len(names) or not np.isfinite(probabilities).all():
            raise ValueError(
                f"the model returned {probabilities.tolist()[:10]} for {len(names)} classes"
            )
        return {name: float(p) for name, p in zip(names, probabilities, strict=True)}

    def describe(self) -> dict[str, Any]:
        """What ``/model`` says about this version."""
        out: dict[str, Any] = {
            "model": self.name,
            "version": self.version,
            "family": str(self.family),
            "run_id": self.run_id,
            "commit": self.tags.get(keys.COMMIT),
            "chain": self.tags.get(keys.CHAIN),
            "repository": self.tags.get(keys.REPOSITORY),
            "metrics": dict(self.metrics),
            "tags": dict(self.tags),
            "loaded_at": _iso(self.loaded_at),
        }
        if self.family == Family.EEG:
            out["input"] = {
                "shape": ["N", *self.epoch_shape],
                "dtype": self.input_dtype,
                "shape_from": self.shape_source,
            }
        if self.preprocessing is not None:
            out["input"] = self.preprocessing.as_metadata()
        return out


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# --------------------------------------------------------------------------- loading


def _signature_input(model: Any) -> tuple[tuple[int, int], str] | None:
    """(channels, samples) and dtype from a tensor signature shaped (-1, C, S)."""
    from trainchain.chain.registry import signature_tensor

    signed = signature_tensor(model)
    if signed is None:
        return None
    dims, dtype = signed
    if len(dims) == 3 and dims[1] > 0 and dims[2] > 0:
        return (dims[1], dims[2]), dtype
    return None


def _heldout_shape(tracker: Tracker, run_id: str, dst: Path) -> tuple[int, int] | None:
    """(channels, samples) of the held-out ``X`` the version was scored on (header only)."""
    from numpy.lib import format as npy

    from trainchain.chain.registry import download_heldout

    try:
        path = download_heldout(tracker, run_id, dst)
    except NotInStore as err:  # a store that cannot answer raises: the load fails, retried
        log.info("no held-out data to read the input shape from (run %s): %s", run_id, err)
        return None
    try:
        with zipfile.ZipFile(path) as archive, archive.open("X.npy") as f:
            version = npy.read_magic(f)
            read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            dims = read(f)[0]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        log.info("the held-out data of run %s has no readable X: %s", run_id, err)
        return None
    return (int(dims[1]), int(dims[2])) if len(dims) == 3 else None


def _keras_model(model: Any) -> Any:
    """The Keras model a keras-flavor pyfunc wraps, or None (MLflow's wrapper calls
    ``predict`` with Keras's default progress bar: one line per request in the log)."""
    try:
        raw = model.get_raw_model()
    except Exception:
        return None
    return raw if type(raw).__module__.startswith("keras") else None


def _classes(model: Any, preprocessing: Preprocessing | None) -> tuple[str, ...] | None:
    """The class labels: a CNN's recorded class names, a scikit-learn model's ``classes_``."""
    if preprocessing is not None:
        return tuple(preprocessing.class_names)
    try:
        found = getattr(model.get_raw_model(), "classes_", None)
    except Exception:
        return None
    return tuple(str(c) for c in found) if found is not None else None


def read_drift_reference(model_dir: Path) -> tuple[Reference | None, str]:
    """The drift reference saved in a version's model folder, or None and why: a version
    without one (trained before trainchain wrote them, or by a script that does not) or
    with an unreadable one is served all the same, without drift monitoring."""
    from trainchain.families.drift import read_reference

    if not (model_dir / REFERENCE_FILE).is_file():
        return None, (
            f"this version has no drift reference ({REFERENCE_FILE} in its model folder): "
            "retrain it with this trainchain to monitor its inputs"
        )
    try:
        return read_reference(model_dir), ""
    except DriftError as err:
        log.warning("%s: drift monitoring off for this version", err)
        return None, f"its drift reference cannot be read: {err}"


def load_version(
    tracker: Tracker,
    name: str,
    version: str,
    workdir: Path,
    *,
    tf_threads: tuple[int, int] | None = None,
) -> LoadedModel:
    """Download and load version ``version`` of ``name`` with what serving needs to know.
    A CNN is loaded after TensorFlow's threads are set to ``tf_threads`` (intra, inter)."""
    import mlflow.pyfunc

    from trainchain.families.cnn import read_preprocessing, set_tensorflow_threads

    mv = tracker.client.get_model_version(name, version)
    target = Path(tempfile.mkdtemp(prefix=f"v{version}-", dir=workdir))
    if mv.run_id:
        local = tracker.download(mv.run_id, MODEL_ARTIFACT, target)
    else:
        from mlflow.artifacts import download_artifacts

        local = Path(download_artifacts(artifact_uri=mv.source, dst_path=str(target)))
    try:
        preprocessing: Preprocessing | None = read_preprocessing(local)
    except (ValueError, KeyError, TypeError, IndexError):
        preprocessing = None
    tags = {str(k): str(v) for k, v in (mv.tags or {}).items()}
    family = served_family(tags.get(keys.FAMILY), preprocessing is not None)
    if family == Family.CNN and preprocessing is None:
        raise ValueError(
            f"{name} v{version} is a CNN but its MLmodel records no 'trainchain' preprocessing "
            "metadata (image size, colour mode, classes); save it with "
            "trainchain.families.cnn.save_model"
        )
    if family == Family.CNN and tf_threads is not None:
        set_tensorflow_threads(*tf_threads)  # before the model's first TensorFlow operation
    model = mlflow.pyfunc.load_model(str(local))
    metrics: dict[str, float] = {}
    if mv.run_id:
        _, metrics, _ = tracker.run_data(mv.run_id)
    shape, source, dtype = EEG_DEFAULT_SHAPE, "default", "float64"
    if family == Family.EEG:
        signed = _signature_input(model)
        if signed is not None:
            (shape, dtype), source = signed, "signature"
        elif mv.run_id and (held := _heldout_shape(tracker, mv.run_id, target / "heldout")):
            shape, source = held, "held-out data"
    reference, note = read_drift_reference(local)
    return LoadedModel(
        name=name,
        version=str(version),
        family=family,
        model=model,
        path=target,
        run_id=mv.run_id or None,
        tags=tags,
        metrics=metrics,
        epoch_shape=shape,
        shape_source=source,
        input_dtype=dtype,
        preprocessing=preprocessing if family == Family.CNN else None,
        keras_model=_keras_model(model) if family == Family.CNN else None,
        classes=_classes(model, preprocessing if family == Family.CNN else None),
        drift_reference=reference,
        drift_note=note,
    )


# --------------------------------------------------------------------------- holder


@dataclass
class AliasStatus:
    """The last check of one alias: the version it named and what went wrong, if anything."""

    wanted: str | None = None
    error: str | None = None


Swap = Callable[[str, "LoadedModel | None", "LoadedModel | None"], None]
Loader = Callable[[Tracker, str, str, Path], LoadedModel]


class ModelHolder:
    """The champion (and, for canary or shadow, the challenger), kept current in a thread."""

    def __init__(
        self, config: ServeConfig, on_swap: Swap | None = None, loader: Loader | None = None
    ) -> None:
        self.config = config
        self.aliases = (CHAMPION, CHALLENGER) if config.uses_challenger else (CHAMPION,)
        self._models: dict[str, LoadedModel | None] = dict.fromkeys(self.aliases)
        self.status = {alias: AliasStatus() for alias in self.aliases}
        self._on_swap = on_swap
        self._loader = loader or partial(load_version, tf_threads=config.tf_threads)
        self._stop = threading.Event()
        self._checked = threading.Condition()
        self.checks = 0  # checks of the registry done (a failed one included)
        self._thread: threading.Thread | None = None
        self._tracker: Tracker | None = None
        self._reported: dict[str, str] = {}  # alias -> the error last logged
        # every alias of the model at the last check (None: not registered, or not read yet)
        self.registered: dict[str, str] | None = None
        if config.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="trainchain-serve-"))
        else:
            self.workdir = config.workdir / f"worker-{os.getpid()}"
            self.workdir.mkdir(parents=True, exist_ok=True)

    # ---- what requests read --------------------------------------------------
    def get(self, alias: str) -> LoadedModel | None:
        return self._models.get(alias)

    @property
    def champion(self) -> LoadedModel | None:
        return self._models[CHAMPION]

    @property
    def challenger(self) -> LoadedModel | None:
        return self._models.get(CHALLENGER)

    # ---- the watcher -----------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="trainchain-model-watcher", daemon=True
            )
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the watcher and the models' batchers; remove the downloaded models."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for model in {id(m): m for m in self._models.values() if m is not None}.values():
            model.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` holds after a check of the registry, or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._checked:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._checked.wait(min(left, 0.5))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # the watcher must outlive any one bad check
                log.exception("checking the registry for %s failed", self.config.model)
            self._stop.wait(self.config.reload_interval)

    def check(self) -> None:
        """Read the model's aliases once; load and swap in what moved."""
        try:
            tracker = self._registry()
            # None: no such model (a registry that cannot answer raised)
            registered = tracker.aliases(self.config.model)
        except Exception as err:  # the registry cannot answer: a 503 that says so
            # a StoreError names the store; anything else is kept, the watcher goes on
            detail = err.message if isinstance(err, StoreError) else f"{type(err).__name__}: {err}"
            for alias in self.aliases:
                self._fail(alias, f"cannot read the registry: {detail}")
        else:
            self.registered = registered
            for alias in self.aliases:
                if self._stop.is_set():
                    return
                self._refresh(tracker, alias, registered)
        with self._checked:
            self.checks += 1
            self._checked.notify_all()

    def registered_version(self, alias: str) -> str | None:
        """The version ``alias`` named at the last check, served here or not."""
        return (self.registered or {}).get(alias)

    def _registry(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.config.tracking_uri, self.config.artifact_root)
        return self._tracker

    def _fail(self, alias: str, message: str) -> None:
        status = self.status[alias]
        status.error = message
        if self._reported.get(alias) != message:
            self._reported[alias] = message
            log.error("%s %s: %s", self.config.model, alias, message)

    def _refresh(self, tracker: Tracker, alias: str, registered: dict[str, str] | None) -> None:
        name = self.config.model
        status = self.status[alias]
        current = self._models[alias]
        wanted = (registered or {}).get(alias)
        status.wanted = wanted
        if wanted is None:
            if alias == CHALLENGER:
                self._swap(alias, current, None)
                status.error = None
                return
            problem = (
                f"registered model {name!r} in {tracker.shown_uri} has no {alias!r} alias"
                if registered is not None
                else tracker.no_such_model(name).message
            )
            if current is not None:
                problem += f"; still serving v{current.version}"
            self._fail(alias, problem)
            return
        if current is not None and current.version == wanted:
            status.error = None
            return
        champion = self._models[CHAMPION]
        if alias == CHALLENGER and champion is not None and champion.version == wanted:
            self._swap(alias, current, None)  # the same version: the champion answers
            status.error = None
            return
        started = time.monotonic()
        try:
            loaded = self._loader(tracker, name, wanted, self.workdir)
        except Exception as err:
            still = f"; still serving v{current.version}" if current is not None else ""
            self._fail(alias, f"loading v{wanted} failed: {type(err).__name__}: {err}{still}")
            return
        if self._stop.is_set():  # closed while it loaded: never served, nothing to stop later
            return
        loaded.start_batching(self.config.batching)
        self._swap(alias, current, loaded)
        status.error = None
        self._reported.pop(alias, None)
        log.info(
            "%s: serving v%s as %s (was %s); loaded in %.1f s",
            name,
            wanted,
            alias,
            f"v{current.version}" if current else "none",
            time.monotonic() - started,
        )

    def _swap(self, alias: str, old: LoadedModel | None, new: LoadedModel | None) -> None:
        if old is new:
            return
        self._models[alias] = new  # the one atomic step requests see
        if self._on_swap is not None:
            self._on_swap(alias, old, new)
        if old is not None and all(m is not old for m in self._models.values()):
            # requests in flight hold the loaded model, not its files; its batcher answers
            # what it queued, and later requests holding it call the model directly
            old.close()
            shutil.rmtree(old.path, ignore_errors=True)
