"""GitHub push webhooks without Jenkins: the server behind `trainchain hooks serve`.

GitHub POSTs each push to ``/`` (or ``/github-webhook/``, Jenkins' path, so one GitHub
setting serves both) signed with the shared secret (``X-Hub-Signature-256``). A signed
push to a watched branch becomes a run (:mod:`trainchain.hooks`): queued per repository,
run one at a time by that repository's worker thread, each in its own process
(`trainchain hooks execute`, which runs `trainchain run` and writes the status file), so
a crashing chain never takes the server down, and a chain still running at shutdown
finishes and records its outcome on its own.

The decisions (is the signature right, is this a push to run) are plain functions;
:class:`WebhookApp` answers requests without any socket; :func:`create_server` puts it
behind ``http.server``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import subprocess
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from trainchain import __version__
from trainchain.errors import ConfigError
from trainchain.hooks import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_RUN_TIMEOUT_S,
    ZERO_SHA,
    HookPaths,
    QueueFull,
    RunRequest,
    RunStatus,
    check_max_queue,
    child_env,
    load_status,
    new_status,
    now_iso,
    prune_runs,
    repo_key,
    save_status,
    trainchain_argv,
)
from trainchain.status import RunState
from trainchain.task import atomic_write_bytes

log = logging.getLogger(__name__)

WEBHOOK_PATHS = frozenset({"/", "/github-webhook/", "/github-webhook"})
SIGNATURE_HEADER = "X-Hub-Signature-256"
DEFAULT_MAX_BODY = 5 << 20  # GitHub caps payloads at 25 MB; pushes are far smaller
MAX_BODY_LIMIT = 100 << 20
DELIVERIES_KEPT = 1000
READ_TIMEOUT_S = 30.0  # a client that stops sending mid-request is dropped
DEFAULT_SHUTDOWN_WAIT_S = 30.0
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


class BadPayload(ValueError):
    """The push payload lacks a field trainchain needs."""


@dataclass(frozen=True)
class Push:
    repository: str  # repository.clone_url
    name: str  # repository.full_name
    branch: str
    commit: str


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
    return Push(repository=clone_url, name=name, branch=branch, commit=after)


# ---- state --------------------------------------------------------------------------
class Deliveries:
    """The last ``keep`` delivery ids, in a JSON file so a restart still knows replays."""

    def __init__(self, path: Path, keep: int = DELIVERIES_KEPT) -> None:
        self.path = path
        self.keep = keep
        self._ids: deque[str] = deque(maxlen=keep)
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            stored = []
        except ValueError as err:
            log.warning("%s is not JSON (%s): starting with no deliveries remembered", path, err)
            stored = []
        self._ids.extend(str(i) for i in stored if isinstance(i, str))
        self._set = set(self._ids)

    def __contains__(self, delivery: object) -> bool:
        return delivery in self._set

    def add(self, delivery: str) -> None:
        if delivery in self._set:
            return
        if len(self._ids) == self.keep:
            self._set.discard(self._ids[0])
        self._ids.append(delivery)
        self._set.add(delivery)
        atomic_write_bytes(self.path, json.dumps(list(self._ids)).encode("utf-8"))


@dataclass
class _Repo:
    """One repository's queue and the run its worker is on."""

    pending: deque[RunStatus] = field(default_factory=deque)
    active: RunStatus | None = None
    proc: subprocess.Popen[bytes] | None = None
    worker: threading.Thread | None = None


