"""Supervising training containers: the restart policy, the claim, and following a trial.

Used by both supervisors, :class:`trainchain.executors.docker.DockerExecutor` (for its own
trial) and ``trainchain watchdog`` (:class:`trainchain.supervise.watchdog.Watchdog`, for all
of them), so neither imports the other:

- :func:`decide` is a pure function of a container's state, the time and the
  :class:`WatchdogPolicy`: leave it, restart it (after a bounded exponential backoff; a
  hung one is stopped first), give up past ``max_restarts``, or collect a finished one
  that nobody collected (its log and state kept, the container removed).
- :func:`claim` and :func:`handle` carry out one decision on one container. The claim
  (``<locks dir>/<container id>.claim``, created with ``O_CREAT|O_EXCL``) makes the action
  exclusive: two watchdogs, or a watchdog and the executor following its own trial, never
  both restart the same container. A restart is a new container of the same image with
  the same mounts (so the same checkpoint folder) and environment, ``TRAINCHAIN_ATTEMPT``
  + 1; the dead one's log and exit state are kept in its attempt folder before it is
  removed. Past the cap, the give-up callback the caller passed in is told.
- :class:`TrialSupervisor` follows one trial's container and its replacements until one
  succeeds, the restarts run out, it times out or it is stopped.

It never touches a container without trainchain labels.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainchain.adapters import containers, procgroup

if TYPE_CHECKING:
    from trainchain.core import config

# the restart and give-up lines read as the watchdog's, as they did before this module was split
# out of it (the README shows them; benchmarks/watchdog.py counts them)
log = logging.getLogger("trainchain.supervise.watchdog")

GAVE_UP_FILE = "gave_up.json"
CLAIM_SUFFIX = ".claim"
POLL_S = 0.5  # how often a followed container is looked at

# Past the restart cap: told the container's labels and the reason (the chain layer
# marks the trial failed and sends the email; see trainchain.giveup)
GiveUpCallback = Callable[[Mapping[str, str], str], None]


# --- the pure decision --------------------------------------------------------------------------


class ActionKind(enum.StrEnum):
    LEAVE = "leave"
    RESTART = "restart"
    GIVE_UP = "give_up"
    COLLECT = "collect"  # finished, but nobody kept its log and state: keep them, remove it


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    reason: str
    delay: float = 0.0  # seconds still to wait before restarting (the backoff)
    stop_first: bool = False  # the container still runs (hung): stop it before acting

    @classmethod
    def leave(cls, reason: str) -> Action:
        return cls(ActionKind.LEAVE, reason)


@dataclass(frozen=True)
class WatchdogPolicy:
    """When a container counts as hung, how often it is restarted, how long between restarts."""

    heartbeat_limit: float | None = 900.0  # seconds without report progress; None: never hung
    max_restarts: int = 3
    backoff_base: float = 5.0  # the first restart waits this long after the death
    backoff_cap: float = 300.0  # no wait is longer than this
    collect_after: float = 600.0  # a finished container nobody collected is collected then

    def __post_init__(self) -> None:
        if self.heartbeat_limit is not None and not self.heartbeat_limit > 0:
            raise ValueError(
                f"heartbeat_limit must be positive seconds (or None) but got {self.heartbeat_limit}"
            )
        if not 0 <= self.max_restarts <= 100:
            raise ValueError(f"max_restarts must be from 0 to 100 but got {self.max_restarts}")
        if self.backoff_base < 0:
            raise ValueError(f"backoff_base cannot be negative but got {self.backoff_base}")
        if self.backoff_cap < 0:
            raise ValueError(f"backoff_cap cannot be negative but got {self.backoff_cap}")
        if self.collect_after < 0:
            raise ValueError(f"collect_after cannot be negative but got {self.collect_after}")

    @classmethod
    def from_config(cls, config: config.WatchdogLimits) -> WatchdogPolicy:
        """From ``watchdog:`` in trainchain.yaml."""
        return cls(
            heartbeat_limit=config.heartbeat_limit,
            max_restarts=config.max_restarts,
            backoff_base=config.backoff,
            backoff_cap=config.backoff_max,
        )

    def backoff(self, restarts: int) -> float:
        """Seconds to wait before restart number ``restarts + 1``: doubling, capped."""
        return min(self.backoff_cap, self.backoff_base * 2.0 ** min(restarts, 30))


@dataclass(frozen=True)
class ContainerState:
    """What :func:`decide` looks at: one container, as plain values."""

    labels: Mapping[str, str]
    status: str  # Docker's: created, running, exited, dead, ...
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    last_report: float | None = None  # the report file's last modification (Unix time)
    attempt: int = 1
    restarts: int = 0


def is_managed(labels: Mapping[str, str]) -> bool:
    return labels.get(containers.LABEL_MANAGED) == "true" and containers.LABEL_TRIAL in labels


def failure_reason(state: ContainerState) -> str:
    code = state.exit_code
    if state.oom_killed:
        return f"killed: out of memory (OOMKilled, exit {code})"
    if code == 137:
        return "killed by SIGKILL (exit 137)"
    if code is not None and 128 < code <= 128 + 64:
        return f"killed by signal {code - 128} (exit {code})"
    if state.status == "dead":
        return f"the container is dead (exit {code})"
    return f"exited with status {code}"


def decide(state: ContainerState, now: float, policy: WatchdogPolicy) -> Action:
    """Leave, restart (after ``delay``) or give up on one container. Pure."""
    if not is_managed(state.labels):
        return Action.leave("no trainchain labels: not ours")
    if state.status == "running":
        return _decide_running(state, now, policy)
    if state.status not in {"exited", "dead"}:
        return Action.leave(f"{state.status}: nothing to do yet")
    if state.status == "exited" and state.exit_code == 0:
        finished = state.finished_at if state.finished_at is not None else now
        if now - finished > policy.collect_after:
            return Action(ActionKind.COLLECT, "finished successfully; nobody collected it")
        return Action.leave("finished successfully")
    finished = state.finished_at if state.finished_at is not None else now
    delay = max(0.0, finished + policy.backoff(state.restarts) - now)
    return _restart_or_give_up(state, policy, failure_reason(state), delay=delay, stop_first=False)


def _decide_running(state: ContainerState, now: float, policy: WatchdogPolicy) -> Action:
    if policy.heartbeat_limit is None:
        return Action.leave("running")
    marks = [t for t in (state.last_report, state.started_at) if t is not None]
    if not marks or now - max(marks) <= policy.heartbeat_limit:
        return Action.leave("running, and the report moves")
    reason = (
        f"hung: no report progress for {now - max(marks):.0f} s "
        f"(heartbeat limit {policy.heartbeat_limit:g} s)"
    )
    return _restart_or_give_up(state, policy, reason, delay=0.0, stop_first=True)


def _restart_or_give_up(
    state: ContainerState, policy: WatchdogPolicy, reason: str, *, delay: float, stop_first: bool
) -> Action:
    if state.restarts >= policy.max_restarts:
        return Action(
            ActionKind.GIVE_UP,
            f"{reason}; gave up after {state.restarts} restart(s) "
            f"(max_restarts {policy.max_restarts})",
            stop_first=stop_first,
        )
    return Action(ActionKind.RESTART, reason, delay=delay, stop_first=stop_first)


def effective_policy(labels: Mapping[str, str], default: WatchdogPolicy) -> WatchdogPolicy:
    """The container's own limits (labels set from its trainchain.yaml) win over the default."""
    changes: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        if containers.LABEL_MAX_RESTARTS in labels:
            changes["max_restarts"] = int(labels[containers.LABEL_MAX_RESTARTS])
    raw = labels.get(containers.LABEL_HEARTBEAT)
    if raw is not None and raw != "none":  # "none": the supervisor's own limit
        with contextlib.suppress(ValueError):
            changes["heartbeat_limit"] = float(raw)
    base, _, cap = labels.get(containers.LABEL_BACKOFF, "").partition("/")
    with contextlib.suppress(ValueError):
        changes["backoff_base"], changes["backoff_cap"] = float(base), float(cap)
    try:
        return replace(default, **changes)
    except ValueError as err:
        log.warning("ignoring the container's own watchdog limits: %s", err)
        return default


