"""One background thread per job kind (shadow predictions, capture writes), with a bounded
queue: a request hands work over and never waits for it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class BackgroundPool:
    """One background thread named ``name``, with at most ``size`` jobs waiting."""

    def __init__(self, size: int, name: str) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"trainchain-{name}")
        self._slots = threading.BoundedSemaphore(size)

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False (and nothing queued) when ``size`` jobs are already waiting."""
        if not self._slots.acquire(blocking=False):
            return False
        try:
            self._executor.submit(self._run, job)
        except RuntimeError:  # shut down
            self._slots.release()
            return False
        return True

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:
            log.exception("%s job failed", self.name)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Finish the running job, drop the waiting ones."""
        self._executor.shutdown(wait=True, cancel_futures=True)
