"""Shared fixtures: a private TRAINCHAIN_HOME per test, and small real model repositories."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from trainchain.core.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

T = TypeVar("T")

# A stdlib-only training script: its validation accuracy is a known function of its
# hyperparameters, so tuning outcomes are checkable. It honours the whole contract:
# params, data, the validation plan (per-fold scores around the value, a folds id of the
# plan's assignment), checkpoints (resume), report lines, metrics. TOY_FOLDS=ignore makes
# it ignore the plan (always the same folds); TOY_FOLDS=drift gives every trial its own.
# It hangs after step 1 in trial TOY_HANG_TRIAL (`any`: every trial that gets there; a
# trial resumed from its checkpoint starts past it), or in any trial with mode=hang (the
# parameter reaches a container too); mode=crash exits 2 after its steps; TOY_STEP_S makes
# each step take that many seconds (a trial that takes its time); TOY_N_TEST=N reports
# the held-out test's size.
TOY_TRAIN = """
import json, os, sys, time
from pathlib import Path
from trainchain import task

p = task.params()
plan = task.validation()
ckpt = task.checkpoint_dir() / "state.json"
start = json.loads(ckpt.read_text())["step"] + 1 if ckpt.exists() else 0
print(f"toy: trial {task.trial()} attempt {task.attempt()} starting at step {start}", flush=True)
print(f"toy: threads {os.environ.get('OMP_NUM_THREADS', 'default')}", flush=True)
hang_trial = os.environ.get("TOY_HANG_TRIAL")
for step in range(start, 3):
    time.sleep(float(os.environ.get("TOY_STEP_S", "0")))  # a trial that takes its time
    task.atomic_write_bytes(ckpt, json.dumps({"step": step}).encode())
    task.report(step, val_accuracy=0.5)
    hang = p.get("mode") == "hang" or hang_trial in {"any", str(task.trial())}
    if step == 1 and hang:
        print("toy: hanging", flush=True)
        time.sleep(600)
if p.get("mode") == "crash":
    print("toy: crashing on purpose", flush=True)
    sys.exit(2)
value = max(0.0, 1.0 - abs(float(p["x"]) - 0.7))
mode = os.environ.get("TOY_FOLDS", "")
seed = 0 if mode == "ignore" else plan["seed"] + (1000 + task.trial() if mode == "drift" else 0)
n = plan["folds"] * (1 if mode == "ignore" else plan["repeats"])
noise = [0.002 * ((7 * i + seed) % 5 - 2) for i in range(n)]
folds = [value + d - sum(noise) / n for d in noise]
task.write_metrics({
    "val_accuracy": sum(folds) / n,
    "val_accuracy_folds": folds,
    "val_folds_id": task.folds_id([[seed, i] for i in range(n)]),
    "test_accuracy": value - 0.01,
    **({"n_test": int(os.environ["TOY_N_TEST"])} if os.environ.get("TOY_N_TEST") else {}),
})
(task.output_dir() / "data_seen.txt").write_text(str(task.data_dir()))
values = task.data_dir() / "values.txt"
if values.exists():
    (task.output_dir() / "data_read.txt").write_text(values.read_text())
"""

TOY_YAML = """
name: {name}
entrypoint: train.py
image: python:3.11-slim   # stdlib only: no family to detect
data:
  path: data
goal: {{metric: accuracy, threshold: {threshold}, direction: maximize}}
budget: {{max_trials: {max_trials}, timeout: 600, seed: 1}}
search_space:
  x: {{type: float, low: 0.0, high: 1.0, default: 0.1}}
  mode: {{type: categorical, choices: [{mode}], default: {mode}}}
train: {{timeout: 120, max_attempts: {attempts}}}
notify: {{to: [ml-team@example.com]}}
"""


@pytest.fixture(scope="session")
def live_jenkins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The jenkins tier's real Jenkins (tests/jenkins_real.py), started once per session:
    skipped with the reason where ../shared/jenkins or sshd is missing, except where CI
    is set, where that fails the run."""
    from tests import jenkins_real
    from tests.smtp_server import Inbox, serve

    if not (jenkins_real.SHARED_JENKINS / "start.sh").is_file():
        unavailable(
            f"no real Jenkins at {jenkins_real.SHARED_JENKINS} (../shared/jenkins beside the "
            "checkout)",
            "jenkins",
        )
    if not jenkins_real.SSHD.is_file():
        unavailable(
            f"no {jenkins_real.SSHD} for the Jenkins SSH agent (scripts/install-sshd.sh "
            "installs Debian's openssh-server)",
            "jenkins",
        )
    if os.geteuid() != 0:
        unavailable("the SSH agent's sshd on loopback needs root here", "jenkins")
    inbox, root = Inbox(), tmp_path_factory.mktemp("jenkins")
    with (
        contextmanager(serve)(inbox) as smtp,
        jenkins_real.live_jenkins(root, inbox, smtp.port) as live,
    ):
        yield live


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    """The postgres tier's real PostgreSQL (tests/postgres_real.py), one per test module:
    skipped with the reason where it is not installed, except where CI is set."""
    from tests import postgres_real

    with postgres_real.started() as server:
        yield server


