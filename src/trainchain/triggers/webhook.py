"""GitHub push webhooks: the server behind `trainchain hooks serve`.

GitHub POSTs each push to ``/`` (or ``/github-webhook/``, Jenkins' path, so one GitHub
setting serves both) signed with the shared secret (``X-Hub-Signature-256``). A signed
push to a watched branch becomes a run in the one trigger queue
(:mod:`trainchain.triggers.queue`), the one the post-receive hook uses: one chain at a time
per repository, each run by a detached drainer in its own process
(:mod:`trainchain.triggers.hooks`), so a crashing chain never takes the server down, a
chain still running at shutdown finishes and records its outcome on its own, and a run
queued when the server was killed is drained when it starts again. With a Jenkins job
configured (``jenkins_job``), a push becomes a queued build of that job instead, with
REPOSITORY and COMMIT, triggered by the drainer (:mod:`trainchain.triggers.jenkins`).

With a bearer token configured, ``POST /alerts`` takes Alertmanager's webhook
notifications: each firing alert whose ``model`` label names a model the server retrains
(``retrain``) becomes a retrain request (:mod:`trainchain.triggers.retrain`) in the same
queue, at most one pending per model and none within the cooldown.

The decisions (is the signature right, is this a push to run) are plain functions;
:class:`WebhookApp` answers requests without any socket; :func:`create_app` makes it a
Flask app, run under gunicorn (:func:`trainchain.serving.server.run_embedded`) with a
bounded number of workers and threads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs

from flask import Flask, request
from flask import Response as FlaskResponse
from werkzeug.exceptions import HTTPException

from trainchain import __version__
from trainchain.core.alerts import DEFAULT_COOLDOWN_S
from trainchain.core.errors import ConfigError
from trainchain.core.notify import email_address
from trainchain.triggers.hooks import (
    ZERO_SHA,
    child_env,
    dispatch,
    enqueue,
)
from trainchain.triggers.queue import (
    DEFAULT_JENKINS_RETRIES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_RUN_TIMEOUT_S,
    AlreadyReceived,
    HookPaths,
    JenkinsTarget,
    QueueFull,
    RepositoryBusy,
    RunRequest,
    RunStatus,
    TriggerQueue,
    check_jenkins_job,
    check_max_queue,
)
from trainchain.triggers.retrain import (
    FIRING,
    BadAlerts,
    RetrainOptions,
    RetrainTarget,
    alert_reason,
    read_alerts,
    request_retrain,
    retrain_request,
)

log = logging.getLogger(__name__)

WEBHOOK_PATHS = frozenset({"/", "/github-webhook/", "/github-webhook"})
ALERTS_PATH = "/alerts"
ALERT_TRIGGER = "alert"  # the trigger of a run a drift alert asked for
SIGNATURE_HEADER = "X-Hub-Signature-256"
DEFAULT_MAX_BODY = 5 << 20  # GitHub caps payloads at 25 MB; pushes are far smaller
MAX_BODY_LIMIT = 100 << 20
DEFAULT_SHUTDOWN_WAIT_S = 30.0
DEFAULT_WORKERS = 2
MAX_WORKERS = 16
THREADS = 4  # per worker: at most workers x threads deliveries are answered at once
MAX_CONNECTIONS = 100  # per worker; more wait in the listen backlog
GRACEFUL_TIMEOUT_S = 20
WORKER_TIMEOUT_S = 60  # a worker stuck this long (a client that stops sending) is restarted
STOP_POLL_S = 0.5
EXTENSION = "trainchain-hooks"
_SHA40 = re.compile(r"^[0-9a-f]{40}$")
_DELIVERY = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


@dataclass(frozen=True)
class WebhookConfig:
    secret: bytes = field(repr=False)  # never in repr, logs or messages
    host: str = "127.0.0.1"
    port: int = 8088
    branches: tuple[str, ...] = ()  # empty: each repository's default branch
    executor: str | None = None
    data: str | None = None
    max_queue: int = DEFAULT_MAX_QUEUE
    max_body: int = DEFAULT_MAX_BODY
    run_timeout: float = DEFAULT_RUN_TIMEOUT_S
    shutdown_wait: float = DEFAULT_SHUTDOWN_WAIT_S
    workers: int = DEFAULT_WORKERS
    jenkins_job: str | None = None  # set: each push becomes a build of this Jenkins job
    jenkins_retries: int = DEFAULT_JENKINS_RETRIES
    # POST /alerts: the bearer token (None: the endpoint is off), the models it retrains
    alert_token: bytes | None = field(default=None, repr=False)
    retrain: Mapping[str, RetrainTarget] = field(default_factory=dict)
    retrain_cooldown: float = DEFAULT_COOLDOWN_S

    def __post_init__(self) -> None:
        if not self.secret:
            raise ConfigError(
                "the webhook secret is empty",
                hint="set TRAINCHAIN_WEBHOOK_SECRET to the secret of the GitHub webhook",
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range: expected 0-65535")
        check_max_queue(self.max_queue)
        if not 0 < self.max_body <= MAX_BODY_LIMIT:
            raise ConfigError(
                f"a body limit of {self.max_body} bytes is out of range: "
                f"expected 1 to {MAX_BODY_LIMIT} (100 MiB)"
            )
        if not 0 <= self.shutdown_wait <= 3600:
            raise ConfigError(
                f"shutdown wait {self.shutdown_wait:g} s is out of range: expected 0 to 3600 s"
            )
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(
                f"{self.workers} workers is out of range: expected 1 to {MAX_WORKERS}"
            )
        if self.jenkins_job is not None:
            check_jenkins_job(self.jenkins_job)
        if self.alert_token is not None and not self.alert_token:
            raise ConfigError("the alert token is empty", hint="put a token in the file")
        RetrainOptions(cooldown=self.retrain_cooldown)  # checks the cooldown

    @property
    def retrain_options(self) -> RetrainOptions:
        return RetrainOptions(
            executor=self.executor,
            data=self.data,
            run_timeout=self.run_timeout,
            jenkins_job=self.jenkins_job,
            jenkins_retries=self.jenkins_retries,
            cooldown=self.retrain_cooldown,
        )


# ---- decisions --------------------------------------------------------------------
def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_problem(secret: bytes, body: bytes, header: str | None) -> str | None:
    """None when ``header`` signs ``body`` with ``secret``; else what is wrong with it."""
    if not header:
        return f"no {SIGNATURE_HEADER} header: the webhook has no secret set"
    if not header.startswith("sha256="):
        return f"{SIGNATURE_HEADER} is not sha256=<hex>"
    if not hmac.compare_digest(header.encode(), sign(secret, body).encode()):
        return f"{SIGNATURE_HEADER} does not match the body: the secrets differ"
    return None


def bearer_problem(token: bytes, header: str | None) -> str | None:
    """None when ``header`` is ``Bearer <token>``; else what is wrong with it."""
    if not header:
        return "no Authorization header: send Authorization: Bearer <token>"
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return "the Authorization header is not Bearer <token>"
    if not hmac.compare_digest(given.strip().encode(), token):
        return "the bearer token is not this server's (--alert-token-file)"
    return None


class BadPayload(ValueError):
    """The push payload lacks a field trainchain needs."""


class BadBody(ValueError):
    """A delivery's body is not a payload this server reads; ``status`` is the answer's."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"
