"""Triggers without Jenkins: the run queue both triggers share, and the post-receive hook.

A trigger (the post-receive hook of a bare repository, or the GitHub webhook server of
:mod:`trainchain.webhook`) turns a pushed commit into a *run*: ``trainchain run
<repository> --ref <sha>`` in its own process, one at a time per repository. Each run has
a log, ``$TRAINCHAIN_HOME/hooks/runs/<run_id>.log``, and a status file, ``<run_id>.json``,
written atomically as the run goes from ``queued`` to ``running`` to ``succeeded``,
``goal_not_reached``, ``failed`` or ``cancelled``.

One run at a time per repository: whoever runs a repository's chain holds ``flock`` on
``hooks/locks/<repository key>.lock``. The post-receive hook queues a run on disk (a
marker file in ``hooks/queue/<repository key>/``) and starts a detached *drainer*; the
drainer holding the lock runs the queued runs oldest first, so the push returns at once
and pushes queue, never interleave.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from trainchain.errors import Busy, ConfigError
from trainchain.gitrepo import normalise, workspace_name
from trainchain.locks import flock_within
from trainchain.status import RunState
from trainchain.task import atomic_write_bytes

log = logging.getLogger(__name__)

HOOK_MARKER = "# trainchain post-receive hook"
ZERO_SHA = "0" * 40
DEFAULT_MAX_QUEUE = 16
MAX_QUEUE_LIMIT = 1000
DEFAULT_RUN_TIMEOUT_S = 24 * 3600.0
DEFAULT_JENKINS_JOB = "trainchain-1-pull"
JENKINS_TIMEOUT_S = 120.0
QUEUE_LOCK_WAIT_S = 10.0  # enqueueing holds the queue's lock for milliseconds
LOCK_POLL_S = 0.2
KILL_GRACE_S = 30.0  # a timed-out or stopped chain gets this long after SIGTERM
DRAIN_LOG_LIMIT = 1 << 20  # the drainers' shared stderr log is emptied past 1 MiB
SHOWN_RUNS = 20
KEPT_RUNS = 1000  # finished runs' status files and logs kept; older ones are removed

_SHA40 = re.compile(r"^[0-9a-f]{40}$")
_RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9._-]{1,100}$")
_KEY = re.compile(r"^[A-Za-z0-9._-]{1,80}$")
_BRANCH = re.compile(r"^[^\s~^:?*\[\\]+$")
# git sets these for a hook; inherited, they would point a chain's git calls at the bare repo
_KEEP_GIT_ENV = frozenset({"GIT_SSH", "GIT_SSH_COMMAND", "GIT_ASKPASS", "GIT_SSL_CAINFO"})


class RepositoryBusy(Busy):
    """Another process held a repository's lock for longer than we could wait."""


class QueueFull(RepositoryBusy):
    """A repository already has as many runs waiting as its queue holds."""


@dataclass(frozen=True)
class RunRequest:
    """What a trigger asks for: run the chain on ``repository`` at ``commit``."""

    repository: str  # what `trainchain run` pulls: a URL, or an absolute path
    commit: str  # the full sha
    branch: str
    trigger: str  # "post-receive" or "webhook"
    delivery: str | None = None  # the webhook delivery id
    executor: str | None = None  # None: `trainchain run`'s default
    data: str | None = None
    run_timeout: float = DEFAULT_RUN_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.repository or self.repository.startswith("-"):
            raise ConfigError(
                f"repository {self.repository!r} is not a URL or a path",
                hint="pass a URL git accepts or a path to a repository",
            )
        if not _SHA40.match(self.commit):
            raise ConfigError(
                f"commit {self.commit!r} is not a full sha: expected 40 lowercase hex digits"
            )
        if not 0 < self.run_timeout <= 7 * 24 * 3600:
            raise ConfigError(
                f"run timeout {self.run_timeout:g} s is out of range: expected 1 s to 7 days"
            )