def state_of(info: containers.ContainerInfo) -> ContainerState:
    return ContainerState(
        labels=info.labels,
        status=info.status,
        exit_code=info.exit_code,
        oom_killed=info.oom_killed,
        started_at=info.started_at,
        finished_at=info.finished_at,
        last_report=info.report_mtime(),
        attempt=info.attempt,
        restarts=info.restarts,
    )


# --- claiming and acting ------------------------------------------------------------------------


def claim(locks_dir: Path, container_id: str) -> bool:
    """Take the exclusive right to act on a container; False when someone already has it."""
    locks_dir.mkdir(parents=True, exist_ok=True)
    path = locks_dir / f"{container_id}{CLAIM_SUFFIX}"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"pid": os.getpid(), "time": time.time()}))
    return True


def release(locks_dir: Path, container_id: str) -> None:
    """Give a claim back (only when nothing was done under it)."""
    (locks_dir / f"{container_id}{CLAIM_SUFFIX}").unlink(missing_ok=True)


@dataclass(frozen=True)
class Handled:
    """What :func:`handle` did."""

    kind: ActionKind
    reason: str
    info: containers.ContainerInfo
    replacement: Any = None  # the new container (a docker SDK Container) for a restart
    log_tail: str = ""


def handle(
    client: Any,
    container: Any,
    action: Action,
    *,
    locks_dir: Path,
    stop_grace: float = 10.0,
    on_give_up: GiveUpCallback | None = None,
) -> Handled | None:
    """Claim ``container`` and carry out ``action``; None when another supervisor has it."""
    if action.kind is ActionKind.LEAVE:
        raise ValueError(f"nothing to handle: the action is {action.kind.value!r}")
    if not claim(locks_dir, container.id):
        log.info("container %s is claimed by another supervisor", container.id[:12])
        return None
    try:
        info = containers.inspect(container)
        if action.stop_first and info.status == "running":
            log.warning("stopping container %s: %s", info.name, action.reason)
            containers.stop(container, stop_grace)
            info = containers.inspect(container)
        folder = info.attempt_dir or locks_dir / "records" / info.id
        _, tail = containers.save_record(
            container, info, folder, action=action.kind.value, reason=action.reason
        )
    except Exception as err:
        if containers.is_not_found(err):  # removed meanwhile: nothing left to act on
            return None
        release(locks_dir, container.id)  # nothing was done: the next scan may try again
        raise
    if action.kind is ActionKind.COLLECT:
        containers.remove(container)
        log.info("collected container %s: %s", info.name, action.reason)
        return Handled(ActionKind.COLLECT, action.reason, info, None, tail)
    if action.kind is ActionKind.RESTART:
        next_dir = folder.parent / f"attempt-{info.attempt + 1}"
        replacement = None
        try:
            replacement = containers.create_replacement(client, info.attrs, attempt_dir=next_dir)
            replacement.start()
        except Exception as err:
            if replacement is not None:
                containers.remove(replacement)
            reason = f"{action.reason}; the restart failed: {err}"
            log.error("container %s: %s", info.name, reason)
            return _give_up(container, info, folder, reason, tail=tail, on_give_up=on_give_up)
        containers.remove(container)
        log.warning(
            "trial %s: container %s %s; restarted as attempt %d (container %s)",
            info.labels.get(containers.LABEL_TRIAL),
            info.name,
            action.reason,
            info.attempt + 1,
            replacement.name,
        )
        return Handled(ActionKind.RESTART, action.reason, info, replacement, tail)
    return _give_up(container, info, folder, action.reason, tail=tail, on_give_up=on_give_up)