CONTENT_TYPE_HINT = f"set the webhook's content type to {JSON_TYPE} (GitHub: Settings, Webhooks)"


def read_body(content_type: str | None, body: bytes) -> Any:
    """A delivery's payload, as GitHub sends it: the JSON body (``application/json``, or no
    content type), or the JSON in the form field ``payload``
    (``application/x-www-form-urlencoded``, the default of a webhook made through GitHub's
    API). Another content type is a :class:`BadBody` (415) saying which one to set."""
    kind = (content_type or JSON_TYPE).split(";", 1)[0].strip().lower()
    if kind == FORM_TYPE:
        try:
            fields = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=100)
        except (UnicodeDecodeError, ValueError) as err:
            raise BadBody(f"the body is not {FORM_TYPE}: {err}") from None
        payloads = fields.get("payload", [])
        if len(payloads) != 1:
            raise BadBody(
                f"the {FORM_TYPE} body has {len(payloads)} payload fields: expected one "
                f"holding the JSON; or {CONTENT_TYPE_HINT}"
            )
        text: str | bytes = payloads[0]
        what = "the form field payload"
    elif kind == JSON_TYPE:
        text, what = body, "the body"
    else:
        raise BadBody(
            f"content type {kind} is not one GitHub sends: expected {JSON_TYPE} or {FORM_TYPE}; "
            + CONTENT_TYPE_HINT,
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        )
    try:
        return json.loads(text)
    except ValueError as err:
        raise BadBody(f"{what} is not JSON: {err}") from None


