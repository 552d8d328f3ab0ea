"""Drift of the champion's inputs, watched by the service (``GET /drift``, ``/metrics``).

Per request (on the request thread, well under a millisecond for a few epochs): the
family's :data:`~trainchain.families.base.ServingSummary` of the inputs the model was
just given, and the classes it just answered; nothing runs the model again. The summary
goes to a bounded queue; one writer thread per worker process appends it to the window.
When the queue is full the summary is dropped and counted
(``trainchain_drift_dropped_total``): monitoring never slows a request down.

The window is shared by the gunicorn workers (separate processes): an SQLite database in
the server's run folder (WAL, a busy timeout), one row per input (model, version, time,
its summary as float64 bytes, the class answered), at most ``monitoring.window`` rows per
version (the oldest deleted as rows come). A window per worker would see 1/N of the
traffic each and disagree with the other workers' windows; a shared file needs no
coordinator, survives a worker's restart, and costs one small transaction per batch of
summaries, off the request path.

The test (:func:`trainchain.core.drift.test`, KS per feature, G-test on the class shares,
one correction) runs when ``GET /drift`` or a ``/metrics`` scrape asks for it, at most
once every ``drift_interval`` seconds per worker (the result is cached): bounded CPU
whatever the traffic, and a scrape always shows a result at most that old. Its result
sets four gauges per (model, group) in prometheus_client's ``livemostrecent`` mode: with
several workers a scrape shows the latest test, not a sum of the workers' values.

Only the champion's answers are monitored (the reference and the classes are the
champion's; a canary's share answered by the challenger is left out). A version whose
model folder holds no reference is served as usual, with drift off: ``/drift`` and
``/health`` say why.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, jsonify

from trainchain.adapters.tracking import CHAMPION
from trainchain.core import drift
from trainchain.core.config import Monitoring
from trainchain.core.errors import ConfigError
from trainchain.families.base import ServingSummary, family_spec
from trainchain.serving.config import RetrainConfig
from trainchain.serving.metrics import ServingMetrics
from trainchain.serving.models import LoadedModel
from trainchain.serving.retrain import RetrainRequests, Ticker

__all__ = ["DriftService", "WindowStore"]

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 10.0  # a transaction here lasts milliseconds
MIN_TICK_S = 1.0  # --retrain-url: the window is tested at most this often unasked
GAP_SLACK = 0.9  # tests a tick apart count as apart, whatever the thread's timing
WRITE_BATCH = 64  # queued summaries written in one transaction
NOT_SUMMARISED = (
    "not summarised by the service (too costly per request); `trainchain drift` tests it"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    at REAL NOT NULL,
    layout TEXT NOT NULL,
    summary BLOB NOT NULL,
    label TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS inputs_by_version ON inputs (model, version, id);
CREATE TABLE IF NOT EXISTS streaks (
    model TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    drifted INTEGER NOT NULL,
    counted_at REAL NOT NULL,
    requested_at REAL
)
"""


@dataclass(frozen=True)
class Batch:
    """One request's summaries, as rows of the window: ``rows[i]`` is input ``i``'s
    features, group after group as ``layout`` ((group, width), ...) says."""

    model: str
    version: str
    at: float
    layout: tuple[tuple[str, int], ...]
    rows: np.ndarray
    labels: tuple[str, ...]


def _layout_text(layout: Sequence[tuple[str, int]]) -> str:
    return ",".join(f"{g}:{w}" for g, w in layout)


def _layout_of(text: str) -> list[tuple[str, int]]:
    out = []
    for part in text.split(","):
        group, _, width = part.rpartition(":")
        out.append((group, int(width)))
    return out