@dataclass(frozen=True)
class RunStatus:
    """One run's status file, ``hooks/runs/<run_id>.json``."""

    run_id: str
    state: RunState
    repository: str
    commit: str
    branch: str
    trigger: str
    log: str
    queued_at: str
    delivery: str | None = None
    executor: str | None = None
    data: str | None = None
    run_timeout: float = DEFAULT_RUN_TIMEOUT_S
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"state": str(self.state)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunStatus:
        known = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in data.items() if k in known}
        return cls(**(fields | {"state": RunState(data["state"])}))

    def with_(self, **changes: Any) -> RunStatus:
        return replace(self, **changes)


@dataclass(frozen=True)
class HookPaths:
    """Where triggers keep their state: ``$TRAINCHAIN_HOME/hooks``."""

    root: Path

    @classmethod
    def under(cls, home: Path) -> HookPaths:
        return cls(Path(home) / "hooks")

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def deliveries(self) -> Path:
        return self.root / "deliveries.json"

    @property
    def drain_log(self) -> Path:
        return self.root / "drain.log"

    def status(self, run_id: str) -> Path:
        return self.runs / f"{check_run_id(run_id)}.json"

    def log(self, run_id: str) -> Path:
        return self.runs / f"{check_run_id(run_id)}.log"

    def lock(self, key: str) -> Path:
        return self.root / "locks" / f"{check_key(key)}.lock"

    def queue(self, key: str) -> Path:
        return self.root / "queue" / check_key(key)


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ConfigError(
            f"{run_id!r} is not a run id: expected <UTC time>-<repository>-<sha8>-<hex>, "
            "as printed when the run was queued"
        )
    return run_id


def check_key(key: str) -> str:
    if not _KEY.match(key) or key.startswith("."):
        raise ConfigError(f"{key!r} is not a repository key: expected letters, digits, . _ -")
    return key


def repo_key(repository: str) -> str:
    """One name per repository for its lock and queue (the workspace's name); a local
    repository is the same one as a path or as a file:// URL."""
    if repository.startswith("file://"):
        repository = repository.removeprefix("file://")
    return workspace_name(normalise(repository))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_run_id(repository: str, commit: str) -> str:
    slug = repo_key(repository).rsplit("-", 1)[0][:40] or "repo"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{stamp}-{slug}-{commit[:8]}-{secrets.token_hex(3)}"


def new_status(paths: HookPaths, request: RunRequest) -> RunStatus:
    run_id = new_run_id(request.repository, request.commit)
    return RunStatus(
        run_id=run_id,
        state=RunState.QUEUED,
        repository=request.repository,
        commit=request.commit,
        branch=request.branch,
        trigger=request.trigger,
        log=str(paths.log(run_id)),
        queued_at=now_iso(),
        delivery=request.delivery,
        executor=request.executor,
        data=request.data,
        run_timeout=request.run_timeout,
    )


def save_status(paths: HookPaths, status: RunStatus) -> Path:
    path = paths.status(status.run_id)
    atomic_write_bytes(path, (json.dumps(status.to_dict(), indent=2) + "\n").encode("utf-8"))
    return path


def load_status(paths: HookPaths, run_id: str) -> RunStatus:
    path = paths.status(run_id)
    try:
        return RunStatus.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ConfigError(
            f"no run {run_id!r} under {paths.runs}",
            hint="run ids are printed when a run is queued; `trainchain hooks status` lists them",
        ) from None
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is not a run status file: {err}") from None


def recent_runs(paths: HookPaths, limit: int = SHOWN_RUNS) -> list[RunStatus]:
    """The latest runs, newest first (run ids start with their UTC time)."""
    names = sorted((p.stem for p in paths.runs.glob("*.json")), reverse=True)
    out = []
    for name in names[:limit]:
        try:
            out.append(load_status(paths, name))
        except ConfigError as err:
            log.warning("skipping %s: %s", name, err.message)
    return out