@pytest.fixture
def postgres_database(postgres: Any) -> str:
    """The URL of a new empty database on the tier's PostgreSQL, for one test."""
    return str(postgres.database())


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private TRAINCHAIN_HOME; no SMTP, so email goes to the outbox."""
    h = tmp_path / "home"
    monkeypatch.setenv("TRAINCHAIN_HOME", str(h))
    for var in list(os.environ):
        if var.startswith(("TRAINCHAIN_SMTP_", "MLFLOW_")) or var == "BUILD_URL":
            monkeypatch.delenv(var, raising=False)
    return h


@pytest.fixture
def settings(home: Path) -> Settings:
    """The settings of the private TRAINCHAIN_HOME."""
    return load_settings()


ToyRepo = Callable[..., Path]


@pytest.fixture
def toy_repo(tmp_path: Path) -> ToyRepo:
    """Make a model repository of the stdlib-only TOY_TRAIN script (a git repo unless
    git=False), its data and trainchain.yaml."""

    def make(
        *,
        name: str = "toy",
        threshold: float = 0.95,
        max_trials: int = 12,
        mode: str = "ok",
        attempts: int = 1,
        git: bool = True,
        extra: str = "",
    ) -> Path:
        root = tmp_path / f"repo-{name}"
        (root / "data").mkdir(parents=True)
        (root / "data" / "values.txt").write_text("1 2 3\n")
        (root / "train.py").write_text(textwrap.dedent(TOY_TRAIN))
        (root / "trainchain.yaml").write_text(
            TOY_YAML.format(
                name=name, threshold=threshold, max_trials=max_trials, mode=mode, attempts=attempts
            )
            + extra
        )
        if git:
            git_init(root)
        return root

    return make


def git(cwd: Path, *args: str) -> str:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def git_init(root: Path) -> str:
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "model code")
    return git(root, "rev-parse", "HEAD")


@contextmanager
def served_apps(config: Callable[..., Any], wait: float) -> Iterator[Callable[..., Any]]:
    """``make(name, **options)``: a Flask app of trainchain.serving over ``config(name,
    **options)`` whose champion is loaded (waited for up to ``wait`` s); every app made is
    closed at the end."""
    from trainchain.serving.app import create_app, service_of

    apps: list[Any] = []

    def make(name: str, **options: Any) -> Any:
        app = create_app(config(name, **options))
        apps.append(app)
        holder = service_of(app).holder
        assert holder.wait_for(lambda: holder.champion is not None, wait), holder.status
        return app

    try:
        yield make
    finally:
        for app in apps:
            service_of(app).close()


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real `trainchain` entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "trainchain", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


def start_script(argv: list[str], *, timeout: float = 600) -> dict[str, str]:
    """Run a start script that prints ``export NAME=value`` lines for eval (start-monitoring,
    start-postgres, ../shared/jenkins/start.sh): its exported values; a failure is the
    test's, with the script's stderr."""
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, f"{argv[0]} failed:\n{out.stderr}"
    return dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.stdout.splitlines()
        if line.startswith("export ")
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def fetch(
    url: str, data: bytes | None = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    """GET ``url`` (POST when ``data`` is given): the status and the body, parsed as JSON
    when it is JSON, else as text; an HTTP error status is an answer like any other."""
    request = urllib.request.Request(  # noqa: S310 - a loopback http:// URL
        url, data=data, headers={"content-type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without MLFLOW_* and TRAINCHAIN_* (a child then sees
    only what its command line and ``extra`` say), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRAINCHAIN_"))}
    env.update(extra)
    return env


@dataclass
class Served:
    """A `trainchain serve` subprocess: its URL and its log (stdout and stderr)."""

    proc: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text()

    def health(self) -> int:
        """/health's status (0 while nothing answers); fails the test if the server exited."""
        if self.proc.poll() is not None:
            pytest.fail(f"trainchain serve exited {self.proc.returncode}:\n{self.output()}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status
        except OSError:
            return 0
        finally:
            conn.close()

    def wait_healthy(self, timeout: float) -> None:
        eventually(lambda: self.health() == 200, "/health to answer 200", timeout, 0.2, self.output)


@contextmanager
def serving(
    home: Path, *args: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """`python -m trainchain serve --home HOME --port FREE ARGS...` with its output in
    ``log`` and the environment ``env`` (default: :func:`clean_env`); stopped (SIGTERM, then
    SIGKILL) when the block ends, so its exit code and log are there to check after it."""
    port = free_port()
    argv = ["serve", "--home", str(home), "--port", str(port), *args]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trainchain", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_env() if env is None else env,
        )
    try:
        yield Served(proc, port, log)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    """SIGTERM ``proc`` (a server's graceful stop), wait up to ``timeout`` s, else SIGKILL;
    its output when it was started with pipes (stderr merged or not), else ''."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return output or ""


@pytest.fixture
def no_cwd_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run from an empty folder and check nothing was written into it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd
    assert list(cwd.iterdir()) == [], "trainchain wrote into the current directory"


def eventually(
    check: Callable[[], T | None],
    what: str,
    timeout: float,
    poll: float = 0.5,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy, and return that; fail the test
    naming ``what`` (and ``detail()``, read then: a log, a state) after ``timeout`` seconds.
    ``check`` may fail the test itself sooner (a process that died will not get there)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            more = f"\n{detail()}" if detail is not None else ""
            pytest.fail(f"waited {timeout:g} s for {what}{more}", pytrace=False)
        time.sleep(poll)


def unavailable(why: str, tier: str) -> NoReturn:
    """A heavy tier cannot run here: skip with the reason, except where CI is set, where
    that fails the run (every tier must run in CI)."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {why}: the {tier} tier must run in CI", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def require_image(image: str, build: str) -> None:
    """Gate a Docker-tier test (or module) on an engine and ``image``: skip with the reason
    where either is missing, except where CI is set (see :func:`unavailable`). ``build``
    is the command that builds the image."""
    from trainchain.adapters.images import docker_client

    why = None
    try:
        client = docker_client(timeout=10)
    except Exception as err:
        why = f"no Docker engine ({err})"
    else:
        import docker

        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            why = f"{image} is not built ({build})"
    if why is not None:
        unavailable(why, "Docker")
