"""Push triggers: the post-receive hook, and the drainers that run queued runs.

A trigger (the post-receive hook of a bare repository, or the GitHub webhook server of
:mod:`trainchain.triggers.webhook`) turns a pushed commit into a *run* queued in the one trigger
queue (:mod:`trainchain.triggers.queue`, SQLite under ``$TRAINCHAIN_HOME/hooks``), then
starts a detached *drainer* (`trainchain hooks drain`) for each repository it could claim,
so the push (or the delivery) is answered at once. A drainer runs its repository's
queued runs oldest first, each as ``trainchain run <repository> --ref <sha>`` in its own
process group with a log, ``$TRAINCHAIN_HOME/hooks/runs/<run_id>.log``; one chain at a
time per repository, at most ``max_running`` repositories at once. A run whose target is
a Jenkins job is triggered there instead (:mod:`trainchain.triggers.jenkins`: bounded
retries, the queue item's URL recorded), with its log in the same place.

The drainer also holds ``flock`` on ``hooks/locks/<repository key>.lock`` around each
chain: the claim in SQLite says which drainer owns a repository, the lock is the
operating system's guarantee that two chains of it never overlap, whatever a stale-claim
check decided.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from trainchain.adapters.gitrepo import committer_email
from trainchain.adapters.locks import flock_within
from trainchain.contract.task import atomic_write_bytes
from trainchain.core.errors import ConfigError, last_error_line
from trainchain.core.redaction import redact
from trainchain.core.status import RunState
from trainchain.triggers.queue import (
    BRANCH_NAME,
    DEFAULT_JENKINS_RETRIES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_RUN_TIMEOUT_S,
    JENKINS,
    SHOWN_RUNS,
    AlreadyReceived,
    Holder,
    HookPaths,
    JenkinsTarget,
    QueueFull,
    RepositoryBusy,
    RunRequest,
    RunStatus,
    TriggerQueue,
    check_jenkins_job,
    check_max_queue,
    now_iso,
    repo_key,
)

__all__ = [
    "AlreadyReceived",
    "HookPaths",
    "QueueFull",
    "RepositoryBusy",
    "RunRequest",
    "RunState",
    "RunStatus",
    "TriggerQueue",
    "check_max_queue",
    "repo_key",
]

log = logging.getLogger(__name__)

HOOK_MARKER = "# trainchain post-receive hook"
ZERO_SHA = "0" * 40
DEFAULT_JENKINS_JOB = "trainchain-1-pull"
JENKINS_SHOWN_S = 30.0  # the hook waits this long to show the pusher Jenkins' answer
JENKINS_SHOWN_POLL_S = 0.2
LOCK_POLL_S = 0.2
KILL_GRACE_S = 30.0  # a timed-out or stopped chain gets this long after SIGTERM
LOG_TAIL_BYTES = 64 << 10  # a finished run's log end read for the error it printed
DRAIN_LOG_LIMIT = 1 << 20  # the drainers' shared stderr log is emptied past 1 MiB
MAX_DRAINED_RUNS = 10_000  # one drainer's runs before it ends (the next push starts another)

_SHA40 = re.compile(r"^[0-9a-f]{40}$")
# git sets these for a hook; inherited, they would point a chain's git calls at the bare repo
_KEEP_GIT_ENV = frozenset({"GIT_SSH", "GIT_SSH_COMMAND", "GIT_ASKPASS", "GIT_SSL_CAINFO"})
# drainers this process started: reaped when the next one starts, so none stays a zombie
_spawned: set[int] = set()


def load_status(paths: HookPaths, run_id: str) -> RunStatus:
    """A run's status (``hooks status RUN_ID``)."""
    return TriggerQueue(paths).get(run_id)


def recent_runs(paths: HookPaths, limit: int = SHOWN_RUNS) -> list[RunStatus]:
    """The latest runs, newest first."""
    return TriggerQueue(paths).recent(limit)


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
    if status.reason:  # one argument, whatever it starts with
        argv.append(f"--reason={status.reason}")
    # nobody watches a triggered chain: a failure it cannot report itself is emailed
    argv.append("--email-failures")
    if status.pushed_by:
        argv.append(f"--pushed-by={status.pushed_by}")
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


def _why(log_path: Path) -> str | None:
    """The first line of the error the chain printed last in its log (its end, bounded)."""
    try:
        with log_path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    line = last_error_line(tail)
    return redact(line) if line else None