def prune_runs(paths: HookPaths, keep: int = KEPT_RUNS) -> int:
    """Remove the status files and logs of finished runs older than the newest ``keep``."""
    removed = 0
    for path in sorted(paths.runs.glob("*.json"), reverse=True)[keep:]:
        try:
            status = load_status(paths, path.stem)
        except ConfigError:
            continue
        if status.state.final:
            paths.log(path.stem).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def child_env(env: Mapping[str, str], home: Path) -> dict[str, str]:
    """``env`` for a trigger's child: without what git sets for a hook, with the home."""
    clean = {k: v for k, v in env.items() if not k.startswith("GIT_") or k in _KEEP_GIT_ENV}
    return clean | {"TRAINCHAIN_HOME": str(home)}


def run_argv(python: str, status: RunStatus, home: Path) -> list[str]:
    argv = [python, "-m", "trainchain", "run", status.repository, "--ref", status.commit]
    # the same model reached another way (a fork, another trigger) may be tuning: queue
    # behind it rather than fail
    argv += ["--wait-lock", f"{status.run_timeout:.0f}"]
    if status.executor:
        argv += ["--executor", status.executor]
    if status.data:
        argv += ["--data", status.data]
    return [*argv, "--home", str(home)]


def trainchain_argv(python: str, home: Path, *args: str) -> list[str]:
    return [python, "-m", "trainchain", *args, "--home", str(home)]


# ---- locks ----------------------------------------------------------------------
@contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """``flock`` on ``path`` if it is free: yields whether this process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        try:
            yield held
        finally:
            if held:
                fcntl.flock(handle, fcntl.LOCK_UN)


def wait_lock(path: Path, wait_s: float, what: str) -> AbstractContextManager[None]:
    """``flock`` on ``path``, waiting at most ``wait_s`` seconds."""
    return flock_within(
        path,
        wait_s,
        lambda: RepositoryBusy(
            f"{what}: {path} was still held after {wait_s:g} s",
            hint="another trainchain process holds it; wait for it or stop it",
        ),
        LOCK_POLL_S,
    )


# ---- running one run --------------------------------------------------------------
def _log_line(handle: IO[bytes], text: str) -> None:
    handle.write(f"trainchain: {text}\n".encode())
    handle.flush()


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM the chain's process group, SIGKILL after the grace period; its exit status."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def execute(
    paths: HookPaths, status: RunStatus, *, python: str, env: Mapping[str, str], home: Path
) -> RunStatus:
    """Run the chain of a queued run (its caller holds the repository's lock) to the end."""
    argv = run_argv(python, status, home)
    log_path = paths.log(status.run_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        _log_line(out, f"run {status.run_id}: {status.repository} @ {status.commit}")
        _log_line(out, "command: " + shlex.join(argv))
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(env, home),
                cwd=paths.root,
                start_new_session=True,  # a timeout stops the chain with its training processes
            )
        except OSError as err:
            _log_line(out, f"cannot start the chain: {err}")
            return _finish(paths, status, None, f"cannot start the chain: {err}")
        status = status.with_(state=RunState.RUNNING, started_at=now_iso(), pid=proc.pid)
        save_status(paths, status)
        error = None
        try:
            code = proc.wait(timeout=status.run_timeout)
        except subprocess.TimeoutExpired:
            code = _stop(proc)
            error = f"the chain ran longer than {status.run_timeout:g} s and was stopped"
        except BaseException:  # SIGTERM or Ctrl-C of the runner: the chain stops with it
            code = _stop(proc)
            _finish(paths, status, code, "the runner was stopped, and the chain with it")
            raise
        final = _finish(paths, status, code, error)
        _log_line(out, f"run {status.run_id} finished: {final.state} (exit {code})")
        return final


def _finish(paths: HookPaths, status: RunStatus, code: int | None, error: str | None) -> RunStatus:
    state = RunState.FAILED if code is None or error else RunState.of_exit(code)
    if state is RunState.FAILED and error is None:
        error = f"trainchain run exited with status {code}; the log says why"
    final = status.with_(state=state, exit_code=code, finished_at=now_iso(), error=error)
    save_status(paths, final)
    return final


def _oldest(queue: Path) -> Path | None:
    markers = sorted(queue.glob("[0-9]*-*")) if queue.is_dir() else []
    return markers[0] if markers else None


def drain(paths: HookPaths, key: str, *, python: str, env: Mapping[str, str], home: Path) -> int:
    """Run ``key``'s queued runs oldest first, if no other process does; how many ran.

    Whoever holds the repository's lock drains its queue. After letting go, it looks once
    more: a run queued just before the release had its own drainer turned away."""
    queue = paths.queue(key)
    ran = 0
    while True:
        with try_lock(paths.lock(key)) as held:
            if not held:
                return ran
            while (marker := _oldest(queue)) is not None:
                run_id = marker.name.split("-", 1)[1]
                marker.unlink(missing_ok=True)
                try:
                    status = load_status(paths, run_id)
                except ConfigError as err:
                    log.warning("queued run %s: %s", run_id, err.message)
                    continue
                if status.state is RunState.QUEUED:
                    execute(paths, status, python=python, env=env, home=home)
                    ran += 1
        if _oldest(queue) is None:
            return ran


def execute_queued(
    paths: HookPaths, run_id: str, *, python: str, env: Mapping[str, str], home: Path
) -> RunStatus:
    """Run one queued run once its repository is free, then the repository's disk queue."""
    status = load_status(paths, run_id)
    key = repo_key(status.repository)
    try:
        with wait_lock(paths.lock(key), status.run_timeout, f"run {run_id}"):
            status = load_status(paths, run_id)  # cancelled while it waited?
            if status.state is RunState.QUEUED:
                status = execute(paths, status, python=python, env=env, home=home)
    except RepositoryBusy as err:
        status = _finish(paths, status, None, err.message)
    drain(paths, key, python=python, env=env, home=home)
    return status


def spawn_detached(paths: HookPaths, argv: list[str], env: Mapping[str, str]) -> int:
    """Start ``argv`` in its own session with no terminal and none of our output pipes (git
    waits for a hook's pipes to close); its stderr goes to ``hooks/drain.log``."""
    paths.root.mkdir(parents=True, exist_ok=True)
    drain_log = paths.drain_log
    if drain_log.exists() and drain_log.stat().st_size > DRAIN_LOG_LIMIT:
        drain_log.write_bytes(b"")
    with drain_log.open("ab") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=dict(env),
            cwd=paths.root,
            start_new_session=True,
            close_fds=True,
        )
    # Not ours to wait for: it outlives this (short-lived) process on purpose. Marking it
    # done keeps Popen from warning, when collected, that it is still running.
    proc.returncode = 0
    return proc.pid


