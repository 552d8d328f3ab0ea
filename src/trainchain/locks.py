"""Cross-process exclusion with ``flock``: wait a bounded time, then say who is in the way."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

POLL_S = 0.2


@contextmanager
def flock_within(
    path: Path, wait_s: float, busy: Callable[[], Exception], poll_s: float = POLL_S
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block; wait at most ``wait_s`` seconds
    (0: try once), then raise ``busy()``. The lock goes with the process, so a killed holder
    never leaves it stuck."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    with path.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise busy() from None
                time.sleep(min(poll_s, left))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