def _outcome(
    status: RunStatus, code: int | None, error: str | None, log_path: Path | None = None
) -> RunStatus:
    state = RunState.FAILED if code is None or error else RunState.of_exit(code)
    if state is RunState.FAILED and error is None:
        why = _why(log_path) if log_path is not None else None
        error = f"trainchain run exited with status {code}: " + (why or "the log says why")
    return status.with_(state=state, exit_code=code, finished_at=now_iso(), error=error)


def execute(
    queue: TriggerQueue,
    token: str,
    status: RunStatus,
    *,
    python: str,
    env: Mapping[str, str],
    home: Path,
) -> RunStatus:
    """Run the chain of the run ``token`` claims (its caller holds the repository's lock)
    to the end, and record the outcome (which takes the repository's next queued run)."""
    paths = queue.paths
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
            final = _outcome(status, None, f"cannot start the chain: {err}")
            queue.finish(token, final)
            return final
        status = status.with_(started_at=now_iso(), pid=proc.pid)
        queue.started(token, status)
        error = None
        try:
            code = proc.wait(timeout=status.run_timeout)
        except subprocess.TimeoutExpired:
            code = _stop(proc)
            error = f"the chain ran longer than {status.run_timeout:g} s and was stopped"
        except BaseException:  # SIGTERM or Ctrl-C of the drainer: the chain stops with it
            code = _stop(proc)
            stopped = "the drainer was stopped, and the chain with it"
            queue.finish(token, _outcome(status, code, stopped), advance=False)
            raise
        out.flush()
        final = _outcome(status, code, error, log_path)
        queue.finish(token, final)
        _log_line(out, f"run {status.run_id} finished: {final.state} (exit {code})")
        return final


def run_claimed(
    queue: TriggerQueue, token: str, *, python: str, env: Mapping[str, str], home: Path
) -> RunStatus | None:
    """Run the run a claim is on, once the repository's lock is free; None when the claim
    was released (nothing left to run)."""
    status = queue.current(token)
    if status is None:
        return None
    if status.target == JENKINS:  # no chain runs here: the repository's lock is not needed
        from trainchain.triggers.jenkins import trigger_build

        return trigger_build(queue, token, status, env=env)
    what = f"run {status.run_id}"
    try:
        with wait_lock(queue.paths.lock(repo_key(status.repository)), status.run_timeout, what):
            return execute(queue, token, status, python=python, env=env, home=home)
    except RepositoryBusy as err:
        final = _outcome(status, None, err.message)
        queue.finish(token, final)
        return final


def drain(paths: HookPaths, token: str, *, python: str, env: Mapping[str, str], home: Path) -> int:
    """The drainer: run the claimed repository's queued runs one at a time, then those of
    repositories left waiting for a free drainer; how many ran."""
    queue = TriggerQueue(paths)
    me = Holder()
    if not queue.hand_over(token, me):
        log.warning("claim %s was settled before this drainer started: nothing to do", token)
        return 0
    ran = 0
    for _ in range(MAX_DRAINED_RUNS):
        if run_claimed(queue, token, python=python, env=env, home=home) is not None:
            ran += 1
            continue
        taken = queue.claim_waiting(me, limit=1)  # our repository is done: any left waiting?
        if not taken:
            return ran
        token = taken[0]
    log.warning("drained %d runs: ending; the next push starts a new drainer", ran)
    return ran


def spawn_detached(paths: HookPaths, argv: list[str], env: Mapping[str, str]) -> int:
    """Start ``argv`` in its own session with no terminal and none of our output pipes (git
    waits for a hook's pipes to close); its stderr goes to ``hooks/drain.log``."""
    for pid in list(_spawned):  # reap the drainers that ended since
        with suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                continue
        _spawned.discard(pid)
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
    # Not ours to wait for: it outlives this (often short-lived) process on purpose. Marking
    # it done keeps Popen from warning, when collected, that it is still running.
    proc.returncode = 0
    _spawned.add(proc.pid)
    return proc.pid


def dispatch(queue: TriggerQueue, *, python: str, env: Mapping[str, str], home: Path) -> int:
    """Settle stale claims, then start a drainer for each repository with queued runs that
    no drainer holds (as many as the queue's ``max_running`` allows); how many started."""
    tokens = queue.claim_waiting(Holder())
    for token in tokens:
        argv = trainchain_argv(python, home, "hooks", "drain", "--claim", token)
        pid = spawn_detached(queue.paths, argv, child_env(env, home))
        queue.hand_over(token, Holder(pid=pid))
    return len(tokens)


