"""Child processes in their own process group, and the one log pump.

:func:`spawn` starts a child in a new session (its own process group: no terminal to
prompt on, and Ctrl-C of trainchain does not reach it); :func:`stop_group` ends the
child with everything it started (SIGTERM, then SIGKILL after a grace). :func:`pump`
drains lines into a log file, a tail and a sink; it keeps draining whatever the sink
does, so a failing sink never leaves a child blocked on a full pipe. The local executor
pumps a pipe, the Docker executor a container's log stream, through the same pump.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

LineSink = Callable[[str], None]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """The child gets SIGKILL when trainchain dies, so no orphan keeps running."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def spawn(
    cmd: list[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdout: int = subprocess.PIPE,
    stderr: int = subprocess.STDOUT,
    text: bool = False,
    die_with_parent: bool = False,
) -> subprocess.Popen[Any]:
    """Start ``cmd`` in its own session (process group), stdin from /dev/null.

    ``text``: decode its output as UTF-8 (undecodable bytes replaced); ``die_with_parent``:
    it is killed when this process dies (Linux). Raises ``OSError`` when it cannot start."""
    preexec = _die_with_parent if die_with_parent and sys.platform.startswith("linux") else None
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        encoding="utf-8" if text else None,
        errors="replace" if text else None,
        start_new_session=True,
        preexec_fn=preexec,  # noqa: PLW1509 - only prctl, which is safe after fork
    )


def stop_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """End ``proc``'s process group: SIGTERM, then SIGKILL when it is still there after
    ``grace`` seconds (0: SIGKILL at once). Quiet when the group is already gone."""
    try:
        if grace > 0:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=max(grace, 5.0))


def decoded_lines(stream: Iterable[bytes]) -> Iterable[str]:
    """Lines of a byte stream read line by line (a pipe), decoded, without the newline."""
    for raw in stream:
        yield raw.decode("utf-8", errors="replace").rstrip("\n")


def pump(
    lines: Iterable[str],
    *,
    log_file: IO[str] | None,
    tail: collections.deque[str],
    on_line: LineSink | None,
    source: str,
) -> None:
    """Copy each line to ``log_file`` (flushed), ``tail`` and ``on_line`` until ``lines`` ends.

    A sink or log file that raises is reported once (with ``source``, what the lines come
    from) and the lines keep flowing: the producer is never left blocked on a full pipe.
    An error of the stream itself ends the pump quietly (its producer is gone)."""
    failed: set[str] = set()

    def once(what: str) -> None:
        if what not in failed:
            failed.add(what)
            log.exception("%s of %s failed; its lines keep being drained", what, source)

    try:
        for line in lines:
            tail.append(line)
            if log_file is not None and "the log file" not in failed:
                try:
                    log_file.write(line + "\n")
                    log_file.flush()
                except Exception:
                    once("the log file")
            if on_line is not None:
                try:
                    on_line(line)
                except Exception:
                    once("the log line sink")
    except Exception as err:  # the stream broke (a container removed under it)
        log.debug("the log stream of %s ended: %s", source, err)
