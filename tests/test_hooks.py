"""Push triggers without Jenkins: a real post-receive hook in a real bare repository, and a
real webhook server on loopback, both starting real chain runs of a toy model."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from werkzeug.serving import make_server

from tests.conftest import ToyRepo, eventually, git, run_cli
from tests.smtp_server import Inbox
from tests.smtp_server import serve as smtp_serve
from trainchain.core.settings import Settings
from trainchain.triggers.hooks import (
    HookPaths,
    RunState,
    RunStatus,
    load_status,
    recent_runs,
    repo_key,
    try_lock,
)
from trainchain.triggers.queue import process_alive
from trainchain.triggers.webhook import (
    WebhookConfig,
    WebhookRuns,
    create_app,
    read_push,
    sign,
    signature_problem,
)

SECRET = b"it-is-a-secret"
WAIT_S = 180.0  # a toy chain takes seconds; this only bounds a test that would hang


def wait_final(get: Callable[[], RunStatus | None]) -> RunStatus:
    """A run's status once it reached a final state (bounded)."""

    def final() -> RunStatus | None:
        status = get()
        return status if status is not None and status.state.final else None

    return eventually(final, "the run to finish", WAIT_S, poll=0.2)


def chain_commits(home: Path) -> list[str]:
    """The commits of the chain reports under ``home``."""
    return [json.loads(p.read_text())["commit"] for p in (home / "chains").glob("*.json")]


@pytest.fixture
def model(toy_repo: ToyRepo) -> Path:
    """A toy model whose default hyperparameters reach the goal: one trial, a few seconds."""
    return toy_repo(threshold=0.3, max_trials=1)


def new_commit(repo: Path, text: str) -> str:
    with (repo / "train.py").open("a") as f:
        f.write(f"# {text}\n")
    git(repo, "commit", "-q", "-am", text)
    return git(repo, "rev-parse", "HEAD")


# ---- the post-receive hook ----------------------------------------------------------------
@pytest.fixture
def hub(model: Path, tmp_path: Path) -> Path:
    """A bare repository cloned from the model, the model's remote ``hub``."""
    bare = tmp_path / "hub.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(model), str(bare)], check=True)
    git(model, "remote", "add", "hub", str(bare))
    return bare


def push(repo: Path, *refspec: str, env: dict[str, str] | None = None) -> str:
    """``git push hub <refspec>``; what the pusher sees (git writes it to stderr)."""
    out = subprocess.run(
        ["git", "push", "hub", *refspec],
        cwd=repo,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "JENKINS_URL"} | (env or {}),
        timeout=60,
        check=True,
    )
    return out.stderr


def queued_run(pushed: str, sha: str) -> str:
    """The run id the hook printed for ``sha``."""
    for line in pushed.splitlines():
        if f"queued for {sha[:12]}" in line:
            return line.split("chain run ")[1].split()[0]
    raise AssertionError(f"no run queued for {sha[:12]}: {pushed}")


def test_install_refuses_what_is_not_a_bare_repository_or_not_its_hook(
    model: Path, hub: Path, tmp_path: Path, home: Path
) -> None:
    """install: a working copy, a plain folder and a foreign hook are refused with a hint;
    --force moves the foreign hook aside."""
    out = run_cli("hooks", "install", str(model), "--home", str(home))
    assert out.returncode == 2 and "is a working copy, not a bare repository" in out.stderr
    assert "hint: install the hook in the bare repository" in out.stderr
    out = run_cli("hooks", "install", str(tmp_path), "--home", str(home))
    assert out.returncode == 2 and "is not a git repository" in out.stderr

    hook = hub / "hooks" / "post-receive"
    hook.write_text("#!/bin/sh\necho mine\n")
    out = run_cli("hooks", "install", str(hub), "--home", str(home))
    assert out.returncode == 2 and "trainchain did not write it" in out.stderr
    assert hook.read_text() == "#!/bin/sh\necho mine\n"
    out = run_cli("hooks", "install", str(hub), "--force", "--home", str(home))
    assert out.returncode == 0, out.stderr
    assert (hub / "hooks" / "post-receive.before-trainchain").read_text().endswith("echo mine\n")


