"""Prometheus metrics of one app, safe with several gunicorn worker processes.

Each app has its own registry (tests build many apps in one process). Under
``trainchain serve`` the environment's ``PROMETHEUS_MULTIPROC_DIR`` (set by the
command before prometheus_client is imported) makes every worker write its values
to files there, and ``/metrics`` adds up the files of all workers.

The drift gauges (``trainchain_drift_*{model, group}``, set by each test of the shared
window, ``serving/drift.py``) are ``livemostrecent``: a scrape shows the value of the
latest test in any live worker, not a sum over the workers.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from trainchain.serving.models import LoadedModel

SUMMARY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServingMetrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "trainchain_serving_requests",
            "HTTP requests by endpoint (the route), method and status code",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "trainchain_serving_request_duration_seconds",
            "Time from the request's start to its response, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "trainchain_serving_predictions",
            "Predictions (one per epoch or image) by model version, alias and class",
            ["model", "version", "alias", "label"],
            registry=r,
        )
        self.model_info = Gauge(
            "trainchain_serving_model_info",
            "1 for the version each alias serves (in at least one worker), 0 for earlier ones",
            ["model", "alias", "version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_version = Gauge(
            "trainchain_serving_model_version",
            "The version number each alias serves, per worker process",
            ["model", "alias"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.reloads = Counter(
            "trainchain_serving_model_loads",
            "Versions loaded and swapped in, by alias",
            ["model", "alias"],
            registry=r,
        )
        self.shadow = Counter(
            "trainchain_serving_shadow_comparisons",
            "Shadow predictions compared with the champion's: agree, disagree or error",
            ["outcome"],
            registry=r,
        )
        self.shadow_dropped = Counter(
            "trainchain_serving_shadow_dropped",
            "Requests not mirrored to the challenger because the shadow queue was full",
            registry=r,
        )
        self._drift_metrics(r)

    def _drift_metrics(self, r: CollectorRegistry) -> None:
        """What the drift test of the champion's inputs shows (``serving/drift.py``)."""
        drift = ["model", "group"]
        self.drift_score = Gauge(
            "trainchain_drift_score",
            "Effect size of the latest drift test per feature group: the largest KS "
            "statistic (0-1); classes: total variation distance of the predicted shares",
            drift,
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.drift_p_value = Gauge(
            "trainchain_drift_p_value",
            "Smallest corrected p-value of the group in the latest drift test",
            drift,
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.drift_window_size = Gauge(
            "trainchain_drift_window_size",
            "Inputs in the window the latest drift test looked at",
            drift,
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.drift_detected = Gauge(
            "trainchain_drift_detected",
            "1 when the latest drift test rejected 'no drift' for the group, else 0",
            drift,
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.drift_dropped = Counter(
            "trainchain_drift_dropped",
            "Inputs left out of the drift window because its writer's queue was full",
            registry=r,
        )
        self.drift_retrain_requests = Counter(
            "trainchain_drift_retrain_requests",
            "Retrain requests POSTed by serve --retrain-url once drift persisted, by the "
            "answer of hooks serve: queued, pending, cooling_down, ignored, failed (not "
            "delivered: the server log says why)",
            ["model", "outcome"],
            registry=r,
        )
        self.drift_summary_seconds = Histogram(
            "trainchain_drift_summary_seconds",
            "Time to summarise one request's inputs for drift monitoring",
            buckets=SUMMARY_BUCKETS,
            registry=r,
        )

        self.captures = Counter(
            "trainchain_serving_captures",
            "Requests sampled for capture (--capture), by outcome: stored, failed (the disk "
            "refused), dropped (the write queue was full), too_large",
            ["outcome"],
            registry=r,
        )
        self.feedback = Counter(
            "trainchain_serving_feedback",
            "True labels received by POST /feedback (one per epoch or image), by whether they "
            "match the prediction",
            ["outcome"],
            registry=r,
        )

    def swapped(self, alias: str, old: LoadedModel | None, new: LoadedModel | None) -> None:
        """Record that ``alias`` now serves ``new`` (None: nothing) instead of ``old``."""
        if old is not None:
            self.model_info.labels(old.name, alias, old.version).set(0)
        if new is not None:
            self.model_info.labels(new.name, alias, new.version).set(1)
            self.model_version.labels(new.name, alias).set(float(new.version))
            self.reloads.labels(new.name, alias).inc()
        elif old is not None:
            self.model_version.labels(old.name, alias).set(0)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            merged, path=str(self.multiprocess_dir)
        )
        return generate_latest(merged), CONTENT_TYPE_LATEST