class WindowStore:
    """The latest ``size`` inputs' summaries of each model version, in one SQLite file
    every worker process of the service reads and writes."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as err:
            raise ConfigError(
                f"cannot open the drift window {self.path}: {err}",
                hint="the server's run folder must be writable",
            ) from None
        try:
            yield con
        finally:
            con.close()

    def append(self, batches: Sequence[Batch]) -> None:
        """Add the batches' rows; keep the newest ``size`` of each version they touch."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                for b in batches:
                    layout = _layout_text(b.layout)
                    con.executemany(
                        "INSERT INTO inputs (model, version, at, layout, summary, label) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (b.model, b.version, b.at, layout, row.tobytes(), label)
                            for row, label in zip(b.rows, b.labels, strict=True)
                        ],
                    )
                for model, version in {(b.model, b.version) for b in batches}:
                    con.execute(
                        "DELETE FROM inputs WHERE model = ? AND version = ? AND id <= ("
                        "SELECT id FROM inputs WHERE model = ? AND version = ? "
                        "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                        (model, version, model, version, self.size),
                    )
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def window(self, model: str, version: str) -> drift.Window:
        """The version's window: its newest ``size`` rows, oldest first."""
        with self._connect() as con:
            found = con.execute(
                "SELECT layout, summary, label FROM inputs WHERE model = ? AND version = ? "
                "ORDER BY id DESC LIMIT ?",
                (model, version, self.size),
            ).fetchall()
        window = drift.Window(self.size)
        if not found:
            return window
        layout_text = found[0][0]  # the newest; a version's layout does not change
        kept = [(blob, label) for text, blob, label in reversed(found) if text == layout_text]
        layout = _layout_of(layout_text)
        rows = np.stack([np.frombuffer(blob, dtype=np.float64) for blob, _ in kept])
        summary, at = {}, 0
        for group, width in layout:
            summary[group] = rows[:, at : at + width]
            at += width
        window.add(summary, [label for _, label in kept])
        return window

    def count_test(
        self,
        model: str,
        version: str,
        drifted: bool,
        *,
        now: float,
        gap: float,
        persist: int,
        cooldown: float,
    ) -> bool:
        """Count a drift test of ``version`` in the streak every worker shares: drifted tests
        at least ``gap`` seconds apart add one (closer ones are the same window seen again),
        a test without drift, or another version, starts over. True, once per ``cooldown``
        seconds, when the streak has reached ``persist``: ask for a retrain now."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute(
                    "SELECT version, drifted, counted_at, requested_at FROM streaks "
                    "WHERE model = ?",
                    (model,),
                ).fetchone()
                streak, counted_at, requested_at = 0, -math.inf, None
                if row is not None:
                    requested_at = row[3]
                    if row[0] == version:
                        streak, counted_at = row[1], row[2]
                if not drifted:
                    streak, counted_at = 0, now
                elif now - counted_at >= gap:
                    streak, counted_at = streak + 1, now
                ask = (
                    drifted
                    and streak >= persist
                    and (requested_at is None or now - requested_at >= cooldown)
                )
                con.execute(
                    "INSERT OR REPLACE INTO streaks (model, version, drifted, counted_at, "
                    "requested_at) VALUES (?, ?, ?, ?, ?)",
                    (model, version, streak, counted_at, now if ask else requested_at),
                )
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        return ask

    def request_failed(self, model: str, requested_at: float) -> None:
        """The retrain request made at ``requested_at`` did not arrive: the next drifted
        test may ask again (unless another request was made since)."""
        with self._connect() as con:
            con.execute(
                "UPDATE streaks SET requested_at = NULL WHERE model = ? AND requested_at = ?",
                (model, requested_at),
            )

    def forget(self, model: str, keep: Sequence[str]) -> None:
        """Drop the rows of ``model``'s versions other than ``keep`` (after a swap)."""
        marks = ",".join("?" * len(keep))
        with self._connect() as con:
            con.execute(
                f"DELETE FROM inputs WHERE model = ? AND version NOT IN ({marks})",  # noqa: S608 - placeholders only
                (model, *keep),
            )


