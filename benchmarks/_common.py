"""What the benchmarks share: the total cap on a run's waits, the machine's load, a free
port. Imported by the benchmark scripts, which run as `python benchmarks/NAME.py` (their
folder is then the first on the import path)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any


class OutOfTime(Exception):
    """A bounded wait ran out, or the total cap (--max-seconds) is reached."""


class Deadline:
    """The total cap; every wait takes the smaller of its own timeout and what is left."""

    def __init__(self, seconds: float, poll: float = 0.2) -> None:
        self.seconds = seconds
        self.poll = poll  # wait()'s polling interval
        self.end = time.monotonic() + seconds

    def limit(self, timeout: float) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise OutOfTime(f"the total cap of {self.seconds:.0f} s (--max-seconds) is reached")
        return min(timeout, left)

    def wait(self, check: Callable[[], Any], what: str, timeout: float) -> Any:
        """``check()``'s first true value, polled every ``poll`` s for at most ``timeout``."""
        limit = self.limit(timeout)
        end = time.monotonic() + limit
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() >= end:
                capped = " (the total cap, --max-seconds)" if limit < timeout else ""
                raise OutOfTime(f"waited {limit:.1f} s{capped} for {what}")
            time.sleep(self.poll)

    def sleep(self, seconds: float) -> None:
        time.sleep(self.limit(seconds))


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, or "?"."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
