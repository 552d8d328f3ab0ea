"""Cross-process exclusion with ``flock`` (through ``filelock``): wait a bounded time, then say
who is in the way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

POLL_S = 0.2


@contextmanager
def flock_within(
    path: Path, wait_s: float, busy: Callable[[], Exception], poll_s: float = POLL_S
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block; wait at most ``wait_s`` seconds
    (0 or less: try once), then raise ``busy()``. The lock goes with the process, so a killed
    holder never leaves it stuck. The file stays in place after the block, so a plain
    ``flock`` on the same path (``hooks.try_lock``) always contends on the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # filelock waits forever on a negative timeout: an elapsed deadline means one try
    lock = filelock.FileLock(
        path, timeout=max(0.0, wait_s), poll_interval=poll_s, preserve_lock_file=True
    )
    try:
        lock.acquire()
    except filelock.Timeout:
        raise busy() from None
    try:
        yield
    finally:
        lock.release()
