"""Jenkins runs of the one trigger queue: a real post-receive hook in a real bare repository
(and the webhook app on loopback) queue a Jenkins build in the real SQLite queue, and a real
drainer process triggers it through the Jenkins adapter, retrying what is worth retrying.

Jenkins' outcomes that a real controller cannot be made to give on demand (answering 5xx
while it is down, accepting a connection and never answering) come from a stand-in HTTP
server on 127.0.0.1, and each test says so; a refused connection is a real closed port.
A push triggering the real Jenkins is tests/test_jenkins_live.py's classic chain test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import ToyRepo, eventually, git, run_cli
from tests.jenkins_real import free_port as closed_port
from tests.test_hooks import WAIT_S, new_commit, push_payload, serving
from trainchain.core.settings import Settings
from trainchain.triggers.jenkins import trigger_build
from trainchain.triggers.queue import (
    Holder,
    HookPaths,
    JenkinsTarget,
    RunRequest,
    RunState,
    RunStatus,
    TriggerQueue,
)

JOB = "trainchain-1-pull"
TOKEN = "t0ken-never-stored"  # a stand-in credential


@pytest.fixture
def model(toy_repo: ToyRepo) -> Path:
    return toy_repo(threshold=0.3, max_trials=1)


@pytest.fixture
def hub(model: Path, tmp_path: Path) -> Path:
    """A bare repository cloned from the model, the model's remote ``hub``."""
    bare = tmp_path / "hub.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(model), str(bare)], check=True)
    git(model, "remote", "add", "hub", str(bare))
    return bare


def jenkins_env(url: str) -> dict[str, str]:
    return {"JENKINS_URL": url, "JENKINS_USER": "alice", "JENKINS_TOKEN": TOKEN}