@dataclass(frozen=True)
class Push:
    repository: str  # repository.clone_url
    name: str  # repository.full_name
    branch: str
    commit: str
    pushed_by: str | None = None  # the pusher's email, else the head commit's committer's


@dataclass(frozen=True)
class Ignore:
    reason: str


def _field(data: Mapping[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise BadPayload(f"the push payload has no {path}")
        value = value[part]
    return value


def _text(data: Mapping[str, Any], path: str) -> str:
    value = _field(data, path)
    if not isinstance(value, str) or not value:
        raise BadPayload(f"the push payload's {path} is not a string: {value!r}")
    return value


def describe(payload: Any) -> str:
    """``<repository> <branch> <sha12>`` of a push payload, as far as it has them."""
    if not isinstance(payload, Mapping):
        return "-"
    repo = payload.get("repository")
    parts = [
        repo.get("full_name") if isinstance(repo, Mapping) else None,
        payload.get("ref"),
        payload.get("after"),
    ]
    texts = [p if isinstance(p, str) else "?" for p in parts]
    return f"{texts[0]} {texts[1].removeprefix('refs/heads/')} {texts[2][:12]}"


def read_push(payload: Any, branches: tuple[str, ...]) -> Push | Ignore:
    """A push event's payload: the run it asks for, or why it asks for none."""
    if not isinstance(payload, Mapping):
        raise BadPayload("the push payload is not a JSON object")
    ref = _text(payload, "ref")
    name = _text(payload, "repository.full_name")
    if not ref.startswith("refs/heads/"):
        return Ignore(f"{ref} is not a branch")
    branch = ref.removeprefix("refs/heads/")
    after = _text(payload, "after")
    if payload.get("deleted") is True or after == ZERO_SHA:
        return Ignore(f"branch {branch} was deleted")
    watched = branches or (_text(payload, "repository.default_branch"),)
    if branch not in watched:
        return Ignore(f"branch {branch} is not watched")
    if not _SHA40.match(after):
        raise BadPayload(f"the push payload's after is not a commit sha: {after!r}")
    clone_url = _text(payload, "repository.clone_url")
    if clone_url.startswith("-"):
        raise BadPayload(f"the push payload's repository.clone_url is not a URL: {clone_url!r}")
    return Push(
        repository=clone_url, name=name, branch=branch, commit=after, pushed_by=pusher(payload)
    )


def pusher(payload: Mapping[str, Any]) -> str | None:
    """Who pushed, as an email address: ``pusher.email``, else ``head_commit.committer.email``
    (GitHub sends both; either may be missing or not an address)."""
    for path in ("pusher.email", "head_commit.committer.email"):
        try:
            address = email_address(_field(payload, path))
        except BadPayload:
            continue
        if address is not None:
            return address
    return None


# ---- runs -----------------------------------------------------------------------------
class WebhookRuns:
    """The webhook's side of the trigger queue: queue a push and start its drainer; at a
    graceful stop, cancel the runs still waiting and wait a bounded time for running ones."""

    def __init__(
        self,
        paths: HookPaths,
        *,
        home: Path,
        python: str,
        env: Mapping[str, str],
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self.paths = paths
        self.home = home
        self.python = python
        self.env = child_env(env, home)
        self.max_queue = check_max_queue(max_queue)
        self.queue = TriggerQueue(paths)

    def submit(self, request: RunRequest, cooldown: float = 0.0) -> tuple[RunStatus, int]:
        """Queue a run (QueueFull, AlreadyReceived; a retrain's RetrainPending,
        CoolingDown); (its status, runs ahead of it)."""
        return enqueue(
            self.paths,
            request,
            max_queue=self.max_queue,
            python=self.python,
            env=self.env,
            home=self.home,
            full_hint="redeliver the push from GitHub once some have run, or restart "
            "`trainchain hooks serve` with a larger --max-queue",
            cooldown=cooldown,
        )

    def resume(self) -> list[str]:
        """At start-up: settle what killed drainers left, start drainers for queued runs."""
        done = self.queue.reconcile()
        started = dispatch(self.queue, python=self.python, env=self.env, home=self.home)
        if started:
            done.append(f"started {started} drainer(s) for runs left queued")
        return done

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.queue.snapshot()

    def close(self, wait_s: float) -> list[str]:
        """Cancel the waiting webhook runs, wait up to ``wait_s`` for the running ones; what
        was left running."""
        for status in self.queue.cancel_queued(
            "webhook", "the server stopped before the run started; push again"
        ):
            log.warning("run %s cancelled: the server is stopping", status.run_id)
        deadline = time.monotonic() + wait_s
        while (running := self.queue.running("webhook")) and time.monotonic() < deadline:
            time.sleep(min(STOP_POLL_S, max(deadline - time.monotonic(), 0.0)))
        return [
            f"run {status.run_id} left running (pid {pid if pid else '?'}); its status "
            f"file will show how it ends: {self.paths.status(status.run_id)}"
            for status, pid in running
        ]


# ---- answering requests ---------------------------------------------------------------
@dataclass(frozen=True)
class Response:
    status: int
    body: dict[str, Any]


class WebhookApp:
    """Answers webhook deliveries and status requests; no sockets."""

    def __init__(self, config: WebhookConfig, runs: WebhookRuns) -> None:
        self.config = config
        self.runs = runs

    def receive(  # noqa: PLR0911 - one return per answer, in the order of the checks
        self, headers: Mapping[str, str], body: bytes, peer: str = ""
    ) -> Response:
        """One POSTed delivery (``headers``' names in lower case), logged in one line."""
        event = headers.get("x-github-event") or ""
        delivery = headers.get("x-github-delivery") or ""
        signature = headers.get(SIGNATURE_HEADER.lower())
        problem = signature_problem(self.config.secret, body, signature)
        if problem is not None:
            return self._answer(headers, peer, "-", HTTPStatus.UNAUTHORIZED, {"error": problem})
        try:  # the signature is over the raw body, whatever its encoding (as GitHub signs)
            payload = read_body(headers.get("content-type"), body)
        except BadBody as err:
            return self._answer(headers, peer, "-", err.status, {"error": str(err)})
        where = describe(payload)
        if event == "ping":
            return self._answer(headers, peer, where, HTTPStatus.OK, {"pong": True})
        if event != "push":
            ignored = {"ignored": f"event {event or '(none)'}"}
            return self._answer(headers, peer, where, HTTPStatus.ACCEPTED, ignored)
        if not _DELIVERY.match(delivery):
            error = {"error": "no X-GitHub-Delivery header (GitHub sends a unique id with each)"}
            return self._answer(headers, peer, where, HTTPStatus.BAD_REQUEST, error)
        try:
            decision = read_push(payload, self.config.branches)
        except BadPayload as err:
            return self._answer(headers, peer, where, HTTPStatus.BAD_REQUEST, {"error": str(err)})
        replay = {"ignored": f"delivery {delivery} was already received"}
        if isinstance(decision, Ignore):
            if not self.runs.queue.remember(delivery):
                return self._answer(headers, peer, where, HTTPStatus.OK, replay)
            ignored = {"ignored": decision.reason}
            return self._answer(headers, peer, where, HTTPStatus.ACCEPTED, ignored)
        try:
            code, answer = self._queue(delivery, decision)
        except AlreadyReceived:
            code, answer = HTTPStatus.OK, replay
        return self._answer(headers, peer, where, code, answer)

    def refuse(self, headers: Mapping[str, str], code: int, error: str, peer: str = "") -> Response:
        """A delivery refused before its body is read (no length, too long)."""
        return self._answer(headers, peer, "-", code, {"error": error})

    def _queue(self, delivery: str, push: Push) -> tuple[int, dict[str, Any]]:
        jenkins = None
        if self.config.jenkins_job is not None:
            params = {"REPOSITORY": push.repository, "COMMIT": push.commit}
            jenkins = JenkinsTarget(
                self.config.jenkins_job, params, retries=self.config.jenkins_retries
            )
        request = RunRequest(
            repository=push.repository,
            commit=push.commit,
            branch=push.branch,
            trigger="webhook",
            delivery=delivery,
            executor=self.config.executor,
            data=self.config.data,
            run_timeout=self.config.run_timeout,
            jenkins=jenkins,
            pushed_by=push.pushed_by,
        )
        try:
            status, ahead = self.runs.submit(request)
        except QueueFull as err:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": err.message, "hint": err.hint}
        return HTTPStatus.ACCEPTED, {
            "run_id": status.run_id,
            "target": status.target,
            **({"jenkins_job": status.jenkins_job} if jenkins else {}),
            "repository": push.repository,
            "commit": push.commit,
            "queued_behind": ahead,
            "log": status.log,
            "status": f"/runs/{status.run_id}",
        }

    def _answer(
        self, headers: Mapping[str, str], peer: str, where: str, code: int, body: dict[str, Any]
    ) -> Response:
        """The answer, and its log line: event, delivery, repository, branch, sha, outcome
        (never the secret or the signature)."""
        delivery = headers.get("x-github-delivery") or ""
        shown = delivery if _DELIVERY.match(delivery) else repr(delivery[:40])
        event = headers.get("x-github-event") or "-"
        outcome = body.get("run_id") and f"queued run {body['run_id']}"
        outcome = outcome or body.get("ignored") or body.get("error") or "pong"
        level = logging.WARNING if code in (401, 413, 415, 503) else logging.INFO
        log.log(
            level,
            "delivery %s: event %s from %s, %s: %d %s",
            shown,
            event,
            peer or "-",
            where,
            code,
            outcome,
        )
        return Response(code, body)

    def get(self, path: str) -> Response:
        if path == "/health":
            return Response(
                HTTPStatus.OK, {"ok": True, "version": __version__, "runs": self.runs.snapshot()}
            )
        if path.startswith("/runs/"):
            run_id = path.removeprefix("/runs/")
            try:
                return Response(HTTPStatus.OK, self.runs.queue.get(run_id).to_dict())
            except ConfigError as err:
                return Response(HTTPStatus.NOT_FOUND, {"error": err.message})
        return Response(
            HTTPStatus.NOT_FOUND, {"error": f"no page {path}: try /health or /runs/<id>"}
        )

    def post(self, path: str, headers: Mapping[str, str], body: IO[bytes], peer: str) -> Response:
        """A POST: the delivery, checked for its length before its body is read."""
        if path == ALERTS_PATH:
            return self.alerts(headers, body, peer)
        if path not in WEBHOOK_PATHS:
            return Response(HTTPStatus.NOT_FOUND, {"error": f"no webhook at {path}"})
        read = self._read(headers, body, peer)
        if isinstance(read, Response):
            return read
        return self.receive(headers, read, peer=peer)

    def _read(self, headers: Mapping[str, str], body: IO[bytes], peer: str) -> bytes | Response:
        """The body, or the answer refusing it (no length, too long)."""
        limit = self.config.max_body
        raw = headers.get("content-length")
        if raw is None or not raw.isdigit():
            error = "send a Content-Length header"
            return self.refuse(headers, HTTPStatus.LENGTH_REQUIRED, error, peer)
        length = int(raw)
        if length > limit:
            # read (a bounded amount) before answering: closing on unread data resets the
            # connection, and the sender would never see the answer
            body.read(min(length, 4 * limit))
            error = f"the body is {length} bytes; the limit is {limit} (--max-body)"
            return self.refuse(headers, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, error, peer)
        return body.read(length)

    # ---- POST /alerts -------------------------------------------------------------
    def alerts(self, headers: Mapping[str, str], body: IO[bytes], peer: str) -> Response:
        """Alertmanager's notification: each firing alert of a model this server retrains
        becomes a retrain request; 200 with what became of each alert, 503 when the queue
        could not take one (Alertmanager sends the notification again)."""
        token = self.config.alert_token
        if token is None:
            return self._alerted(
                peer,
                HTTPStatus.NOT_FOUND,
                {
                    "error": "no alert endpoint: this server has no alert token",
                    "hint": "start `trainchain hooks serve` with --alert-token-file FILE (or "
                    "TRAINCHAIN_ALERT_TOKEN) and --retrain MODEL=REPOSITORY[@BRANCH]",
                },
            )
        read = self._read(headers, body, peer)
        if isinstance(read, Response):
            return read
        problem = bearer_problem(token, headers.get("authorization"))
        if problem is not None:
            return self._alerted(peer, HTTPStatus.UNAUTHORIZED, {"error": problem})
        try:
            alerts = read_alerts(json.loads(read))
        except ValueError as err:  # BadAlerts, or not JSON
            error = str(err) if isinstance(err, BadAlerts) else f"the body is not JSON: {err}"
            return self._alerted(peer, HTTPStatus.BAD_REQUEST, {"error": error})
        answers: list[dict[str, Any]] = []
        code = HTTPStatus.OK
        for alert in alerts:
            answer: dict[str, Any] = {"alertname": alert.name, "model": alert.model}
            target = self.config.retrain.get(alert.model or "")
            if alert.status != FIRING:
                answer["ignored"] = "resolved"
            elif alert.model is None:
                answer["ignored"] = "the alert has no model label"
            elif target is None:
                known = ", ".join(sorted(self.config.retrain)) or "none"
                answer["ignored"] = f"{alert.model} is not a model this server retrains ({known})"
            else:
                request = retrain_request(
                    target, alert_reason(alert), ALERT_TRIGGER, self.config.retrain_options
                )
                try:
                    done = request_retrain(self.runs.submit, request, self.config.retrain_cooldown)
                except RepositoryBusy as err:  # the queue is full or locked: try again later
                    code = HTTPStatus.SERVICE_UNAVAILABLE
                    answer |= {"error": err.message, "hint": err.hint}
                else:
                    answer |= {"outcome": done.outcome, "detail": done.text}
                    answer |= {"run_id": done.run_id} if done.run_id else {}
                    answer |= {"reason": request.reason} if done.outcome == "queued" else {}
            log.log(
                logging.INFO if code == HTTPStatus.OK else logging.WARNING,
                "alert %s (%s) for %s from %s: %s",
                alert.name,
                alert.status,
                alert.model or "-",
                peer or "-",
                answer.get("detail") or answer.get("ignored") or answer.get("error"),
            )
            answers.append(answer)
        return Response(code, {"alerts": answers})

    @staticmethod
    def _alerted(peer: str, code: int, body: dict[str, Any]) -> Response:
        """An alert notification refused as a whole, and its log line (never the token)."""
        log.warning("alerts from %s: %d %s", peer or "-", code, body.get("error"))
        return Response(code, body)


def create_app(config: WebhookConfig, runs: WebhookRuns) -> Flask:
    """The Flask app behind `trainchain hooks serve`: every path goes to :class:`WebhookApp`,
    every answer is JSON."""
    webhook = WebhookApp(config, runs)
    app = Flask(__name__)
    app.extensions[EXTENSION] = webhook

    def send(response: Response, *, close: bool = False) -> FlaskResponse:
        out = FlaskResponse(
            json.dumps(response.body) + "\n", response.status, mimetype="application/json"
        )
        if close:
            out.headers["Connection"] = "close"
        return out

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
    @app.route("/<path:path>", methods=["GET", "POST"])
    def handle(path: str) -> FlaskResponse:
        path = request.path
        if request.method == "GET":
            return send(webhook.get(path))
        headers = {name.lower(): value for name, value in request.headers.items()}
        answer = webhook.post(path, headers, request.stream, request.remote_addr or "")
        return send(answer, close=answer.status in (411, 413))

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> FlaskResponse:
        code = err.code or 500
        return send(Response(code, {"error": f"{err.name}: {err.description}"}))

    return app


def gunicorn_options(config: WebhookConfig, fd: int) -> dict[str, Any]:
    """gunicorn settings for the webhook server on the listening socket ``fd``: a bounded
    number of workers and threads, connections and request sizes."""
    return {
        "bind": [f"fd://{fd}"],
        "workers": config.workers,
        "worker_class": "gthread",
        "threads": THREADS,
        "worker_connections": MAX_CONNECTIONS,
        "preload_app": False,
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        "timeout": WORKER_TIMEOUT_S,
        "keepalive": 5,
        "limit_request_line": 4094,
        "limit_request_fields": 100,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": "trainchain-hooks-serve",
        "control_socket_disable": True,
    }
