"""The Flask app: ``create_app(config)`` serves the registry's champion.

Endpoints: ``POST /classify`` (EEG epochs), ``POST /predict`` (images), ``POST /feedback``
(true labels of a captured request), ``GET /health``, ``GET /model``, ``GET /metrics``,
``GET /drift`` (``serving/drift.py``), ``GET /openapi.json``. Every prediction answers with
an ``X-Request-Id`` header; with ``--capture`` its JSON also carries ``request_id`` and
whether the request was ``captured``. Every error is JSON ``{"error": ..., "status": ...}``
with a 4xx status that says what was wrong; a 500 only for a bug, logged with its traceback.
"""

from __future__ import annotations

import atexit
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException
from werkzeug.wrappers import Response as BaseResponse

from trainchain.adapters.tracking import CHALLENGER, CHAMPION
from trainchain.core.config import Family
from trainchain.core.sizes import human_size, rounded_size
from trainchain.serving import inputs, openapi
from trainchain.serving.background import BackgroundPool
from trainchain.serving.batching import BatchFailed, BatchQueueFull, BatchTimeout
from trainchain.serving.capture import Capture, CaptureStore, new_request_id
from trainchain.serving.config import ServeConfig
from trainchain.serving.drain import DrainBody
from trainchain.serving.drift import DriftService, drift_routes
from trainchain.serving.drift import health as drift_health
from trainchain.serving.inputs import RequestError
from trainchain.serving.jsonio import OrjsonProvider
from trainchain.serving.metrics import ServingMetrics
from trainchain.serving.models import EEG_DEFAULT_SHAPE, LoadedModel, ModelHolder

log = logging.getLogger(__name__)

EXTENSION = "trainchain"
EPOCH_TYPES = ("application/json", "application/x-npy")
RAW_IMAGE_TYPES = ("application/octet-stream",)
ENDPOINT_OF = {Family.EEG: "POST /classify", Family.CNN: "POST /predict"}
T = TypeVar("T")


def pick_alias(
    share: float, draw: float, champion: LoadedModel, challenger: LoadedModel | None
) -> str:
    """Canary routing: the challenger when ``draw`` (uniform in [0, 1)) falls under ``share``
    and there is a challenger of the champion's family, else the champion."""
    if challenger is None or challenger.family != champion.family or draw >= share:
        return CHAMPION
    return CHALLENGER


