"""Cross-process exclusion with ``flock`` (through ``filelock``): wait a bounded time, then say
who is in the way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

POLL_S = 0.2


@contextmanager
def flock_within(
    path: Path, wait_s: float, busy: Callable[[], Exception], poll_s: float = POLL_S
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block; wait at most ``wait_s`` seconds
    (0 or less: try once), then raise ``busy()``. The lock goes with the process, so a killed
    holder never leaves it stuck. The file stays in place after the block, so a plain
    ``flock`` on the same path (``hooks.try_lock``) always contends on the same file."""
    import filelock  # here: the serve image has no filelock, and locks only on SQLite

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


# seconds a process waits for another one that is creating or upgrading a SQLite store
SQLITE_OPEN_WAIT_S = 120.0


def sqlite_opening(url: str) -> AbstractContextManager[None]:
    """Open a ``sqlite:///`` store (MLflow's, Optuna's) one process at a time: both create
    their tables (and MLflow migrates them) when they open a new file, and two processes
    doing so at once fail ("table ... already exists"). Other URLs: no lock (their server
    serialises)."""
    if not url.startswith("sqlite:///"):
        return nullcontext()
    path = Path(url.removeprefix("sqlite:///"))
    if str(path) in {"", ":memory:"}:
        return nullcontext()
    from trainchain.core.errors import StoreError
    from trainchain.core.redaction import redact

    return flock_within(
        path.with_name(path.name + ".open.lock"),
        SQLITE_OPEN_WAIT_S,
        lambda: StoreError(
            f"another process kept opening {redact(url)} for {SQLITE_OPEN_WAIT_S:.0f} s",
            hint="see which trainchain process holds it (fuser on the .open.lock file beside "
            "the database)",
        ),
    )