def _give_up(
    container: Any,
    info: containers.ContainerInfo,
    folder: Path,
    reason: str,
    *,
    tail: str,
    on_give_up: GiveUpCallback | None,
) -> Handled:
    record = {
        "reason": reason,
        "container": info.id,
        "name": info.name,
        "attempt": info.attempt,
        "restarts": info.restarts,
        "labels": dict(info.labels),
        "time": time.time(),
    }
    containers.save_json(folder / GAVE_UP_FILE, record)
    containers.remove(container)
    log.error("trial %s: %s", info.labels.get(containers.LABEL_TRIAL), reason)
    if on_give_up is not None:
        try:
            on_give_up(dict(info.labels), reason)
        except Exception:
            log.exception("the give-up callback failed for container %s", info.name)
    return Handled(ActionKind.GIVE_UP, reason, info, None, tail)


# --- following one trial ------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialEnd:
    """How a followed trial ended: its last container's state, and why it ended."""

    info: containers.ContainerInfo | None
    duration_s: float
    log_tail: str
    timed_out: bool = False
    error: str | None = None
    restarts: int = 0
    stopped: bool = False


@dataclass
class _Current:
    """The container a trial is on now, and where its log goes."""

    container: Any
    log_path: Path


@dataclass
class _Followed:
    end: str  # "exited", "gone" (removed by another supervisor), "hung", "timeout", "stopped"
    info: containers.ContainerInfo | None
    tail: collections.deque[str]