class RunQueues:
    """A worker thread per repository runs its runs one at a time, oldest first.

    At most one run is running and ``max_queue`` are waiting; each runs as
    `trainchain hooks execute <run_id>` in its own session."""

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
        self._repos: dict[str, _Repo] = {}
        self._cond = threading.Condition()
        self._closed = False

    def submit(self, status: RunStatus) -> int:
        """Queue a run (its status file is written first); how many runs are ahead of it."""
        key = repo_key(status.repository)
        with self._cond:
            if self._closed:
                raise QueueFull("the server is stopping", hint="GitHub can redeliver the push")
            repo = self._repos.setdefault(key, _Repo())
            if len(repo.pending) >= self.max_queue:
                raise QueueFull(
                    f"{len(repo.pending)} runs of {status.repository} are already waiting "
                    f"(the queue holds {self.max_queue})",
                    hint="redeliver the push from GitHub once some have run, or restart "
                    "`trainchain hooks serve` with a larger --max-queue",
                )
            ahead = len(repo.pending) + (repo.active is not None)
            save_status(self.paths, status)
            repo.pending.append(status)
            if repo.worker is None:
                repo.worker = threading.Thread(
                    target=self._work, args=(key, repo), name=f"runs-{key}", daemon=True
                )
                repo.worker.start()
            self._cond.notify_all()
        prune_runs(self.paths)
        return ahead

    def _work(self, key: str, repo: _Repo) -> None:
        while True:
            with self._cond:
                if self._closed or not repo.pending:
                    repo.worker = None
                    repo.active = None
                    self._cond.notify_all()
                    return
                status = repo.active = repo.pending.popleft()
            self._run(repo, status)

    def _run(self, repo: _Repo, status: RunStatus) -> None:
        argv = trainchain_argv(self.python, self.home, "hooks", "execute", status.run_id)
        try:
            with self.paths.log(status.run_id).open("ab") as out:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.paths.root,
                    start_new_session=True,  # Ctrl-C of the server does not reach the chain
                )
            with self._cond:
                repo.proc = proc
            code = proc.wait()
            # a runner killed before it wrote the outcome must not leave the run "running"
            status = load_status(self.paths, status.run_id)
            if not status.state.final:
                error = f"`trainchain hooks execute` exited with status {code} mid-run"
                save_status(
                    self.paths,
                    status.with_(state=RunState.FAILED, finished_at=now_iso(), error=error),
                )
        except (OSError, ConfigError) as err:
            log.error("run %s: `trainchain hooks execute` failed: %s", status.run_id, err)
            save_status(
                self.paths,
                status.with_(state=RunState.FAILED, finished_at=now_iso(), error=str(err)),
            )
        finally:
            with self._cond:
                repo.proc = None
                repo.active = None
                self._cond.notify_all()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return {
                key: {
                    "running": repo.active.run_id if repo.active else None,
                    "queued": [s.run_id for s in repo.pending],
                }
                for key, repo in self._repos.items()
                if repo.active or repo.pending
            }

    def close(self, wait_s: float) -> list[str]:
        """Cancel the waiting runs, wait up to ``wait_s`` for the running ones; what was left."""
        with self._cond:
            self._closed = True
            for repo in self._repos.values():
                while repo.pending:
                    status = repo.pending.popleft()
                    save_status(
                        self.paths,
                        status.with_(
                            state=RunState.CANCELLED,
                            finished_at=now_iso(),
                            error="the server stopped before the run started; push again",
                        ),
                    )
                    log.warning("run %s cancelled: the server is stopping", status.run_id)
            self._cond.wait_for(
                lambda: all(r.active is None for r in self._repos.values()), timeout=wait_s
            )
            return [
                f"run {repo.active.run_id} left running (pid {repo.proc.pid if repo.proc else '?'})"
                f"; its status file will show how it ends: {self.paths.status(repo.active.run_id)}"
                for repo in self._repos.values()
                if repo.active is not None
            ]


# ---- answering requests ---------------------------------------------------------------
@dataclass(frozen=True)
class Response:
    status: int
    body: dict[str, Any]