class Writer:
    """One thread appending queued batches to the store; at most ``size`` waiting."""

    def __init__(self, store: WindowStore, size: int) -> None:
        self.store = store
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=size)  # None: wake up
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainchain-drift", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> bool:
        """Queue ``batch``; False (dropped) when the queue is full or the writer stopped."""
        if self._stop.is_set():
            return False
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            batches = [] if first is None else [first]
            while len(batches) < WRITE_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is not None:
                    batches.append(more)
            if not batches:
                continue
            try:
                self.store.append(batches)
            except (sqlite3.Error, ConfigError) as err:  # the window misses them; say so
                log.error(
                    "drift window %s: %d inputs not kept: %s", self.store.path, len(batches), err
                )

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        self._stop.set()
        with contextlib.suppress(queue.Full):  # a full queue: the thread is awake anyway
            self._queue.put_nowait(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


@dataclass(frozen=True)
class _Watched:
    """The champion version being monitored, with its reference and its family's summary."""

    model: str
    version: str
    reference: drift.Reference
    summarise: ServingSummary


@dataclass(frozen=True)
class _Tested:
    version: str
    at: float  # time.monotonic() of the test
    body: dict[str, Any]


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class DriftService:
    """The drift monitoring of one worker: summaries in, test results out.

    ``monitoring`` None means ``--no-drift``. ``path`` is the shared window's file (None:
    a temporary one for this app alone, removed on :meth:`close`)."""

    def __init__(
        self,
        monitoring: Monitoring | None,
        metrics: ServingMetrics,
        *,
        path: Path | None = None,
        interval: float = 10.0,
        queue_size: int = 1024,
        retrain: RetrainConfig | None = None,
    ) -> None:
        self.monitoring = monitoring
        self.metrics = metrics
        self.interval = interval
        self._own_dir: Path | None = None
        self._watched: _Watched | None = None
        self._off = "" if monitoring is not None else "drift monitoring is off (--no-drift)"
        self._tested: _Tested | None = None
        self._lock = threading.Lock()
        self._gauged: set[tuple[str, str]] = set()
        self._failed_once = False
        self.writer: Writer | None = None
        self.retrain: RetrainRequests | None = None
        self._ticker: Ticker | None = None
        if monitoring is None:
            return
        if path is None:
            self._own_dir = Path(tempfile.mkdtemp(prefix="trainchain-drift-"))
            path = self._own_dir / "drift.sqlite"
        store = WindowStore(path, monitoring.window)
        self.writer = Writer(store, queue_size)
        if retrain is not None:
            persist, cooldown = monitoring.persist_windows, retrain.cooldown

            def count(model: str, version: str, drifted: bool, now: float) -> bool:
                return store.count_test(
                    model,
                    version,
                    drifted,
                    now=now,
                    gap=interval * GAP_SLACK,
                    persist=persist,
                    cooldown=cooldown,
                )

            self.retrain = RetrainRequests(retrain, count, store.request_failed, metrics)
            # tested even when nothing scrapes /metrics (no Prometheus on the direct path)
            self._ticker = Ticker(lambda: self.report(fresh=True), max(interval, MIN_TICK_S))

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.close()
        if self.retrain is not None:
            self.retrain.close()
        if self.writer is not None:
            self.writer.close()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    # ---- model swaps (the watcher thread) -------------------------------------------
    def swapped(self, alias: str, old: LoadedModel | None, new: LoadedModel | None) -> None:
        """The champion changed: watch ``new`` when it has a reference and its family a
        serving summary; else drift is off for it, and this worker's gauges say no drift."""
        if alias != CHAMPION or self.writer is None:
            return
        self._watched, self._tested = None, None
        self._clear_gauges()
        if new is None:
            self._off = "no champion loaded"
            return
        if new.drift_reference is None:
            self._off = f"off for v{new.version}: {new.drift_note}"
            return
        spec = family_spec(new.family)
        if spec.serving_summary is None:
            self._off = f"off for v{new.version}: the {new.family} family declares no summary"
            return
        self._watched = _Watched(new.name, new.version, new.drift_reference, spec.serving_summary)
        self._off = ""
        keep = [new.version] + ([old.version] if old is not None else [])
        try:
            self.writer.store.forget(new.name, keep)
        except sqlite3.Error as err:
            log.warning("drift window: older versions' rows not removed: %s", err)

    def note(self) -> str:
        """Why drift is not monitored now ("" when it is)."""
        return self._off

    # ---- requests ------------------------------------------------------------------
    def observe(
        self,
        model: LoadedModel,
        alias: str,
        inputs: Any,
        labels: Sequence[str],
        probabilities: Any = None,
    ) -> None:
        """Summarise a request the champion answered and queue it for the window."""
        watched = self._watched
        if (
            watched is None
            or self.writer is None
            or alias != CHAMPION
            or model.version != watched.version
        ):
            return
        started = time.perf_counter()
        try:
            summary = watched.summarise(inputs, probabilities)
            groups = [g for g in watched.reference.groups if g in summary]
            arrays = [
                np.asarray(summary[g], dtype=np.float64).reshape(len(labels), -1) for g in groups
            ]
        except ValueError as err:  # the answer stands; the window misses this request
            if not self._failed_once:
                self._failed_once = True
                log.warning("drift: the inputs of a request could not be summarised: %s", err)
            return
        batch = Batch(
            model=watched.model,
            version=watched.version,
            at=time.time(),
            layout=tuple((g, a.shape[1]) for g, a in zip(groups, arrays, strict=True)),
            rows=np.concatenate(arrays, axis=1),
            labels=tuple(str(label) for label in labels),
        )
        self.metrics.drift_summary_seconds.observe(time.perf_counter() - started)
        if not self.writer.submit(batch):
            self.metrics.drift_dropped.inc(len(labels))

    # ---- the test ------------------------------------------------------------------
    def report(self, *, fresh: bool = False) -> dict[str, Any]:
        """``GET /drift``'s body: the latest test of the shared window (run now when the
        cached one is older than ``interval`` seconds, or ``fresh``: the ticker's)."""
        watched, monitoring = self._watched, self.monitoring
        if watched is None or monitoring is None or self.writer is None:
            return {"state": "off", "drifted": False, "message": self._off}
        with self._lock:
            cached = self._tested
            if (
                not fresh
                and cached is not None
                and cached.version == watched.version
                and time.monotonic() - cached.at < self.interval
            ):
                return cached.body
            try:
                window = self.writer.store.window(watched.model, watched.version)
                result = drift.test(watched.reference, window, monitoring)
            except (sqlite3.Error, ConfigError, drift.DriftError) as err:
                log.error("drift test of %s v%s failed: %s", watched.model, watched.version, err)
                return {
                    "state": "error",
                    "drifted": False,
                    "message": f"the drift test failed: {err}",
                    "model": watched.model,
                    "version": watched.version,
                }
            body = self._body(watched, window, result, monitoring)
            self._set_gauges(watched, result)
            if self._watched is watched:  # not swapped meanwhile
                self._tested = _Tested(watched.version, time.monotonic(), body)
                self._count(watched, result, monitoring)
            return body

    def _count(self, watched: _Watched, result: drift.DriftResult, monitoring: Monitoring) -> None:
        """A fresh test counts towards a retrain request (--retrain-url)."""
        if self.retrain is None:
            return
        try:
            self.retrain.tested(watched.model, watched.version, result, monitoring.persist_windows)
        except (sqlite3.Error, ConfigError) as err:
            log.error("drift of %s: the retrain streak was not counted: %s", watched.model, err)

    def _body(
        self,
        watched: _Watched,
        window: drift.Window,
        result: drift.DriftResult,
        monitoring: Monitoring,
    ) -> dict[str, Any]:
        n = len(window)
        served = set(window.groups) | {drift.CLASSES_GROUP}
        groups: dict[str, Any] = {}
        for tested in result.groups:
            if n and tested.group not in served:
                tested = replace(tested, note=NOT_SUMMARISED)  # noqa: PLW2901
            entry = tested.to_dict()
            del entry["group"]
            groups[tested.group] = entry
        state = "tested" if result.tested else "collecting"
        message = (
            f"{'drift detected' if result.detected else 'no drift'} in the latest {n} inputs"
            if result.tested
            else f"not enough inputs yet ({n} of min_window {monitoring.min_window})"
        )
        return {
            "state": state,
            "drifted": result.detected,
            "message": message,
            "model": watched.model,
            "version": watched.version,
            "window": n,
            "max_window": monitoring.window,
            "min_window": monitoring.min_window,
            "alpha": monitoring.alpha,
            "correction": monitoring.correction,
            "tested_at": _iso(time.time()),
            "worker": os.getpid(),
            "groups": groups,
        }

    def _set_gauges(self, watched: _Watched, result: drift.DriftResult) -> None:
        m = self.metrics
        for g in result.groups:
            if g.note and g.p_value is None and g.window == 0:
                continue  # not summarised here: no gauge rather than a false "no drift"
            labels = (watched.model, g.group)
            m.drift_window_size.labels(*labels).set(g.window)
            m.drift_detected.labels(*labels).set(1 if g.detected else 0)
            if g.p_value is not None and g.score is not None:
                m.drift_p_value.labels(*labels).set(g.p_value)
                m.drift_score.labels(*labels).set(g.score)
            self._gauged.add(labels)

    def _clear_gauges(self) -> None:
        """No test for the version served now: this worker's gauges say "no drift"."""
        for labels in self._gauged:
            self.metrics.drift_detected.labels(*labels).set(0)
        self._gauged.clear()


def drift_routes(app: Flask, drift_of: Callable[[], DriftService]) -> None:
    """``GET /drift`` on ``app``."""

    @app.get("/drift")
    def drift_view() -> Response:
        return jsonify(drift_of().report())


def health(service: DriftService) -> Mapping[str, Any]:
    """What ``/health`` says about drift monitoring."""
    note = service.note()
    return {"monitored": not note, "note": note}