_STOPPED = object()  # _handle_failure: the stop event was set before anything was restarted


@dataclass(frozen=True)
class TrialSupervisor:
    """Follow one trial through its restarts, restarting it itself when it claims first."""

    locks_dir: Path
    policy: WatchdogPolicy
    stop_grace: float = 10.0
    successor_wait: float = 60.0  # how long past the backoff another supervisor may take
    on_give_up: GiveUpCallback | None = None

    def follow(
        self,
        client: Any,
        container: Any,
        log_path: Path,
        *,
        timeout: float,
        started: float,
        on_line: procgroup.LineSink | None = None,
        stop_event: threading.Event | None = None,
    ) -> TrialEnd:
        """Follow ``container`` (its log streamed to ``log_path`` and ``on_line``) and its
        replacements until one succeeds, restarts run out, one runs past ``timeout`` seconds,
        or ``stop_event`` is set. ``started``: when the trial started (``time.monotonic``).
        Interrupted (Ctrl-C, SIGTERM), it stops the container before going away."""
        current = _Current(container, log_path)
        try:
            return self._follow_trial(
                client, current, timeout, on_line, started=started, stop_event=stop_event
            )
        except BaseException:
            self.abandon(current.container, current.log_path.parent)
            raise

    def _follow_trial(
        self,
        client: Any,
        current: _Current,
        timeout: float,
        on_line: procgroup.LineSink | None,
        *,
        started: float,
        stop_event: threading.Event | None,
    ) -> TrialEnd:
        while True:
            container = current.container
            restarts = int(container.labels.get(containers.LABEL_RESTARTS, "0"))
            followed = self._follow(container, current.log_path, on_line, timeout, stop_event)
            info = followed.info
            elapsed = time.monotonic() - started
            if followed.end == "stopped":
                return self._stop_for_good(container, current.log_path.parent, elapsed, restarts)
            if followed.end == "timeout":
                claim(self.locks_dir, container.id)  # nobody restarts what timed out
                log.warning("container %s timed out after %.0f s", container.name, timeout)
                containers.stop(container, self.stop_grace)
                last, tail = self._finish(container, current.log_path.parent, reason="timed out")
                return TrialEnd(last or info, elapsed, tail, timed_out=True, restarts=restarts)
            if followed.end == "exited" and info is not None and info.exit_code == 0:
                last, tail = None, "\n".join(followed.tail)
                if claim(self.locks_dir, container.id):  # else a watchdog collected it
                    last, tail = self._finish(container, current.log_path.parent, reason="finished")
                return TrialEnd(last or info, time.monotonic() - started, tail, restarts=restarts)

            handled = (
                None if info is None else self._handle_failure(client, container, info, stop_event)
            )
            if handled is _STOPPED:  # stopped while waiting out the backoff
                return self._stop_for_good(
                    container, current.log_path.parent, time.monotonic() - started, restarts
                )
            if handled is not None and handled.kind is ActionKind.GIVE_UP:
                return TrialEnd(
                    handled.info,
                    time.monotonic() - started,
                    handled.log_tail or "\n".join(followed.tail),
                    error=handled.reason,
                    restarts=restarts,
                )
            if handled is not None:
                successor = handled.replacement
            else:  # another supervisor claimed it: follow what it does
                successor, why = self._await_successor(client, container.labels, info)
                if successor is None:
                    tail = "\n".join(followed.tail)
                    return TrialEnd(
                        info, time.monotonic() - started, tail, error=why, restarts=restarts
                    )
            labels = successor.labels
            folder = Path(labels.get(containers.LABEL_ATTEMPT_DIR) or current.log_path.parent)
            current.container = successor
            current.log_path = folder / (
                labels.get(containers.LABEL_LOG_NAME) or containers.DEFAULT_LOG_NAME
            )
            if on_line is not None:
                on_line(
                    f"[trainchain] restarted as attempt {labels.get(containers.LABEL_ATTEMPT)} "
                    f"(container {successor.name}), resuming from the checkpoint"
                )

    def _stop_for_good(
        self, container: Any, fallback_dir: Path, elapsed: float, restarts: int
    ) -> TrialEnd:
        """Stopped from outside (a pruned trial): claim the container first so neither this
        executor nor a watchdog restarts it, stop it with its grace, keep its log and exit
        state, remove it."""
        if not claim(self.locks_dir, container.id):
            log.warning(
                "container %s is being handled by another supervisor; stopping it anyway",
                container.name,
            )
        log.info("container %s: stopped by trainchain (pruned)", container.name)
        containers.stop(container, self.stop_grace)
        last, tail = self._finish(container, fallback_dir, reason="stopped by trainchain (pruned)")
        return TrialEnd(last, elapsed, tail, restarts=restarts, stopped=True)

    def _follow(
        self,
        container: Any,
        log_path: Path,
        on_line: procgroup.LineSink | None,
        timeout: float,
        stop_event: threading.Event | None = None,
    ) -> _Followed:
        tail: collections.deque[str] = collections.deque(maxlen=containers.TAIL_LINES)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        pump = threading.Thread(
            target=containers.stream_log, args=(container, log_path, tail, on_line), daemon=True
        )
        deadline = time.monotonic() + timeout
        policy = effective_policy(container.labels, self.policy)
        docker = containers.docker_sdk()

        def ended(end: str, info: containers.ContainerInfo | None) -> _Followed:
            if pump.is_alive():
                pump.join(timeout=10)
            return _Followed(end, info, tail)

        while True:
            try:
                info = containers.inspect(container)
            except docker.errors.NotFound:
                return ended("gone", None)
            if not pump.is_alive() and info.status != "created":  # a log of a started container
                with contextlib.suppress(RuntimeError):  # already started once
                    pump.start()
            if info.status in {"exited", "dead"}:
                return ended("exited", info)
            if stop_event is not None and stop_event.is_set():
                return _Followed("stopped", info, tail)
            if info.status == "running" and policy.heartbeat_limit is not None:
                action = decide(state_of(info), time.time(), policy)
                if action.kind is not ActionKind.LEAVE:
                    log.warning("container %s: %s", container.name, action.reason)
                    return _Followed("hung", info, tail)
            if time.monotonic() >= deadline:
                return _Followed("timeout", info, tail)
            if stop_event is not None:
                stop_event.wait(POLL_S)
            else:
                time.sleep(POLL_S)

    def _handle_failure(
        self,
        client: Any,
        container: Any,
        info: containers.ContainerInfo,
        stop_event: threading.Event | None = None,
    ) -> Any:
        """Claim and restart (after the backoff) or give up; None when another supervisor has
        it; ``_STOPPED`` when ``stop_event`` is set during the backoff (nothing restarted)."""
        docker = containers.docker_sdk()
        policy = effective_policy(info.labels, self.policy)
        while True:
            action = decide(state_of(info), time.time(), policy)
            if action.kind is ActionKind.LEAVE:  # pragma: no cover - a failure was seen
                return None
            if stop_event is not None and stop_event.is_set():
                return _STOPPED
            if action.delay > 0:
                time.sleep(min(action.delay, POLL_S))
                try:
                    info = containers.inspect(container)
                except docker.errors.NotFound:
                    return None
                continue
            return handle(
                client,
                container,
                action,
                locks_dir=self.locks_dir,
                stop_grace=self.stop_grace,
                on_give_up=self.on_give_up,
            )

    def _await_successor(
        self, client: Any, labels: Mapping[str, str], info: containers.ContainerInfo | None
    ) -> tuple[Any | None, str]:
        """The container another supervisor started for the next attempt, or why there is none."""
        attempt = int(labels.get(containers.LABEL_ATTEMPT, "1")) + 1
        filters = {
            "label": [
                f"{containers.LABEL_RUN}={labels.get(containers.LABEL_RUN, '')}",
                f"{containers.LABEL_TRIAL}={labels.get(containers.LABEL_TRIAL, '')}",
                f"{containers.LABEL_ATTEMPT}={attempt}",
            ]
        }
        folder = (
            Path(labels[containers.LABEL_ATTEMPT_DIR])
            if labels.get(containers.LABEL_ATTEMPT_DIR)
            else None
        )
        deadline = time.monotonic() + self.policy.backoff_cap + self.successor_wait
        while time.monotonic() < deadline:
            found = client.containers.list(all=True, filters=filters, ignore_removed=True)
            if found:
                return found[0], ""
            if folder is not None and (folder / GAVE_UP_FILE).exists():
                with contextlib.suppress(OSError, ValueError):
                    record = json.loads((folder / GAVE_UP_FILE).read_text())
                    return None, str(record.get("reason", "the watchdog gave up"))
                return None, "the watchdog gave up"
            time.sleep(POLL_S)
        what = info.name if info is not None else labels.get(containers.LABEL_ATTEMPT_DIR, "?")
        return None, (
            f"container {what} was taken over by another supervisor and no attempt {attempt} "
            f"appeared within {self.policy.backoff_cap + self.successor_wait:.0f} s"
        )

    def _finish(
        self, container: Any, fallback_dir: Path, *, reason: str
    ) -> tuple[containers.ContainerInfo | None, str]:
        """Keep the log and exit state, then remove the container; return its state and tail."""
        docker = containers.docker_sdk()
        try:
            info = containers.inspect(container)
        except docker.errors.NotFound:
            return None, ""
        _, tail = containers.save_record(
            container, info, info.attempt_dir or fallback_dir, reason=reason
        )
        containers.remove(container)
        return info, tail

    def abandon(self, container: Any, fallback_dir: Path) -> None:
        """trainchain is going away: claim the container (no restarts), stop, keep, remove."""
        try:
            claim(self.locks_dir, container.id)
            containers.stop(container, min(self.stop_grace, 5.0))
            self._finish(container, fallback_dir, reason="trainchain was interrupted")
        except Exception as err:
            log.warning("could not stop container %s cleanly: %s", container.id[:12], err)
