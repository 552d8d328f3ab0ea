"""Job 6: find training containers that died or hung and restart them from their last checkpoint.

:class:`Watchdog` scans the containers labelled ``trainchain.managed=true`` on every
Docker ``die``/``oom`` event and on an interval, and acts on each through
:mod:`trainchain.supervise.restarts` (the decision, the claim, the restart or give-up), the same
code the Docker executor uses for its own trial. It never touches a container without
trainchain labels.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainchain.adapters import containers
from trainchain.supervise.restarts import (
    CLAIM_SUFFIX,
    Action,
    ActionKind,
    GiveUpCallback,
    Handled,
    WatchdogPolicy,
    decide,
    effective_policy,
    handle,
    state_of,
)

log = logging.getLogger(__name__)

CLAIM_MAX_AGE_S = 24 * 3600.0
EVENT_WINDOW_S = 2.0  # the events stream is re-opened this often, so stopping is prompt


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
        labels = [f"{containers.LABEL_MANAGED}=true"]
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
        info = containers.info_from_attrs(container.attrs)
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
                all=True, sparse=True, filters={"label": f"{containers.LABEL_MANAGED}=true"}
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