def enqueue(
    paths: HookPaths,
    request: RunRequest,
    *,
    max_queue: int,
    python: str,
    env: Mapping[str, str],
    home: Path,
    full_hint: str = "push again once some have run, or reinstall the hook with a larger "
    "--max-queue",
    cooldown: float = 0.0,
) -> tuple[RunStatus, int]:
    """Queue a run and start the drainers it needs; (its status, runs of its repository
    ahead of it). ``cooldown``: a retrain's (:meth:`TriggerQueue.enqueue`)."""
    queue = TriggerQueue(paths)
    status, ahead = queue.enqueue(
        request, max_queue=max_queue, full_hint=full_hint, cooldown=cooldown
    )
    queue.prune()
    dispatch(queue, python=python, env=env, home=home)
    return status, ahead


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
    jenkins_retries: int = DEFAULT_JENKINS_RETRIES

    def __post_init__(self) -> None:
        check_max_queue(self.max_queue)
        for branch in self.branches:
            if not BRANCH_NAME.match(branch) or branch.startswith("-"):
                raise ConfigError(
                    f"{branch!r} is not a branch name", hint="pass e.g. --branch main"
                )
        if self.jenkins_job is not None:
            check_jenkins_job(self.jenkins_job)

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
        out += ["--max-queue", str(self.max_queue), "--run-timeout", f"{self.run_timeout:g}"]
        if self.jenkins_retries != DEFAULT_JENKINS_RETRIES:
            out += ["--jenkins-retries", str(self.jenkins_retries)]
        return out


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
    """Each pushed branch the hook watches becomes a queued run: a Jenkins build (when
    Jenkins is set up) or a chain run here; 0 when all went well. git shows ``out``'s lines
    to the pusher."""
    repository = options.url or str(repo)
    default = head_branch(repo)
    job = options.jenkins_job or (DEFAULT_JENKINS_JOB if jenkins_url else None)
    failures = 0
    for update in parse_updates(lines):
        reason = skip_reason(update, options.branches, default)
        if reason is not None:
            log.info("post-receive: %s: no run", reason)
            continue
        sha12 = update.new[:12]
        jenkins = None
        if job is not None:
            params = {"REPOSITORY": repository, "COMMIT": update.new}
            jenkins = JenkinsTarget(job, params, retries=options.jenkins_retries)
            out(f"trainchain: triggering Jenkins job {job} for {sha12}")
        request = RunRequest(
            repository=repository,
            commit=update.new,
            branch=update.branch or "",
            trigger="post-receive",
            executor=options.executor,
            data=options.data,
            run_timeout=options.run_timeout,
            jenkins=jenkins,
            pushed_by=committer_email(repo, update.new),
        )
        try:
            status, _ = enqueue(
                paths, request, max_queue=options.max_queue, python=python, env=env, home=home
            )
        except RepositoryBusy as err:
            out(f"trainchain: no run for {sha12}: {err.message}")
            failures += 1
            continue
        if jenkins is None:
            out(f"trainchain: chain run {status.run_id} queued for {sha12} (log: {status.log})")
            continue
        out(f"trainchain: Jenkins run {status.run_id} in the trigger queue (log: {status.log})")
        failures += not show_jenkins_answer(TriggerQueue(paths), status, out)
    return 1 if failures else 0


def show_jenkins_answer(queue: TriggerQueue, status: RunStatus, out: Callable[[str], None]) -> bool:
    """Wait (at most :data:`JENKINS_SHOWN_S`) for the drainer's first word from Jenkins on a
    Jenkins run and show it to the pusher; False when the run failed."""
    job, sha12 = status.jenkins_job, status.commit[:12]
    deadline = time.monotonic() + JENKINS_SHOWN_S
    while time.monotonic() < deadline:
        status = queue.get(status.run_id)
        if status.jenkins_queue_url:
            out(f"trainchain: queued {job}: {status.jenkins_queue_url}")
            return True
        if status.state is RunState.FAILED:
            out(f"trainchain: {job} failed: {status.error}; no build for {sha12}")
            return False
        if status.state.final:  # cancelled
            out(f"trainchain: {job}: {status.state}: {status.error}; no build for {sha12}")
            return False
        time.sleep(JENKINS_SHOWN_POLL_S)
    why = f" ({status.error})" if status.error else ""
    out(
        f"trainchain: Jenkins has not taken the build of {sha12} yet{why}; the trigger "
        f"goes on: `trainchain hooks status {status.run_id}` follows it"
    )
    return True


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