class Service:
    """What the views share: config, the live models, metrics, the canary's draws, shadow."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = ServingMetrics(config.metrics_dir)
        self.drift = DriftService(
            config.monitoring,
            self.metrics,
            path=config.drift_db,
            interval=config.drift_interval,
            queue_size=config.drift_queue,
            retrain=config.retrain,
        )
        self.holder = ModelHolder(config, on_swap=self._swapped)
        self.rng = random.Random(config.seed)  # noqa: S311 - routing, not security
        self.shadow = BackgroundPool(config.shadow_queue, "shadow") if config.shadow else None
        self.capture = (
            CaptureStore(
                config.capture, lambda outcome: self.metrics.captures.labels(outcome).inc()
            )
            if config.capture is not None
            else None
        )
        self.capture_rng = random.Random()  # noqa: S311 - sampling, not security
        self._closed = False

    def start(self) -> None:
        self.holder.start()

    def _swapped(self, alias: str, old: LoadedModel | None, new: LoadedModel | None) -> None:
        self.metrics.swapped(alias, old, new)
        self.drift.swapped(alias, old, new)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.holder.close()
        self.drift.close()
        if self.shadow is not None:
            self.shadow.close()
        if self.capture is not None:
            self.capture.close()

    def unavailable_reason(self) -> str:
        status = self.holder.status[CHAMPION]
        return status.error or (
            f"loading v{status.wanted}" if status.wanted else "checking the registry"
        )

    def challenger_info(self) -> dict[str, Any] | None:
        """What ``/model`` says of the registry's challenger alias (None: there is none): its
        version, whether this service answers with it (``mode`` canary or shadow, the canary's
        share) and, when it does not, why; a served challenger adds its description."""
        config = self.config
        version = self.holder.registered_version(CHALLENGER)
        loaded = self.holder.challenger
        if version is None and loaded is None:
            return None
        mode = "canary" if config.canary_share > 0 else "shadow" if config.shadow else None
        routing = {"mode": mode, "canary_share": config.canary_share}
        if loaded is not None:
            return {**loaded.describe(), "alias": CHALLENGER, "served": True, **routing}
        champion = self.holder.champion
        if mode is None:
            why = "this service was started without --canary-share or --shadow"
        elif champion is not None and champion.version == version:
            why = f"v{version} is the champion too, which answers"
        else:
            why = self.holder.status[CHALLENGER].error or f"loading v{version}"
        return {"version": version, "alias": CHALLENGER, "served": False, **routing, "why": why}

    def serving(self) -> LoadedModel:
        """The champion, or a 503 saying why there is none yet."""
        champion = self.holder.champion
        if champion is None:
            raise RequestError(
                503,
                f"no model loaded yet for {self.config.model}: {self.unavailable_reason()}",
                retry_after=self.config.reload_interval,
            )
        return champion

    def choose(self, family: Family) -> tuple[str, LoadedModel]:
        """Who answers this request: the champion, or the challenger for a canary's share."""
        champion = self.serving()
        if champion.family != family:
            where = ENDPOINT_OF.get(champion.family)
            hint = (
                f"; send it to {where}"
                if where
                else ("; this service answers EEG (/classify) and image CNN (/predict) models")
            )
            raise RequestError(
                409,
                f"{champion.name} v{champion.version} is a {champion.family}-family model, "
                f"not {family}{hint}",
                family=str(champion.family),
            )
        challenger = self.holder.challenger
        if self.config.canary_share > 0 and challenger is not None:
            alias = pick_alias(self.config.canary_share, self.rng.random(), champion, challenger)
            if alias == CHALLENGER:
                return alias, challenger
        return CHAMPION, champion

    def mirror(
        self, champion: LoadedModel, run: Callable[[LoadedModel], list[str]], answered: list[str]
    ) -> None:
        """Shadow: the challenger answers the same input in the background; log and count."""
        challenger = self.holder.challenger
        if self.shadow is None or challenger is None or challenger.family != champion.family:
            return

        def compare() -> None:
            try:
                labels = run(challenger)
            except Exception as err:
                self.metrics.shadow.labels("error").inc()
                log.warning(
                    "shadow: %s challenger v%s failed: %s: %s",
                    champion.name,
                    challenger.version,
                    type(err).__name__,
                    err,
                )
                return
            agree = sum(a == b for a, b in zip(answered, labels, strict=False))
            self.metrics.shadow.labels("agree").inc(agree)
            self.metrics.shadow.labels("disagree").inc(len(answered) - agree)
            log.info(
                "shadow: %s champion v%s %s | challenger v%s %s | %s (%d of %d agree)",
                champion.name,
                champion.version,
                _short(answered),
                challenger.version,
                _short(labels),
                "agree" if agree == len(answered) else "DISAGREE",
                agree,
                len(answered),
            )

        if not self.shadow.submit(compare):
            self.metrics.shadow_dropped.inc()

    def record(
        self,
        alias: str,
        model: LoadedModel,
        labels: list[str],
        *,
        epochs: Any = None,
        image: bytes | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """This answer's request id, and with ``--capture`` what the answer adds: the id and
        whether the request is stored (a sampled share; the write happens in the background)."""
        rid = new_request_id()
        store = self.capture
        if store is None:
            return rid, {}
        captured = store.sampled(self.capture_rng.random()) and store.submit(
            Capture(
                request_id=rid,
                model=model.name,
                version=model.version,
                alias=alias,
                family=model.family,
                predicted=labels,
                classes=model.classes,
                epochs=epochs,
                image=image,
            )
        )
        return rid, {"request_id": rid, "captured": captured}


def _answer(recorded: tuple[str, dict[str, Any]], **body: Any) -> Response:
    """A prediction's JSON, with its request id (the header; the body too with --capture)."""
    rid, extra = recorded
    response = jsonify({**body, **extra})
    response.headers["X-Request-Id"] = rid
    return response


def _short(labels: list[str], limit: int = 16) -> str:
    shown = ",".join(labels[:limit])
    return f"[{shown}{',...' if len(labels) > limit else ''}]"


def _predict(model: LoadedModel, call: Callable[[], T]) -> T:
    """Run the model; a failure on a well-formed input is the input's (422), logged. With
    the image batcher: a full queue or no answer in time is a 503 (retry), and a batch
    whose model call failed answers each of its requests with what failed (422 as above
    for a ValueError, else 500)."""
    from mlflow.exceptions import MlflowException

    input_errors = (ValueError, ArithmeticError, MlflowException)
    who = f"{model.name} v{model.version}"
    try:
        return call()
    except input_errors as err:
        log.warning("%s could not process an input: %s", who, err)
        raise RequestError(
            422, f"{who} could not process this input: {type(err).__name__}: {str(err)[:300]}"
        ) from None
    except BatchFailed as err:  # the batcher logged it, once for the whole batch
        status = 422 if isinstance(err.cause, input_errors) else 500
        raise RequestError(status, f"{who}: {err.message}", batch_size=err.size) from None
    except (BatchQueueFull, BatchTimeout) as err:
        raise RequestError(503, err.message, retry_after=1) from None


def _error_response(body: dict[str, Any], status: int, headers: Any = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    if headers:
        for key, value in headers:
            if key.lower() not in {"content-type", "content-length"}:
                response.headers[key] = value
    return response


def create_app(config: ServeConfig, *, start: bool = True) -> Flask:
    """The service for ``config.model``; with ``start`` its watcher begins loading the
    champion at once (``/health`` answers 503 until it is loaded)."""
    app = Flask("trainchain.serving")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body
    app.wsgi_app = DrainBody(app.wsgi_app, config.drain_bound)  # type: ignore[method-assign]
    app.json = OrjsonProvider(app)
    service = Service(config)
    app.extensions[EXTENSION] = service
    _observe(app, service)
    _error_handlers(app, service)
    _model_routes(app, service)
    _feedback_route(app, service)
    _info_routes(app, service)
    drift_routes(app, lambda: service.drift)
    atexit.register(service.close)
    if start:
        service.start()
    return app


def service_of(app: Flask) -> Service:
    """The :class:`Service` behind an app made by :func:`create_app`."""
    service: Service = app.extensions[EXTENSION]
    return service


def _observe(app: Flask, service: Service) -> None:
    """Count every response by route, method and status, and time it."""

    @app.before_request
    def _started() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        service.metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        started = g.get("started")
        if started is not None:
            service.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response


def _too_large(service: Service) -> dict[str, Any]:
    """The 413 of a body over --max-body: its size, the limit and, for epochs to /classify,
    what to do instead (.npy, smaller batches: how many epochs fit, judged from the served
    epoch's shape and the body's first bytes)."""
    config = service.config
    length = request.content_length
    error = (
        f"the body{f' ({rounded_size(length)})' if length else ''} is larger than the limit "
        f"of {human_size(config.max_body)} (trainchain serve --max-body)"
    )
    body: dict[str, Any] = {"error": error, "max_body": config.max_body}
    mimetype = request.mimetype
    if request.path != "/classify" or mimetype not in EPOCH_TYPES:
        return body
    champion = service.holder.champion
    shape = champion.epoch_shape if champion and champion.family == Family.EEG else None
    try:  # unread so far; serving/drain.py reads the rest
        sample = request.environ["wsgi.input"].read(inputs.SAMPLE_BYTES)
    except (ClientDisconnected, OSError):
        sample = b""
    advice, details = inputs.too_large_advice(
        config.max_body,
        mimetype,
        shape,
        config.max_epochs,
        inputs.value_size(sample, mimetype),
    )
    return {**body, **details, "error": f"{error}: {advice}"}


def _error_handlers(app: Flask, service: Service) -> None:
    """Every error as JSON ``{"error", "status", ...}``; a 500 only for a bug, logged."""
    config = service.config

    @app.errorhandler(RequestError)
    def _request_error(err: RequestError) -> Response:
        response = _error_response(err.body(), err.status)
        if err.status == 503:
            after = err.details.get("retry_after", config.reload_interval)
            response.headers["Retry-After"] = str(max(1, round(after)))
        return response

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> BaseResponse:
        original = err.get_response()
        code = err.code or 500
        if code < 400:  # redirects stay redirects
            return original
        body: dict[str, Any] = {"error": err.description or err.name, "status": code}
        if code == 404:
            body["error"] = (
                f"no endpoint {request.path}: expected one of /classify, /predict, /feedback, "
                "/health, /model, /metrics, /drift, /openapi.json"
            )
        elif code == 405:
            valid = getattr(err, "valid_methods", None) or []
            allowed = sorted(m for m in valid if m not in {"OPTIONS", "HEAD"}) or sorted(valid)
            body["error"] = (
                f"{request.method} is not allowed on {request.path}: use {', '.join(allowed)}"
            )
            body["allowed"] = allowed
        elif code == 413:
            body.update(_too_large(service))
        return _error_response(body, code, original.headers.items())

    @app.errorhandler(Exception)
    def _bug(err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(
            {
                "error": f"internal error ({type(err).__name__}); the service log has the details",
                "status": 500,
            },
            500,
        )


def _top_label(probabilities: dict[str, float]) -> str:
    return max(probabilities, key=probabilities.__getitem__)


def _model_routes(app: Flask, service: Service) -> None:
    """POST /classify (EEG epochs) and POST /predict (images)."""
    config = service.config

    @app.post("/classify")
    def classify() -> Response:
        mimetype = request.mimetype
        if mimetype not in EPOCH_TYPES:
            raise RequestError(
                415,
                f"content type {mimetype or 'none'!r} is not read here: send epochs as "
                "application/json or application/x-npy (np.save)",
                accepted=list(EPOCH_TYPES),
            )
        alias, model = service.choose(Family.EEG)
        body = request.get_data(cache=False)
        epochs = inputs.parse_epochs(body, mimetype, model.epoch_shape, config.max_epochs)
        labels = _predict(model, lambda: model.classify(epochs))
        for label in labels:
            service.metrics.predictions.labels(model.name, model.version, alias, label).inc()
        service.drift.observe(model, alias, epochs, labels)
        if alias == CHAMPION:
            service.mirror(model, lambda m: m.classify(epochs), labels)
        recorded = service.record(alias, model, labels, epochs=epochs)
        return _answer(
            recorded, labels=labels, model=model.name, version=model.version, alias=alias
        )

    @app.post("/predict")
    def predict() -> Response:
        mimetype = request.mimetype
        multipart = mimetype == "multipart/form-data"
        if not (multipart or mimetype.startswith("image/") or mimetype in RAW_IMAGE_TYPES):
            raise RequestError(
                415,
                f"content type {mimetype or 'none'!r} is not read here: send the image as "
                "multipart/form-data (field 'image'), or raw as image/png, image/jpeg or "
                "application/octet-stream",
                accepted=["multipart/form-data", "image/*", *RAW_IMAGE_TYPES],
            )
        alias, model = service.choose(Family.CNN)
        if model.preprocessing is None:  # load_version refuses such a CNN; kept for typing
            raise RequestError(409, f"{model.name} v{model.version} records no preprocessing")
        with model.expecting():  # a batch being formed waits (boundedly) for this image
            data = inputs.image_from_upload(request.files) if multipart else request.get_data()
            pixels = inputs.decode_image(data, model.preprocessing, config.max_image_pixels)
        probabilities = _predict(model, lambda: model.predict_image(pixels))
        label = _top_label(probabilities)
        service.metrics.predictions.labels(model.name, model.version, alias, label).inc()
        service.drift.observe(model, alias, pixels, [label], [list(probabilities.values())])
        if alias == CHAMPION:
            service.mirror(model, lambda m: [_top_label(m.predict_image(pixels))], [label])
        return _answer(
            service.record(alias, model, [label], image=data),
            label=label,
            probabilities=probabilities,
            model=model.name,
            version=model.version,
            alias=alias,
        )


def _feedback_route(app: Flask, service: Service) -> None:
    """POST /feedback: the true labels of a captured request, stored beside its capture."""

    @app.post("/feedback")
    def feedback() -> Response:
        store = service.capture
        if store is None:
            raise RequestError(
                404,
                "this service captures no requests, so it takes no feedback: start it with "
                "trainchain serve --capture DIR",
            )
        if request.mimetype != "application/json":
            raise RequestError(
                415,
                f"content type {request.mimetype or 'none'!r} is not read here: send "
                'application/json {"request_id": "...", "labels": ["...", ...]}',
                accepted=["application/json"],
            )
        data = inputs.feedback_from_json(request.get_data(cache=False))
        predicted = store.feedback(data["request_id"], data["labels"])
        agree = sum(a == b for a, b in zip(predicted, data["labels"], strict=True))
        service.metrics.feedback.labels("agree").inc(agree)
        service.metrics.feedback.labels("disagree").inc(len(predicted) - agree)
        return jsonify(
            request_id=data["request_id"], labels=data["labels"], predicted=predicted, stored=True
        )


def _info_routes(app: Flask, service: Service) -> None:
    """GET /health, /model, /metrics and /openapi.json."""
    config = service.config
    holder = service.holder

    @app.get("/health")
    def health() -> Response:
        champion = holder.champion
        if champion is None:
            return _error_response(
                {
                    "status": "unavailable",
                    "model": config.model,
                    "version": None,
                    "alias": CHAMPION,
                    "error": f"no model loaded: {service.unavailable_reason()}",
                },
                503,
            )
        body: dict[str, Any] = {
            "status": "ok",
            "model": champion.name,
            "version": champion.version,
            "alias": CHAMPION,
            "family": str(champion.family),
            "loaded_at": champion.describe()["loaded_at"],
            "error": holder.status[CHAMPION].error,
            "drift": drift_health(service.drift),
        }
        if CHALLENGER in holder.status:
            challenger = holder.challenger
            body["challenger"] = challenger.version if challenger else None
            body["challenger_error"] = holder.status[CHALLENGER].error
        return jsonify(body)

    @app.get("/model")
    def model_info() -> Response:
        champion = service.serving()
        body = {"alias": CHAMPION, **champion.describe()}
        body["challenger"] = service.challenger_info()
        body["routing"] = {"canary_share": config.canary_share, "shadow": config.shadow}
        return jsonify(body)

    @app.get("/metrics")
    def metrics() -> Response:
        service.drift.report()  # the drift gauges from a test at most drift_interval old
        payload, content_type = service.metrics.exposition()
        return Response(payload, content_type=content_type)

    @app.get("/openapi.json")
    def openapi_json() -> Response:
        champion = holder.champion
        shape = champion.epoch_shape if champion is not None else EEG_DEFAULT_SHAPE
        return jsonify(
            openapi.build(
                model=config.model,
                shape=shape,
                max_epochs=config.max_epochs,
                max_body=config.max_body,
                max_pixels=config.max_image_pixels,
            )
        )