def push(repo: Path, env: dict[str, str]) -> str:
    """``git push hub main`` with ``env`` (Jenkins') added; what the pusher sees."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JENKINS_")}
    out = subprocess.run(
        ["git", "push", "hub", "main"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=clean | env,
        timeout=120,
        check=True,
    )
    return out.stderr


def run_id_of(pushed: str) -> str:
    for line in pushed.splitlines():
        if "Jenkins run " in line and "in the trigger queue" in line:
            return line.split("Jenkins run ")[1].split()[0]
    raise AssertionError(f"no Jenkins run in: {pushed}")


def final(paths: HookPaths, run_id: str) -> RunStatus:
    def done() -> RunStatus | None:
        status = TriggerQueue(paths).get(run_id)
        return status if status.state.final else None

    return eventually(done, f"run {run_id} to end", WAIT_S, poll=0.2)


# ---- a stand-in for Jenkins down, then up ---------------------------------------------
@dataclass
class StandIn:
    url: str
    posts: list[dict[str, list[str]]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)


class _Jenkins(BaseHTTPRequestHandler):
    """Answers the calls a trigger makes (the job's parameters, buildWithParameters, the
    queue item) as Jenkins 2.448 does, after ``down`` answers of 503 to the first ones."""

    down: ClassVar[int] = 0
    seen: ClassVar[StandIn]

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for key, value in {**(headers or {}), "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _unavailable(self) -> bool:
        self.seen.auth.append(self.headers.get("Authorization", ""))
        if type(self).down > 0:
            type(self).down -= 1
            self._send(503)
            return True
        return False

    def do_GET(self) -> None:
        if self._unavailable():
            return
        path = urlsplit(self.path).path
        if path == f"/job/{JOB}/api/json":
            params = [{"name": "REPOSITORY"}, {"name": "COMMIT"}]
            self._send(200, {"property": [{"parameterDefinitions": params}]})
        elif path == "/queue/item/7/api/json":
            build = {"number": 3, "url": f"{self.seen.url}job/{JOB}/3/"}
            self._send(200, {"id": 7, "executable": build})
        else:
            self._send(404)

    def do_POST(self) -> None:
        if self._unavailable():
            return
        parts = urlsplit(self.path)
        if parts.path == f"/job/{JOB}/buildWithParameters":
            self.seen.posts.append(parse_qs(parts.query))
            self._send(201, headers={"Location": f"{self.seen.url}queue/item/7/"})
        else:
            self._send(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def jenkins_down_then_up() -> Iterator[StandIn]:
    """A stand-in Jenkins (a real one cannot be made to answer 5xx on demand): 503 to the
    first call, then Jenkins' answers."""
    handler = type("Answers", (_Jenkins,), {"down": 1})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    seen = StandIn(f"http://127.0.0.1:{server.server_address[1]}/")
    handler.seen = seen
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield seen
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def no_token_under(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


# ---- the post-receive hook -------------------------------------------------------------
def test_a_push_while_jenkins_answers_503_is_retried_and_its_build_recorded(
    model: Path, hub: Path, home: Path, settings: Settings, jenkins_down_then_up: StandIn
) -> None:
    """Jenkins answering 503 (a stand-in: a real controller cannot do it on demand): the
    hook queues a Jenkins run and shows the pusher the queue item once the drainer's second
    attempt got it; the run records the queue item and build URLs, the job got REPOSITORY
    and COMMIT, and no credential is written anywhere under the home."""
    jenkins = jenkins_down_then_up
    out = run_cli("hooks", "install", str(hub), "--jenkins-retries", "2", "--home", str(home))
    assert out.returncode == 0, out.stderr
    sha = new_commit(model, "for jenkins")
    pushed = push(model, jenkins_env(jenkins.url))
    assert f"triggering Jenkins job {JOB} for {sha[:12]}" in pushed
    assert f"queued {JOB}: {jenkins.url}queue/item/7/" in pushed
    run_id = run_id_of(pushed)

    paths = HookPaths.under(settings.home)
    done = final(paths, run_id)
    assert done.state is RunState.SUCCEEDED and done.target == "jenkins"
    assert done.attempts == 2 and done.error is None
    assert done.jenkins_queue_url == f"{jenkins.url}queue/item/7/"
    assert done.jenkins_build_url == f"{jenkins.url}job/{JOB}/3/"
    assert jenkins.posts == [{"REPOSITORY": [str(hub)], "COMMIT": [sha]}]
    assert all(a.startswith("Basic ") for a in jenkins.auth)  # read from the environment
    log = Path(done.log).read_text()
    assert "attempt 1 of 3: " in log and "HTTP 503" in log and "trying again in 2 s" in log
    listed = run_cli("hooks", "status", "--home", str(home)).stdout
    assert (
        f"{run_id}  succeeded" in listed and f"(Jenkins {JOB}: {done.jenkins_build_url})" in listed
    )
    no_token_under(home)


def test_a_push_while_jenkins_refuses_connections_fails_after_its_retries(
    model: Path, hub: Path, home: Path, settings: Settings
) -> None:
    """Nothing listening at JENKINS_URL (a real closed port): the drainer tries twice
    (--jenkins-retries 1), then the run is failed with the reason, which the pusher sees;
    nothing is triggered twice and no chain runs here."""
    out = run_cli("hooks", "install", str(hub), "--jenkins-retries", "1", "--home", str(home))
    assert out.returncode == 0, out.stderr
    sha = new_commit(model, "jenkins is down")
    url = f"http://127.0.0.1:{closed_port()}/"
    pushed = push(model, jenkins_env(url))
    reason = "attempt 2 of 2: reading job 'trainchain-1-pull': cannot connect to Jenkins at"
    assert reason in pushed and "(gave up after 2 attempts)" in pushed
    assert f"no build for {sha[:12]}" in pushed

    done = final(HookPaths.under(settings.home), run_id_of(pushed))
    assert done.state is RunState.FAILED and done.attempts == 2
    assert reason in (done.error or "") and "connection refused" in (done.error or "")
    assert done.jenkins_queue_url is None and done.exit_code is None
    assert not (home / "chains").exists()


# ---- the webhook -------------------------------------------------------------------------
def test_a_webhook_push_with_a_jenkins_job_becomes_a_jenkins_build(
    model: Path,
    settings: Settings,
    jenkins_down_then_up: StandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`hooks serve` with a Jenkins job: a signed push is answered 202 with a Jenkins run,
    which the drainer triggers (after one 503 from a stand-in Jenkins: a real one cannot be
    made to answer it on demand) with the pushed repository and commit."""
    jenkins = jenkins_down_then_up
    for key, value in jenkins_env(jenkins.url).items():
        monkeypatch.setenv(key, value)  # the drainers' environment, as serve's
    sha = git(model, "rev-parse", "HEAD")
    with serving(settings, jenkins_job=JOB, jenkins_retries=1) as server:
        payload = push_payload(f"file://{model}", sha)
        code, body = server.deliver(payload, delivery="jenkins-1")
        assert code == 202, body
        assert body["target"] == "jenkins" and body["jenkins_job"] == JOB
        done = final(server.paths, body["run_id"])
    assert done.state is RunState.SUCCEEDED and done.attempts == 2
    assert done.trigger == "webhook" and done.delivery == "jenkins-1"
    assert done.jenkins_build_url == f"{jenkins.url}job/{JOB}/3/"
    assert jenkins.posts == [{"REPOSITORY": [f"file://{model}"], "COMMIT": [sha]}]
    no_token_under(settings.home)


def test_serve_with_a_jenkins_job_needs_the_whole_connection_before_it_listens(
    home: Path,
) -> None:
    """`hooks serve --jenkins-job` without JENKINS_USER and JENKINS_TOKEN is refused at
    start (exit 2, what to set) rather than failing every push later."""
    env = {"TRAINCHAIN_WEBHOOK_SECRET": "s", "JENKINS_URL": "http://127.0.0.1:9/"}
    env |= {"JENKINS_USER": "", "JENKINS_TOKEN": ""}
    out = run_cli(
        "hooks", "serve", "--jenkins-job", "trainchain-pipeline", "--port", "0",
        "--home", str(home), env=env, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "JENKINS_USER is not set" in out.stderr, out.stderr
    assert "hint: set JENKINS_USER to the Jenkins user" in out.stderr
    assert "listening" not in out.stdout


# ---- no answer at all ------------------------------------------------------------------
def test_a_jenkins_that_never_answers_is_not_triggered_again(home: Path) -> None:
    """A Jenkins that accepts the connection and never answers (a listening socket nobody
    serves: a real controller cannot be made to hang on demand): the call times out, and
    the run is failed at once without a retry, saying Jenkins may have the build."""
    paths = HookPaths.under(home)
    queue = TriggerQueue(paths)
    target = JenkinsTarget(JOB, {"REPOSITORY": "file:///x.git", "COMMIT": "c" * 40}, retries=3)
    request = RunRequest("file:///x.git", "c" * 40, "main", "post-receive", jenkins=target)
    status, _ = queue.enqueue(request, max_queue=4, full_hint="")
    (token,) = queue.claim_waiting(Holder())
    current = queue.current(token)
    assert current is not None
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = jenkins_env(f"http://127.0.0.1:{silent.getsockname()[1]}/")
        waits: list[float] = []
        done = trigger_build(queue, token, current, env=env, sleep=waits.append, http_timeout=1)
    assert waits == []  # not retried: the POST may have reached Jenkins
    assert done.state is RunState.FAILED and done.attempts == 1
    assert "no answer from Jenkins within 1 s" in (done.error or "")
    assert queue.get(status.run_id) == done and queue.current(token) is None
