"""Job 6: find training containers that died or hung and restart them from their last checkpoint.

Three layers, each usable alone:

- :func:`decide` is a pure function of a container's state, the time and the
  policy: leave it, restart it (after a bounded exponential backoff; a hung one
  is stopped first), give up past ``max_restarts``, or collect a finished one
  that nobody collected (its log and state kept, the container removed).
- :func:`claim` and :func:`handle` carry out one decision on one container. The
  claim (``<locks dir>/<container id>.claim``, created with ``O_CREAT|O_EXCL``)
  makes the action exclusive: two watchdogs, or a watchdog and the executor
  following its own trial, never both restart the same container. A restart is
  a new container of the same image with the same mounts (so the same
  checkpoint folder) and environment, ``TRAINCHAIN_ATTEMPT`` + 1; the dead one's
  log and exit state are kept in its attempt folder before it is removed.
- :class:`Watchdog` scans the containers labelled ``trainchain.managed=true``
  on every Docker ``die``/``oom`` event and on an interval.

It never touches a container without trainchain labels.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainchain.executors import docker as dockerx

if TYPE_CHECKING:
    from trainchain import config

log = logging.getLogger(__name__)

GAVE_UP_FILE = "gave_up.json"
CLAIM_SUFFIX = ".claim"
CLAIM_MAX_AGE_S = 24 * 3600.0
EVENT_WINDOW_S = 2.0  # the events stream is re-opened this often, so stopping is prompt

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
    def from_config(cls, config: config.WatchdogPolicy) -> WatchdogPolicy:
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
    return labels.get(dockerx.LABEL_MANAGED) == "true" and dockerx.LABEL_TRIAL in labels


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
        if dockerx.LABEL_MAX_RESTARTS in labels:
            changes["max_restarts"] = int(labels[dockerx.LABEL_MAX_RESTARTS])
    raw = labels.get(dockerx.LABEL_HEARTBEAT)
    if raw is not None and raw != "none":  # "none": the supervisor's own limit
        with contextlib.suppress(ValueError):
            changes["heartbeat_limit"] = float(raw)
    base, _, cap = labels.get(dockerx.LABEL_BACKOFF, "").partition("/")
    with contextlib.suppress(ValueError):
        changes["backoff_base"], changes["backoff_cap"] = float(base), float(cap)
    try:
        return replace(default, **changes)
    except ValueError as err:
        log.warning("ignoring the container's own watchdog limits: %s", err)
        return default


def state_of(info: dockerx.ContainerInfo) -> ContainerState:
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
    info: dockerx.ContainerInfo
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
        info = dockerx.inspect(container)
        if action.stop_first and info.status == "running":
            log.warning("stopping container %s: %s", info.name, action.reason)
            dockerx.stop(container, stop_grace)
            info = dockerx.inspect(container)
        folder = info.attempt_dir or locks_dir / "records" / info.id
        _, tail = dockerx.save_record(
            container, info, folder, action=action.kind.value, reason=action.reason
        )
    except Exception as err:
        if dockerx.is_not_found(err):  # removed meanwhile: nothing left to act on
            return None
        release(locks_dir, container.id)  # nothing was done: the next scan may try again
        raise
    if action.kind is ActionKind.COLLECT:
        dockerx.remove(container)
        log.info("collected container %s: %s", info.name, action.reason)
        return Handled(ActionKind.COLLECT, action.reason, info, None, tail)
    if action.kind is ActionKind.RESTART:
        next_dir = folder.parent / f"attempt-{info.attempt + 1}"
        replacement = None
        try:
            replacement = dockerx.create_replacement(client, info.attrs, attempt_dir=next_dir)
            replacement.start()
        except Exception as err:
            if replacement is not None:
                dockerx.remove(replacement)
            reason = f"{action.reason}; the restart failed: {err}"
            log.error("container %s: %s", info.name, reason)
            return _give_up(container, info, folder, reason, tail=tail, on_give_up=on_give_up)
        dockerx.remove(container)
        log.warning(
            "trial %s: container %s %s; restarted as attempt %d (container %s)",
            info.labels.get(dockerx.LABEL_TRIAL),
            info.name,
            action.reason,
            info.attempt + 1,
            replacement.name,
        )
        return Handled(ActionKind.RESTART, action.reason, info, replacement, tail)
    return _give_up(container, info, folder, action.reason, tail=tail, on_give_up=on_give_up)


def _give_up(
    container: Any,
    info: dockerx.ContainerInfo,
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
    dockerx.save_json(folder / GAVE_UP_FILE, record)
    dockerx.remove(container)
    log.error("trial %s: %s", info.labels.get(dockerx.LABEL_TRIAL), reason)
    if on_give_up is not None:
        try:
            on_give_up(dict(info.labels), reason)
        except Exception:
            log.exception("the give-up callback failed for container %s", info.name)
    return Handled(ActionKind.GIVE_UP, reason, info, None, tail)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return float("inf")


# --- the loop -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanEntry:
    """One container a scan found something to do about."""

    container_id: str
    name: str
    action: Action
    handled: Handled | None  # None: delayed (backoff) or claimed by another supervisor


class Watchdog:
    """Supervise trainchain's containers: scan on Docker events and on an interval."""

    def __init__(
        self,
        client: Any,
        *,
        locks_dir: Path,
        policy: WatchdogPolicy | None = None,
        on_give_up: GiveUpCallback | None = None,
        selector: Mapping[str, str] | None = None,
        stop_grace: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.locks_dir = Path(locks_dir)
        self.policy = policy or WatchdogPolicy()
        self.on_give_up = on_give_up
        self.selector = dict(selector or {})  # extra labels a container must have
        self.stop_grace = stop_grace
        self.clock = clock
        self._next_due: float | None = None  # the earliest backoff that ends

    def _filters(self) -> dict[str, list[str]]:
        labels = [f"{dockerx.LABEL_MANAGED}=true"]
        labels += [f"{k}={v}" for k, v in sorted(self.selector.items())]
        return {"label": labels}

    def scan_once(self) -> list[ScanEntry]:
        """Decide about every managed container once, and act where it is time to."""
        entries: list[ScanEntry] = []
        self._next_due = None
        containers = self.client.containers.list(
            all=True, filters=self._filters(), ignore_removed=True
        )
        for container in containers:
            try:
                entry = self._scan_one(container)
            except Exception:  # one bad container must not stop the supervision of the others
                log.exception("watchdog: could not handle container %s", container.id[:12])
                continue
            if entry is not None:
                entries.append(entry)
        self._prune_claims()
        return entries

    def _scan_one(self, container: Any) -> ScanEntry | None:
        info = dockerx.info_from_attrs(container.attrs)
        now = self.clock()
        action = decide(state_of(info), now, effective_policy(info.labels, self.policy))
        if action.kind is ActionKind.LEAVE:
            return None
        if action.delay > 0:
            due = now + action.delay
            self._next_due = due if self._next_due is None else min(self._next_due, due)
            log.info("container %s: %s; restart in %.0f s", info.name, action.reason, action.delay)
            return ScanEntry(info.id, info.name, action, None)
        handled = handle(
            self.client,
            container,
            action,
            locks_dir=self.locks_dir,
            stop_grace=self.stop_grace,
            on_give_up=self.on_give_up,
        )
        return ScanEntry(info.id, info.name, action, handled)

    def _prune_claims(self) -> None:
        """Forget claims older than a day whose container is gone (ids are never reused)."""
        if not self.locks_dir.is_dir():
            return
        cutoff = time.time() - CLAIM_MAX_AGE_S
        old = [p for p in self.locks_dir.glob(f"*{CLAIM_SUFFIX}") if _mtime(p) < cutoff]
        if not old:
            return
        alive = {
            c.id
            for c in self.client.containers.list(
                all=True, sparse=True, filters={"label": f"{dockerx.LABEL_MANAGED}=true"}
            )
        }
        for path in old:
            if path.name.removesuffix(CLAIM_SUFFIX) not in alive:
                path.unlink(missing_ok=True)

    def run(self, interval: float, stop_event: threading.Event) -> None:
        """Scan on each ``die``/``oom`` event and every ``interval`` s until ``stop_event``."""
        if interval <= 0:
            raise ValueError(f"interval must be positive seconds but got {interval}")
        events: queue.Queue[str] = queue.Queue()
        watcher = threading.Thread(
            target=self._watch_events,
            args=(events, stop_event),
            name="watchdog-events",
            daemon=True,
        )
        watcher.start()
        next_scan = time.monotonic()
        try:
            while not stop_event.is_set():
                if time.monotonic() >= next_scan:
                    try:
                        self.scan_once()
                    except Exception:
                        log.exception("watchdog: the scan failed; trying again in %.0f s", interval)
                    next_scan = time.monotonic() + interval
                    if self._next_due is not None:
                        next_scan = min(next_scan, time.monotonic() + self._next_due - self.clock())
                wait = max(0.05, min(next_scan - time.monotonic(), 1.0))
                try:
                    container_id = events.get(timeout=wait)
                except queue.Empty:
                    continue
                log.debug("watchdog: event for container %s", container_id[:12])
                while not events.empty():  # one scan for a burst of events
                    events.get_nowait()
                next_scan = time.monotonic()
        finally:
            stop_event.set()
            watcher.join(timeout=EVENT_WINDOW_S + 5)

    def _watch_events(self, events: queue.Queue[str], stop_event: threading.Event) -> None:
        filters = {"type": "container", "event": ["die", "oom"], "label": self._filters()["label"]}
        since = int(time.time())
        while not stop_event.is_set():
            until = since + int(EVENT_WINDOW_S)
            try:
                for event in self.client.events(
                    since=since, until=until, filters=filters, decode=True
                ):
                    events.put(str(event.get("id", "")))
            except Exception as err:
                log.warning("watchdog: the Docker event stream failed (%s); scans go on", err)
                stop_event.wait(1.0)
                since = max(since, int(time.time()) - 1)  # the periodic scan covers any gap
                continue
            since = until