def test_install_twice_replaces_its_own_hook(hub: Path, home: Path) -> None:
    """install writes an executable hook with the interpreter and home baked in; a second
    install (other options) replaces it without --force."""
    assert run_cli("hooks", "install", str(hub), "--home", str(home)).returncode == 0
    out = run_cli("hooks", "install", str(hub), "--branch", "dev", "--home", str(home))
    assert out.returncode == 0, out.stderr
    hook = hub / "hooks" / "post-receive"
    text = hook.read_text()
    assert os.access(hook, os.X_OK)
    assert f"TRAINCHAIN_HOME={home}" in text and "--branch dev" in text
    assert os.path.abspath(sys.executable) in text


@pytest.mark.slow
def test_pushes_become_chain_runs_one_after_the_other(
    model: Path, hub: Path, home: Path, settings: Settings
) -> None:
    """Two quick pushes each start a chain run of the pushed commit, without waiting for it,
    and the second runs after the first has finished."""
    out = run_cli("hooks", "install", str(hub), "--executor", "local", "--home", str(home))
    assert out.returncode == 0, out.stderr
    first = new_commit(model, "first")
    pushed_first = push(model, "main")
    second = new_commit(model, "second")
    pushed_second = push(model, "main")
    paths = HookPaths.under(settings.home)
    runs = [queued_run(pushed_first, first), queued_run(pushed_second, second)]
    assert "remote: trainchain: chain run" in pushed_first and "(log: " in pushed_first

    done = [wait_final(lambda: load_status(paths, runs[0]))]
    done.append(wait_final(lambda: load_status(paths, runs[1])))
    assert [d.state for d in done] == [RunState.SUCCEEDED, RunState.SUCCEEDED]
    assert [d.commit for d in done] == [first, second]
    assert done[0].finished_at and done[1].started_at
    assert done[1].started_at >= done[0].finished_at  # queued, not interleaved
    for d, sha in zip(done, (first, second), strict=True):
        assert f"model:     toy @ {sha[:12]}" in Path(d.log).read_text()
    assert sorted(chain_commits(home)) == sorted([first, second])
    listed = run_cli("hooks", "status", "--home", str(home)).stdout
    assert f"{runs[1]}  succeeded" in listed and f"{runs[0]}  succeeded" in listed


def test_a_push_to_another_branch_or_a_deletion_starts_no_run(
    model: Path, hub: Path, home: Path, settings: Settings
) -> None:
    """Only the watched branch (the bare repository's HEAD branch) starts runs; deleting a
    branch starts none."""
    assert run_cli("hooks", "install", str(hub), "--home", str(home)).returncode == 0
    git(model, "checkout", "-q", "-b", "feature")
    new_commit(model, "feature work")
    assert "trainchain" not in push(model, "feature")
    assert "trainchain" not in push(model, ":feature")
    assert not HookPaths.under(settings.home).runs.exists()


def test_with_jenkins_configured_a_push_triggers_the_jenkins_job(
    model: Path, hub: Path, home: Path, settings: Settings
) -> None:
    """With JENKINS_URL set at push time, the hook queues a build of the default job
    instead of running the chain here; without the rest of the connection (JENKINS_USER)
    that run fails at once with what to set, shown to the pusher."""
    assert run_cli("hooks", "install", str(hub), "--home", str(home)).returncode == 0
    sha = new_commit(model, "for jenkins")
    pushed = push(model, "main", env={"JENKINS_URL": "http://127.0.0.1:9/"})
    assert f"triggering Jenkins job trainchain-1-pull for {sha[:12]}" in pushed
    assert "queued for" not in pushed
    assert "trainchain-1-pull failed: cannot reach Jenkins: JENKINS_USER is not set" in pushed
    (run,) = recent_runs(HookPaths.under(settings.home))
    assert run.target == "jenkins" and run.jenkins_job == "trainchain-1-pull"
    assert run.jenkins_params == {"REPOSITORY": str(hub), "COMMIT": sha}
    assert run.state is RunState.FAILED and not (home / "chains").exists()


