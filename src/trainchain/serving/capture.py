"""Capture of served inputs and their true labels (``trainchain serve --capture DIR``).

A sampled share of prediction requests is stored in one folder, one set of files per
request, named by its request id (time-ordered hex, so names sort oldest first):

- ``<id>.npy`` (EEG epochs as parsed, float64) or ``<id>.image`` (the uploaded bytes);
- ``<id>.json``: model, version, alias, family, time, predicted labels, the model's
  classes; written last, so a request without it is not captured (yet);
- ``<id>.feedback.json``: the true labels ``POST /feedback`` received, written once.

Every file is written to a ``.tmp-`` file and renamed (feedback: hard-linked, which
fails if it exists), so several gunicorn worker processes share the folder without an
index. Writes happen on a background thread with a bounded queue: a prediction never
waits for the disk, and a write that fails (or finds the queue full) is counted, never
answered with an error. Each worker looks at the folder's size after every 2% of the
cap it wrote and deletes the oldest captures down to 75% of the cap, so the folder
stays under the cap with one or two workers (each further worker may add 12%).

:func:`export_captures` turns the labelled captures into data the families read: EEG
epochs files (``*.epochs.npz``, :func:`trainchain.families.eeg.save_epochs`) and image
class folders (``OUT/<label>/<id>.png``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from trainchain.core.config import Family
from trainchain.core.errors import TrainchainError
from trainchain.serving.background import BackgroundPool
from trainchain.serving.config import CaptureConfig
from trainchain.serving.inputs import RequestError

log = logging.getLogger(__name__)

REQUEST_ID = re.compile(r"^[0-9a-f]{24}$")
TMP_PREFIX = ".tmp-"
META, FEEDBACK, EPOCHS, IMAGE = ".json", ".feedback.json", ".npy", ".image"
LOW_WATER = 0.75  # a scan that finds more deletes the oldest captures down to this share
SCAN_EVERY = 0.02  # share of the cap a worker writes between two looks at the folder
LARGEST = 0.10  # share of the cap one capture may take; larger ones are not stored
STALE_TMP = 600.0  # seconds after which a .tmp- file is a crashed write's leftover
MAX_LABEL = 200  # characters of one feedback label


def new_request_id() -> str:
    """24 hex digits: the time in ns, then random bits; sorting ids sorts by time."""
    return f"{time.time_ns():016x}{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Capture:
    """One answered request to store: its input, who answered, and what they said."""

    request_id: str
    model: str
    version: str
    alias: str
    family: Family
    predicted: Sequence[str]
    classes: Sequence[str] | None
    epochs: npt.NDArray[Any] | None = None
    image: bytes | None = None
    at: float = field(default_factory=time.time)

    def size(self) -> int:
        if self.epochs is not None:
            return int(self.epochs.nbytes) + 1024
        return len(self.image or b"") + 1024

    def meta(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "alias": self.alias,
            "family": str(self.family),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
            "predicted": list(self.predicted),
            "classes": list(self.classes) if self.classes is not None else None,
            "input": self.request_id + (EPOCHS if self.epochs is not None else IMAGE),
            "shape": list(self.epochs.shape) if self.epochs is not None else None,
        }


def _write_atomic(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write ``data`` to a temporary file beside ``path`` and rename it there; with
    ``exclusive``, link it instead, and return False if ``path`` exists already."""
    tmp = path.with_name(f"{TMP_PREFIX}{secrets.token_hex(6)}-{path.name}")
    try:
        with tmp.open("xb") as f:
            f.write(data)
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _npy_bytes(array: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class CaptureStore:
    """The capture folder of one worker process: sampling, background writes, the size
    cap, and feedback. ``count(outcome)`` is told of every capture's fate: ``stored``,
    ``failed`` (the disk refused), ``dropped`` (queue full), ``too_large``."""

    def __init__(self, config: CaptureConfig, count: Callable[[str], None]) -> None:
        self.config = config
        self.folder = config.folder
        self._count = count
        self._pool = BackgroundPool(config.queue, "capture")
        self._since_scan = math.inf  # look at the folder before the first write
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # each write will fail and be counted; predictions go on
            log.warning("capture folder %s cannot be made: %s", self.folder, err)

    def sampled(self, draw: float) -> bool:
        """Whether a request whose uniform draw in [0, 1) is ``draw`` is captured."""
        return draw < self.config.rate

    def submit(self, capture: Capture) -> bool:
        """Queue ``capture`` to be written; False when it will not be (counted)."""
        if capture.size() > self.config.max_bytes * LARGEST:
            self._count("too_large")
            return False
        if not self._pool.submit(lambda: self._write(capture)):
            self._count("dropped")
            return False
        return True

    def _write(self, capture: Capture) -> None:
        rid = capture.request_id
        try:
            if capture.epochs is not None:
                _write_atomic(self.folder / (rid + EPOCHS), _npy_bytes(capture.epochs))
            else:
                _write_atomic(self.folder / (rid + IMAGE), capture.image or b"")
            _write_atomic(self.folder / (rid + META), json.dumps(capture.meta()).encode())
        except OSError as err:
            self._count("failed")
            log.warning("capture %s not stored in %s: %s", rid, self.folder, err)
            return
        self._count("stored")
        self._since_scan += capture.size()
        if self._since_scan >= self.config.max_bytes * SCAN_EVERY:
            self.prune()

    def prune(self) -> int:
        """Delete the oldest captures until the folder holds at most 75% of the cap, if
        it holds more; also crashed writes' leftovers. The folder's size in bytes after."""
        self._since_scan = 0
        now = time.time()
        total = 0
        by_id: dict[str, list[tuple[Path, int]]] = {}
        try:
            entries = list(os.scandir(self.folder))
        except OSError as err:
            log.warning("capture folder %s not readable: %s", self.folder, err)
            return 0
        for entry in entries:
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # another worker deleted it
                continue
            if entry.name.startswith(TMP_PREFIX):
                if now - stat.st_mtime > STALE_TMP:
                    Path(entry.path).unlink(missing_ok=True)
                else:
                    total += stat.st_size
                continue
            total += stat.st_size
            by_id.setdefault(entry.name.split(".", 1)[0], []).append(
                (Path(entry.path), stat.st_size)
            )
        target = self.config.max_bytes * LOW_WATER
        if total > target:
            for rid in sorted(by_id):
                for path, size in by_id[rid]:
                    try:
                        path.unlink(missing_ok=True)
                    except OSError as err:
                        log.warning("capture %s not deleted: %s", path, err)
                        continue
                    total -= size
                if total <= target:
                    break
        return total

    def feedback(self, request_id: Any, labels: Any) -> list[str]:
        """Store the true ``labels`` of captured request ``request_id`` and return what the
        model predicted; else a :class:`RequestError`: 400 a bad id or labels, 404 not
        captured, 409 feedback given already (labels are given once, never replaced)."""
        if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
            raise RequestError(
                400,
                f"request_id: expected the 24 hex digits a prediction answered with "
                f"(request_id, X-Request-Id), got {str(request_id)[:60]!r}",
            )
        meta = read_meta(self.folder / (request_id + META))
        if meta is None:
            raise RequestError(
                404,
                f"request {request_id} is not captured: only a sampled share of requests is "
                f"stored (--capture-rate {self.config.rate:g}), the oldest are deleted beyond "
                "--capture-max, and a capture is written a moment after its answer",
                request_id=request_id,
            )
        predicted = meta.get("predicted") or []
        classes = meta.get("classes")
        problem = _label_problem(labels, len(predicted), classes)
        if problem:
            raise RequestError(400, problem, request_id=request_id, expected_count=len(predicted))
        record = {"request_id": request_id, "labels": labels, "time": time.time()}
        try:
            written = _write_atomic(
                self.folder / (request_id + FEEDBACK),
                json.dumps(record).encode(),
                exclusive=True,
            )
        except OSError as err:
            log.warning("feedback for %s not stored: %s", request_id, err)
            raise RequestError(
                503, f"the feedback could not be stored: {type(err).__name__}; try again"
            ) from None
        if not written:
            raise RequestError(
                409,
                f"request {request_id} has feedback already: its true labels are given once",
                request_id=request_id,
            )
        return [str(v) for v in predicted]

    def close(self) -> None:
        self._pool.close()


def _label_problem(labels: Any, count: int, classes: Sequence[str] | None) -> str | None:
    """What is wrong with ``labels`` as the true labels of ``count`` predictions."""
    expected = f"a list of {count} label(s), one per epoch or image of that request"
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        return f"labels: expected {expected}, got {json.dumps(labels)[:80]}"
    if len(labels) != count:
        return f"labels: expected {expected}, got {len(labels)}"
    if any(not v or len(v) > MAX_LABEL for v in labels):
        return f"labels: expected non-empty labels of at most {MAX_LABEL} characters"
    if classes is not None:
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            return f"labels: {unknown[:10]} are not among the model's classes {list(classes)}"
    return None


def read_meta(path: Path) -> dict[str, Any] | None:
    """A capture's metadata, or None when it is not (or no longer) there."""
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("capture metadata %s unreadable: %s", path, err)
        return None
    return meta if isinstance(meta, dict) else None


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class Labelled:
    """A captured request with its true labels."""

    meta: dict[str, Any]
    labels: list[str]
    input: Path


def labelled_captures(folder: Path) -> Iterator[Labelled]:
    """The captures of ``folder`` that received feedback, oldest first."""
    if not folder.is_dir():
        raise TrainchainError(
            f"{folder} is not a folder: expected the --capture folder of trainchain serve"
        )
    for path in sorted(folder.glob("*" + FEEDBACK)):
        rid = path.name[: -len(FEEDBACK)]
        meta = read_meta(folder / (rid + META))
        feedback = read_meta(path)
        if meta is None or feedback is None:  # deleted by the cap meanwhile
            continue
        source = folder / str(meta.get("input", ""))
        if source.is_file():
            yield Labelled(meta, [str(v) for v in feedback.get("labels", [])], source)


@dataclass
class ExportSummary:
    """What :func:`export_captures` wrote."""

    files: list[Path] = field(default_factory=list)
    epochs: int = 0
    images: int = 0


def export_captures(folder: Path, out: Path) -> ExportSummary:
    """Write the labelled captures of ``folder`` into ``out``: EEG epochs as
    ``<model>-v<version>.epochs.npz`` (one per served version; the EEG family's
    ``load_epochs`` reads them), images as class folders ``<label>/<id>.png``."""
    from PIL import Image

    from trainchain.families.eeg import EPOCHS_SUFFIX, save_epochs

    summary = ExportSummary()
    eeg: dict[tuple[str, str], tuple[list[npt.NDArray[Any]], list[str]]] = {}
    for item in labelled_captures(folder):
        rid = str(item.meta["request_id"])
        if item.meta.get("family") == str(Family.CNN):
            label = item.labels[0]
            if "/" in label or label.startswith("."):
                log.warning("capture %s: label %r cannot name a folder; skipped", rid, label)
                continue
            target = out / label / f"{rid}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(item.input) as image:
                image.save(target, format="PNG")
            summary.files.append(target)
            summary.images += 1
            continue
        x = np.load(item.input, allow_pickle=False)
        xs, ys = eeg.setdefault((str(item.meta["model"]), str(item.meta["version"])), ([], []))
        xs.append(x)
        ys += item.labels
    for (model, version), (xs, ys) in sorted(eeg.items()):
        path = save_epochs(out / f"{model}-v{version}{EPOCHS_SUFFIX}", np.concatenate(xs), ys)
        summary.files.append(path)
        summary.epochs += len(ys)
    return summary