def enqueue(
    paths: HookPaths,
    request: RunRequest,
    *,
    max_queue: int,
    python: str,
    env: Mapping[str, str],
    home: Path,
) -> tuple[RunStatus, int]:
    """Queue a run on disk and start a detached drainer; (its status, runs waiting before it)."""
    key = repo_key(request.repository)
    queue = paths.queue(key)
    queue.mkdir(parents=True, exist_ok=True)
    with wait_lock(paths.lock(key + ".queue"), QUEUE_LOCK_WAIT_S, "queueing a run"):
        waiting = sum(1 for _ in queue.glob("[0-9]*-*"))
        if waiting >= max_queue:
            raise QueueFull(
                f"{waiting} runs of {request.repository} are already waiting "
                f"(the queue holds {max_queue})",
                hint="push again once some have run, or reinstall the hook with a larger "
                "--max-queue",
            )
        status = new_status(paths, request)
        save_status(paths, status)
        (queue / f"{time.time_ns():020d}-{status.run_id}").touch()
    prune_runs(paths)
    spawn_detached(
        paths, trainchain_argv(python, home, "hooks", "drain", key), child_env(env, home)
    )
    return status, waiting


# ---- the post-receive hook ----------------------------------------------------------
@dataclass(frozen=True)
class RefUpdate:
    old: str
    new: str
    ref: str

    @property
    def branch(self) -> str | None:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None

    @property
    def deleted(self) -> bool:
        return self.new == ZERO_SHA


