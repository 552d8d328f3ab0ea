"""The direct path of a retrain request: the service itself asks `trainchain hooks serve`.

With ``serve --retrain-url URL --retrain-token-file FILE`` every drift test of the shared
window is counted in a streak all workers share (:meth:`WindowStore.count_test`, tests at
least ``--drift-interval`` apart); once ``monitoring.persist_windows`` tests in a row said
drifted, one worker POSTs a firing ``TrainchainInputDrift`` alert in Alertmanager's webhook
JSON (:mod:`trainchain.core.alerts`, the body Prometheus' rule makes Alertmanager send) to
``URL`` with the bearer token: one receiver, whose one-pending-retrain and cooldown rules
apply to both paths. This server asks at most once per ``--retrain-cooldown`` per model.

The POST runs on a background thread with a bounded timeout: a request to the service never
waits for it. Its outcome is logged and counted in
``trainchain_drift_retrain_requests_total{model, outcome}``; one that was not delivered
frees the cooldown, so the next drifted test asks again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from trainchain.core.alerts import drift_notification, drifted_text
from trainchain.core.drift import DriftResult
from trainchain.core.errors import ConfigError
from trainchain.serving.background import BackgroundPool
from trainchain.serving.config import RetrainConfig
from trainchain.serving.metrics import ServingMetrics

__all__ = ["RetrainRequests", "Ticker"]

log = logging.getLogger(__name__)

RECEIVER = "trainchain-serve"  # the notification's receiver: this server, not Alertmanager
FAILED = "failed"
MAX_ANSWER = 64 * 1024


class RetrainRequests:
    """Counts drift tests and asks for a retrain when drift persisted."""

    def __init__(
        self,
        config: RetrainConfig,
        count: Callable[[str, str, bool, float], bool],
        failed: Callable[[str, float], None],
        metrics: ServingMetrics,
    ) -> None:
        self.config = config
        self._count = count  # (model, version, drifted, now) -> ask now?
        self._failed = failed  # (model, requested_at): the request did not arrive
        self.metrics = metrics
        self._pool = BackgroundPool(1, "retrain")

    def tested(self, model: str, version: str, result: DriftResult, persist: int) -> None:
        """One drift test of ``model`` v``version`` done: count it; POST when it is time."""
        if not result.tested:
            return
        now = time.time()
        if not self._count(model, version, result.detected, now):
            return
        drifted = drifted_text((g.group, g.p_value, g.score) for g in result.groups if g.detected)
        summary = (
            f"The inputs of {model} v{version} drifted in {persist} consecutive drift "
            "tests of trainchain serve: a retrain is asked for"
        )
        body = drift_notification(model, drifted, summary=summary, receiver=RECEIVER, now=now)
        log.warning(
            "drift of %s v%s persisted: asking %s for a retrain", model, version, self.config.url
        )
        if not self._pool.submit(lambda: self._post(model, body, now)):
            self._not_delivered(model, FAILED, "a retrain request is still being sent", now)

    def _post(self, model: str, body: dict[str, Any], at: float) -> None:
        request = urllib.request.Request(  # noqa: S310 - http(s) only, checked in RetrainConfig
            self.config.url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.config.token.decode()}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:  # noqa: S310
                answer = json.loads(response.read(MAX_ANSWER) or b"{}")
        except urllib.error.HTTPError as err:
            self._not_delivered(
                model,
                FAILED,
                f"{self.config.url} answered {err.code}: {err.read(2000).decode(errors='replace')}",
                at,
            )
            return
        except (OSError, ValueError) as err:  # refused, timed out, not JSON
            self._not_delivered(model, FAILED, f"{self.config.url}: {err}", at)
            return
        alerts = answer.get("alerts") if isinstance(answer, dict) else None
        first = alerts[0] if isinstance(alerts, list) and alerts else {}
        if not isinstance(first, dict):
            first = {}
        outcome = str(first.get("outcome") or ("ignored" if "ignored" in first else "?"))
        detail = first.get("detail") or first.get("ignored") or first.get("run_id") or ""
        log.warning("retrain request for %s: %s", model, detail or outcome)
        self.metrics.drift_retrain_requests.labels(model, outcome).inc()

    def _not_delivered(self, model: str, outcome: str, why: str, at: float) -> None:
        log.error("retrain request for %s not delivered: %s", model, why)
        self.metrics.drift_retrain_requests.labels(model, outcome).inc()
        try:
            self._failed(model, at)
        except (sqlite3.Error, ConfigError) as err:  # the window's file; logged
            log.error("retrain request for %s: the cooldown is not freed: %s", model, err)

    def close(self) -> None:
        self._pool.close()


class Ticker:
    """A thread calling ``tick`` every ``interval`` seconds until closed: with
    --retrain-url the window is tested even when nothing scrapes ``/metrics``."""

    def __init__(self, tick: Callable[[], object], interval: float) -> None:
        self._tick = tick
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainchain-drift-tick", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._tick()
            except Exception:
                log.exception("drift: the periodic test failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)