class WebhookApp:
    """Answers webhook deliveries and status requests; no sockets."""

    def __init__(
        self, config: WebhookConfig, paths: HookPaths, queues: RunQueues, deliveries: Deliveries
    ) -> None:
        self.config = config
        self.paths = paths
        self.queues = queues
        self.deliveries = deliveries
        self._lock = threading.Lock()

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
        try:
            payload = json.loads(body)
        except ValueError as err:
            error = {"error": f"the body is not JSON: {err}"}
            return self._answer(headers, peer, "-", HTTPStatus.BAD_REQUEST, error)
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
        with self._lock:
            if delivery in self.deliveries:
                ignored = {"ignored": f"delivery {delivery} was already received"}
                return self._answer(headers, peer, where, HTTPStatus.OK, ignored)
            if isinstance(decision, Ignore):
                self.deliveries.add(delivery)
                ignored = {"ignored": decision.reason}
                return self._answer(headers, peer, where, HTTPStatus.ACCEPTED, ignored)
            code, answer = self._queue(delivery, decision)
            return self._answer(headers, peer, where, code, answer)

    def refuse(self, headers: Mapping[str, str], code: int, error: str, peer: str = "") -> Response:
        """A delivery refused before its body is read (no length, too long)."""
        return self._answer(headers, peer, "-", code, {"error": error})

    def _queue(self, delivery: str, push: Push) -> tuple[int, dict[str, Any]]:
        request = RunRequest(
            repository=push.repository,
            commit=push.commit,
            branch=push.branch,
            trigger="webhook",
            delivery=delivery,
            executor=self.config.executor,
            data=self.config.data,
            run_timeout=self.config.run_timeout,
        )
        status = new_status(self.paths, request)
        try:
            ahead = self.queues.submit(status)
        except QueueFull as err:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": err.message, "hint": err.hint}
        self.deliveries.add(delivery)
        return HTTPStatus.ACCEPTED, {
            "run_id": status.run_id,
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
        level = logging.WARNING if code in (401, 413, 503) else logging.INFO
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
                HTTPStatus.OK, {"ok": True, "version": __version__, "runs": self.queues.snapshot()}
            )
        if path.startswith("/runs/"):
            run_id = path.removeprefix("/runs/")
            try:
                return Response(HTTPStatus.OK, load_status(self.paths, run_id).to_dict())
            except ConfigError as err:
                return Response(HTTPStatus.NOT_FOUND, {"error": err.message})
        return Response(
            HTTPStatus.NOT_FOUND, {"error": f"no page {path}: try /health or /runs/<id>"}
        )


def create_server(app: WebhookApp) -> ThreadingHTTPServer:
    """``app`` behind a threading HTTP server bound to the config's host and port."""
    limit = app.config.max_body

    class Handler(BaseHTTPRequestHandler):
        server_version = f"trainchain-hooks/{__version__}"
        timeout = READ_TIMEOUT_S

        def _send(self, response: Response) -> None:
            data = (json.dumps(response.body) + "\n").encode("utf-8")
            self.send_response(response.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(app.get(self.path.split("?", 1)[0]))

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] not in WEBHOOK_PATHS:
                self._send(Response(HTTPStatus.NOT_FOUND, {"error": f"no webhook at {self.path}"}))
                return
            headers = {name.lower(): value for name, value in self.headers.items()}
            peer = self.client_address[0]
            raw = headers.get("content-length")
            if raw is None or not raw.isdigit():
                self.close_connection = True
                error = "send a Content-Length header"
                self._send(app.refuse(headers, HTTPStatus.LENGTH_REQUIRED, error, peer))
                return
            length = int(raw)
            if length > limit:
                # read (a bounded amount) before answering: closing on unread data resets
                # the connection, and the sender would never see the answer
                self.rfile.read(min(length, 4 * limit))
                self.close_connection = True
                error = f"the body is {length} bytes; the limit is {limit} (--max-body)"
                self._send(app.refuse(headers, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, error, peer))
                return
            self._send(app.receive(headers, self.rfile.read(length), peer=peer))

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((app.config.host, app.config.port), Handler)
    server.daemon_threads = True
    return server