def parse_updates(lines: Iterable[str]) -> list[RefUpdate]:
    """post-receive's stdin, ``<old sha> <new sha> <ref>`` a line; other lines are skipped."""
    updates = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and _SHA40.match(parts[0]) and _SHA40.match(parts[1]):
            updates.append(RefUpdate(*parts))
        elif line.strip():
            log.warning("post-receive: skipping a line that is not <old> <new> <ref>: %r", line)
    return updates


def head_branch(repo: Path) -> str | None:
    """The branch a repository's HEAD names (a bare repository's default branch)."""
    try:
        head = (repo / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return head.removeprefix("ref: refs/heads/") if head.startswith("ref: refs/heads/") else None


def skip_reason(update: RefUpdate, branches: tuple[str, ...], default: str | None) -> str | None:
    """Why a pushed ref starts no run, or None when it does."""
    if update.branch is None:
        return f"{update.ref} is not a branch"
    if update.deleted:
        return f"branch {update.branch} was deleted"
    watched = branches or ((default,) if default else ())
    if update.branch not in watched:
        return f"branch {update.branch} is not watched (watched: {', '.join(watched) or 'none'})"
    return None


@dataclass(frozen=True)
class HookOptions:
    """What `trainchain hooks install` bakes into a post-receive hook."""

    branches: tuple[str, ...] = ()  # empty: the repository's HEAD branch at push time
    executor: str | None = None
    data: str | None = None
    jenkins_job: str | None = None
    url: str | None = None  # what the chain pulls; default: the bare repository's path
    max_queue: int = DEFAULT_MAX_QUEUE
    run_timeout: float = DEFAULT_RUN_TIMEOUT_S

    def __post_init__(self) -> None:
        check_max_queue(self.max_queue)
        for branch in self.branches:
            if not _BRANCH.match(branch) or branch.startswith("-"):
                raise ConfigError(
                    f"{branch!r} is not a branch name", hint="pass e.g. --branch main"
                )
        if self.jenkins_job is not None and not re.match(r"^[A-Za-z0-9._/-]+$", self.jenkins_job):
            raise ConfigError(
                f"{self.jenkins_job!r} is not a Jenkins job name: expected letters, digits, . _ / -"
            )

    def argv(self) -> list[str]:
        """The options as `trainchain hooks post-receive` arguments."""
        out: list[str] = []
        for branch in self.branches:
            out += ["--branch", branch]
        for flag, value in (
            ("--executor", self.executor),
            ("--data", self.data),
            ("--jenkins-job", self.jenkins_job),
            ("--url", self.url),
        ):
            if value:
                out += [flag, value]
        return [*out, "--max-queue", str(self.max_queue), "--run-timeout", f"{self.run_timeout:g}"]


def check_max_queue(value: int) -> int:
    if not 1 <= value <= MAX_QUEUE_LIMIT:
        raise ConfigError(
            f"a queue of {value} runs is out of range: expected 1 to {MAX_QUEUE_LIMIT}"
        )
    return value


def post_receive(
    repo: Path,
    lines: Iterable[str],
    options: HookOptions,
    *,
    paths: HookPaths,
    python: str,
    env: Mapping[str, str],
    home: Path,
    jenkins_url: str | None,
    out: Callable[[str], None],
) -> int:
    """Each pushed branch the hook watches becomes a Jenkins build (when Jenkins is set up) or
    a queued chain run; 0 when all went well. git shows ``out``'s lines to the pusher."""
    repository = options.url or str(repo)
    default = head_branch(repo)
    job = options.jenkins_job or (DEFAULT_JENKINS_JOB if jenkins_url else None)
    failures = 0
    for update in parse_updates(lines):
        reason = skip_reason(update, options.branches, default)
        if reason is not None:
            log.info("post-receive: %s: no run", reason)
            continue
        if job is not None:
            failures += (
                trigger_jenkins(
                    job, repository, update.new, python=python, env=env, home=home, out=out
                )
                != 0
            )
            continue
        request = RunRequest(
            repository=repository,
            commit=update.new,
            branch=update.branch or "",
            trigger="post-receive",
            executor=options.executor,
            data=options.data,
            run_timeout=options.run_timeout,
        )
        try:
            status, _ = enqueue(
                paths, request, max_queue=options.max_queue, python=python, env=env, home=home
            )
        except RepositoryBusy as err:
            out(f"trainchain: no run for {update.new[:12]}: {err.message}")
            failures += 1
            continue
        sha12 = update.new[:12]
        out(f"trainchain: chain run {status.run_id} queued for {sha12} (log: {status.log})")
    return 1 if failures else 0


def trigger_jenkins(
    job: str,
    repository: str,
    commit: str,
    *,
    python: str,
    env: Mapping[str, str],
    home: Path,
    out: Callable[[str], None],
) -> int:
    """`trainchain jenkins trigger`, its output shown to the pusher; its exit status."""
    argv = [
        python, "-m", "trainchain", "jenkins", "trigger", job,
        "--param", f"REPOSITORY={repository}", "--param", f"COMMIT={commit}",
    ]  # fmt: skip
    out(f"trainchain: triggering Jenkins job {job} for {commit[:12]}")
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            env=child_env(env, home),
            timeout=JENKINS_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        out(f"trainchain: no answer within {JENKINS_TIMEOUT_S:g} s; no build for {commit[:12]}")
        return 1
    if proc.returncode != 0:
        out(f"trainchain: {job} failed (exit {proc.returncode}); no build for {commit[:12]}")
    return proc.returncode


# ---- installing the hook -------------------------------------------------------------
def check_bare(path: Path) -> Path:
    """``path`` as an absolute bare repository, or a ConfigError saying what it is."""
    repo = Path(path).expanduser().absolute()
    if not repo.is_dir():
        raise ConfigError(
            f"{repo} is not a folder",
            hint="pass a bare repository (`git init --bare NAME.git` makes one)",
        )
    if (repo / ".git").exists():
        raise ConfigError(
            f"{repo} is a working copy, not a bare repository",
            hint="install the hook in the bare repository people push to "
            f"(`git clone --bare {repo} {repo.name}.git` makes one)",
        )
    if not ((repo / "HEAD").is_file() and (repo / "objects").is_dir() and (repo / "refs").is_dir()):
        raise ConfigError(
            f"{repo} is not a git repository: it has no HEAD, objects/ and refs/",
            hint="pass a bare repository (`git init --bare NAME.git` makes one)",
        )
    return repo


def render_hook(repo: Path, home: Path, python: str, options: HookOptions) -> str:
    argv = [python, "-m", "trainchain", "hooks", "post-receive", "--repo", str(repo)]
    return "\n".join(
        [
            "#!/bin/sh",
            f"{HOOK_MARKER}: written by `trainchain hooks install`, which replaces it.",
            "# Each pushed branch it watches becomes a chain run (a Jenkins build when",
            "# JENKINS_URL is set or a job was given); the push does not wait for it.",
            f"TRAINCHAIN_HOME={shlex.quote(str(home))}",
            "export TRAINCHAIN_HOME",
            "exec " + shlex.join([*argv, *options.argv()]),
            "",
        ]
    )


def install_hook(
    repo: Path, home: Path, python: str, options: HookOptions, *, force: bool = False
) -> tuple[Path, Path | None]:
    """Write ``hooks/post-receive``; (its path, where a foreign hook was moved, if any)."""
    repo = check_bare(repo)
    hook = repo / "hooks" / "post-receive"
    backup = None
    if hook.exists() and HOOK_MARKER not in hook.read_text(encoding="utf-8", errors="replace"):
        if not force:
            raise ConfigError(
                f"{hook} exists and trainchain did not write it",
                hint="merge it by hand, or pass --force to move it to "
                "post-receive.before-trainchain and install trainchain's",
            )
        backup = hook.with_name("post-receive.before-trainchain")
        os.replace(hook, backup)
    atomic_write_bytes(hook, render_hook(repo, home, python, options).encode("utf-8"))
    hook.chmod(0o755)
    return hook, backup