# ---- the webhook server -----------------------------------------------------------------
@dataclass
class Server:
    url: str
    queues: WebhookRuns
    paths: HookPaths

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def deliver(
        self,
        payload: Any,
        *,
        event: str = "push",
        delivery: str = "d-1",
        signature: str | None = "sign",
        content_type: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if signature == "sign":
            signature = sign(SECRET, body)
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return self.request("POST", "/github-webhook/", body, headers)

    def status(self, run_id: str) -> RunStatus | None:
        code, body = self.request("GET", f"/runs/{run_id}")
        return RunStatus.from_dict(body) if code == 200 else None


@contextmanager
def serving(settings: Settings, **options: Any) -> Iterator[Server]:
    """The webhook app on a free loopback port (in this process, so its log lines reach
    caplog; `hooks serve` runs the same app under gunicorn), stopped (its runs waited for)
    at the end."""
    config = WebhookConfig(secret=SECRET, port=0, executor="local", **options)
    paths = HookPaths.under(settings.home)
    queues = WebhookRuns(
        paths,
        home=settings.home,
        python=sys.executable,
        env=dict(os.environ),
        max_queue=config.max_queue,
    )
    server = make_server("127.0.0.1", 0, create_app(config, queues), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{server.server_port}", queues, paths)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        assert queues.close(WAIT_S) == []


def push_payload(
    url: str, sha: str, *, branch: str = "main", deleted: bool = False
) -> dict[str, Any]:
    return {
        "ref": f"refs/heads/{branch}",
        "before": "1" * 40,
        "after": sha,
        "deleted": deleted,
        "repository": {"full_name": "team/toy", "clone_url": url, "default_branch": "main"},
    }


def test_signed_push_becomes_a_run_and_a_replay_never_does(
    model: Path, home: Path, settings: Settings
) -> None:
    """A signed push is answered 202 with a run id and runs the chain of that commit; its
    delivery id sent again, even after a restart, starts no second run."""
    sha = git(model, "rev-parse", "HEAD")
    payload = push_payload(f"file://{model}", sha)
    with serving(settings) as server:
        code, body = server.deliver(payload, delivery="abc-1")
        assert code == 202, body
        assert body["commit"] == sha and body["repository"] == f"file://{model}"
        assert body["queued_behind"] == 0
        run_id = body["run_id"]
        assert server.deliver(payload, delivery="abc-1") == (
            200,
            {"ignored": "delivery abc-1 was already received"},
        )
        done = wait_final(lambda: server.status(run_id))
    assert done.state is RunState.SUCCEEDED and done.exit_code == 0
    assert done.delivery == "abc-1" and Path(done.log) == server.paths.log(run_id)
    assert f"model:     toy @ {sha[:12]}" in Path(done.log).read_text()
    assert chain_commits(home) == [sha]

    with serving(settings) as restarted:
        code, body = restarted.deliver(payload, delivery="abc-1")
    assert (code, body) == (200, {"ignored": "delivery abc-1 was already received"})
    assert len(list(server.paths.runs.glob("*.json"))) == 1


PUSH = push_payload("file:///nowhere/toy.git", "a" * 40)
FORM = "application/x-www-form-urlencoded"


def test_a_form_encoded_push_is_read_as_github_sends_it(settings: Settings) -> None:
    """A push sent as application/x-www-form-urlencoded (GitHub's default for a webhook made
    through its API: the JSON in the form field payload), signed over the raw form body,
    is queued as a JSON one is."""
    body = urlencode({"payload": json.dumps(PUSH)}).encode()
    with serving(settings) as server:
        code, answer = server.deliver(body, content_type=f"{FORM}; charset=utf-8")
        assert code == 202, answer
        assert (
            answer["commit"] == "a" * 40 and answer["repository"] == PUSH["repository"]["clone_url"]
        )
        wait_final(lambda: server.status(answer["run_id"]))


@pytest.mark.parametrize(
    ("delivery", "code", "answer"),
    [
        ({"signature": None}, 401, {"error": "no X-Hub-Signature-256 header"}),
        ({"signature": "sha256=" + "0" * 64}, 401, {"error": "does not match the body"}),
        ({"signature": "sha1=abc"}, 401, {"error": "is not sha256=<hex>"}),
        ({"payload": b"x" * 2048}, 413, {"error": "the limit is 1024 (--max-body)"}),
        ({"payload": b"{not json"}, 400, {"error": "the body is not JSON"}),
        (
            {"content_type": "text/plain"},
            415,
            {
                "error": "content type text/plain is not one GitHub sends: expected "
                "application/json or application/x-www-form-urlencoded; set the webhook's "
                "content type to application/json"
            },
        ),
        (
            {"content_type": FORM, "payload": b"ref=main"},
            400,
            {"error": "body has 0 payload fields: expected one holding the JSON"},
        ),
        (
            {"content_type": FORM, "payload": b"payload=%7Bnot+json"},
            400,
            {"error": "the form field payload is not JSON"},
        ),
        ({"event": "ping"}, 200, {"pong": True}),
        ({"event": "issues"}, 202, {"ignored": "event issues"}),
        ({"payload": {**PUSH, "ref": "refs/heads/dev"}}, 202, {"ignored": "dev is not watched"}),
        ({"payload": {**PUSH, "ref": "refs/tags/v1"}}, 202, {"ignored": "is not a branch"}),
        ({"payload": {**PUSH, "deleted": True}}, 202, {"ignored": "branch main was deleted"}),
        ({"payload": {**PUSH, "after": "0" * 40}}, 202, {"ignored": "was deleted"}),
        ({"payload": {"ref": "refs/heads/main"}}, 400, {"error": "no repository.full_name"}),
        ({"payload": [1, 2]}, 400, {"error": "not a JSON object"}),
    ],
)
def test_each_delivery_that_is_not_a_push_to_run_is_answered_and_runs_nothing(
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    delivery: dict[str, Any],
    code: int,
    answer: dict[str, Any],
) -> None:
    """Unsigned, mis-signed, oversize, not JSON, ping, other events, other branches, tags and
    deletions each get their answer, start no run, and the log never shows the secret."""
    caplog.set_level(logging.INFO, logger="trainchain.triggers.webhook")
    options = dict(delivery)
    payload = options.pop("payload", PUSH)
    with serving(settings, max_body=1024) as server:
        got_code, got = server.deliver(payload, **options)
    assert got_code == code, got
    for key, value in answer.items():
        if isinstance(value, str):
            assert value in got[key]
        else:
            assert got[key] == value
    assert not server.paths.runs.exists()
    assert "delivery d-1: event" in caplog.text  # one line per delivery
    assert SECRET.decode() not in caplog.text
    assert not options.get("signature") or options["signature"] not in caplog.text


def test_a_full_queue_is_503_and_waiting_runs_are_cancelled_at_shutdown(
    settings: Settings,
) -> None:
    """Pushes to a repository whose run is going queue behind it up to --max-queue, then get
    503; stopping the server cancels the waiting run and leaves the running one to end."""
    url = "file:///nowhere/toy.git"
    paths = HookPaths.under(settings.home)
    answers = []
    # the repository is busy (its lock held) until the server stops; then the run left
    # running goes on, and the server's exit waits for it
    with serving(settings, max_queue=1) as server, try_lock(paths.lock(repo_key(url))) as held:
        assert held
        for n in range(3):
            answers.append(server.deliver(push_payload(url, f"{n + 1}" * 40), delivery=f"q{n}"))
        health = server.request("GET", "/health")[1]
        left = server.queues.close(0.5)
    assert [code for code, _ in answers] == [202, 202, 503]
    assert [body.get("queued_behind") for _, body in answers[:2]] == [0, 1]
    assert "already waiting (the queue holds 1)" in answers[2][1]["error"]
    running, waiting = (body["run_id"] for _, body in answers[:2])
    assert health["runs"][repo_key(url)] == {"running": running, "queued": [waiting]}
    assert len(left) == 1 and f"run {running} left running" in left[0]
    assert load_status(paths, waiting).state is RunState.CANCELLED
    # the run left running went on, and failed: there is no such repository
    done = wait_final(lambda: load_status(paths, running))
    assert done.state is RunState.FAILED and done.exit_code == 5


def test_serve_needs_the_secret_and_stops_cleanly_on_sigterm(home: Path) -> None:
    """`hooks serve` refuses to start without TRAINCHAIN_WEBHOOK_SECRET; with it, it answers
    /health and exits 0 on SIGTERM."""
    env = {k: v for k, v in os.environ.items() if k != "TRAINCHAIN_WEBHOOK_SECRET"}
    out = subprocess.run(
        [sys.executable, "-m", "trainchain", "hooks", "serve", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2 and "TRAINCHAIN_WEBHOOK_SECRET is not set" in out.stderr
    assert "hint: set TRAINCHAIN_WEBHOOK_SECRET" in out.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "trainchain", "hooks", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "TRAINCHAIN_WEBHOOK_SECRET": SECRET.decode()},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # bounded by the test timeout
        assert "listening on http://127.0.0.1:" in first, first
        port = int(first.split("127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "hooks serve: stopped" in stdout
    assert SECRET.decode() not in stdout + stderr


@contextmanager
def serve_process(settings: Settings, log: Path) -> Iterator[tuple[Server, subprocess.Popen[str]]]:
    """`trainchain hooks serve` itself (gunicorn, one worker) on a free port; stopped with
    SIGTERM at the end unless the test killed it."""
    env = {**os.environ, "TRAINCHAIN_WEBHOOK_SECRET": SECRET.decode()}
    argv = [sys.executable, "-m", "trainchain", "hooks", "serve", "--port", "0"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*argv, "--executor", "local", "--workers", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    try:
        listening = eventually(
            lambda: re.search(r"listening on (http://127\.0\.0\.1:\d+)/", log.read_text()),
            "hooks serve to listen",
            60,
            poll=0.2,
        )
        paths = HookPaths.under(settings.home)
        runs = WebhookRuns(paths, home=settings.home, python=sys.executable, env=env)
        yield Server(listening[1], runs, paths), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)


@pytest.mark.slow
def test_a_killed_server_s_runs_are_drained_after_a_restart(
    model: Path, settings: Settings, tmp_path: Path
) -> None:
    """`hooks serve` (under gunicorn) and the drainer it started are SIGKILLed while one run
    waits for its busy repository and a second is queued behind it: both stay recorded;
    started again, the server queues the first again (its chain never started) and drains
    both, one after the other."""
    url = f"file://{model}"
    first = git(model, "rev-parse", "HEAD")
    second = new_commit(model, "second")
    paths = HookPaths.under(settings.home)
    with try_lock(paths.lock(repo_key(url))) as held:  # the repository is busy
        assert held
        with serve_process(settings, tmp_path / "first.log") as (server, proc):
            answers = [
                server.deliver(push_payload(url, sha), delivery=f"k{n}")
                for n, sha in enumerate((first, second))
            ]
            assert [code for code, _ in answers] == [202, 202], answers
            runs = [body["run_id"] for _, body in answers]
            [(taken, drainer)] = server.queues.queue.running()
            assert taken.run_id == runs[0] and drainer is not None
            os.kill(drainer, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=60)
            eventually(lambda: not process_alive(drainer, None), "the drainer to die", 60)
    assert [load_status(paths, r).state for r in runs] == [RunState.RUNNING, RunState.QUEUED]

    with serve_process(settings, tmp_path / "again.log"):
        done = [wait_final(partial(load_status, paths, r)) for r in runs]
    assert [d.state for d in done] == [RunState.SUCCEEDED, RunState.SUCCEEDED]
    assert [d.commit for d in done] == [first, second]
    assert done[0].finished_at and done[1].started_at
    assert done[1].started_at >= done[0].finished_at  # one after the other
    restarted = (tmp_path / "again.log").read_text()
    assert f"run {runs[0]}: its drainer (pid {drainer}" in restarted
    assert "went away before its chain started; queued again" in restarted


# ---- pure decisions ------------------------------------------------------------------------
def test_signature_and_push_decisions() -> None:
    """The signature check and the push decision are plain functions of their inputs."""
    body = b'{"a": 1}'
    assert signature_problem(SECRET, body, sign(SECRET, body)) is None
    assert signature_problem(b"other", body, sign(SECRET, body)) is not None
    run = read_push(push_payload("https://github.com/team/toy.git", "b" * 40), ())
    assert getattr(run, "commit", None) == "b" * 40
    chosen = read_push(push_payload("u", "b" * 40, branch="dev"), ("dev", "main"))
    assert getattr(chosen, "branch", None) == "dev"


# ---- a failure before tuning is told ---------------------------------------------------------
@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch, home: Path) -> Iterator[Inbox]:
    """A real SMTP server on loopback that the chains the triggers start send to (through the
    environment they inherit), with a configured recipient besides the pusher."""
    inbox = Inbox()
    with contextmanager(smtp_serve)(inbox) as controller:
        monkeypatch.setenv("TRAINCHAIN_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("TRAINCHAIN_SMTP_PORT", str(controller.port))
        monkeypatch.setenv("TRAINCHAIN_SMTP_TO", "team@example.com")
        yield inbox


def break_config(repo: Path) -> str:
    """Commit a trainchain.yaml with a misspelt key; the new sha."""
    config = repo / "trainchain.yaml"
    config.write_text(config.read_text().replace("max_trials:", "max_trails:"))
    git(repo, "commit", "-q", "-am", "typo")
    return git(repo, "rev-parse", "HEAD")


def sent(inbox: Inbox) -> tuple[Any, EmailMessage]:
    """The one email the inbox holds, once it arrived: (its envelope, the message)."""
    eventually(lambda: inbox.envelopes, "the failure email", WAIT_S, poll=0.2)
    (envelope,) = inbox.envelopes
    (message,) = inbox.messages()
    return envelope, message


def test_a_webhook_run_failing_before_tuning_emails_the_pusher_the_reason(
    model: Path, settings: Settings, smtp: Inbox
) -> None:
    """A pushed commit whose trainchain.yaml is wrong fails before tuning: the pusher (the
    payload's pusher.email) gets an email with the error and its hint, and the run's status
    says the error, not only the exit status."""
    sha = break_config(model)
    payload = push_payload(f"file://{model}", sha) | {
        "pusher": {"name": "ann", "email": "ann@example.com"},
        "head_commit": {"committer": {"email": "someone-else@example.com"}},
    }
    with serving(settings) as server:
        code, body = server.deliver(payload)
        assert code == 202, body
        done = wait_final(lambda: server.status(body["run_id"]))
    envelope, message = sent(smtp)
    assert envelope.rcpt_tos == ["ann@example.com"]
    assert message["To"] == "ann@example.com"
    assert message["Subject"].startswith("[trainchain] repo-toy: FAILED: ")
    assert "trainchain.yaml" in message["Subject"]
    text = message.get_body(("plain",)).get_content()
    assert "The chain stopped before tuning" in text and "max_trails" in text
    assert "hint:" in text
    assert f"Commit:      {sha}" in text
    assert done.state is RunState.FAILED and done.exit_code == 2
    assert done.error is not None and done.error.startswith("trainchain run exited with status 2: ")
    assert "max_trails" in done.error and "the log says why" not in done.error


def test_a_pushed_commit_failing_before_tuning_emails_its_committer(
    model: Path, hub: Path, home: Path, settings: Settings, smtp: Inbox
) -> None:
    """Through the post-receive hook, the failure email goes to the pushed commit's
    committer; the pull failing (the commit is not where the hook says) is told the same."""
    url = str(hub.parent / "moved-away.git")
    out = run_cli("hooks", "install", str(hub), "--url", url, "--home", str(home))
    assert out.returncode == 0, out.stderr
    sha = new_commit(model, "pushed")
    run_id = queued_run(push(model, "main"), sha)
    done = wait_final(lambda: load_status(HookPaths.under(settings.home), run_id))
    envelope, message = sent(smtp)
    assert envelope.rcpt_tos == ["t@example.com"]  # conftest's committer
    assert f"FAILED: {url} does not exist" in message["Subject"]
    assert done.state is RunState.FAILED and done.exit_code == 5
    assert done.error is not None and f"exited with status 5: {url} does not exist" in done.error
