"""Run an attempt as a subprocess of this Python (machines without a Docker engine)."""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from trainchain import task
from trainchain.executors._base import AttemptResult, AttemptSpec, LineSink

log = logging.getLogger(__name__)

TAIL_LINES = 30
POLL_S = 0.2  # how often the attempt is checked for its end, its timeout and a stop
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """The child gets SIGKILL when trainchain dies, so no orphan keeps training."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class LocalExecutor:
    name = "local"
    supervises_restarts = False

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def run(
        self,
        spec: AttemptSpec,
        on_line: LineSink | None = None,
        stop: threading.Event | None = None,
    ) -> AttemptResult:
        env = dict(os.environ)
        for inherited in (task.ENV_EARLY_STOPPING, task.ENV_VALIDATION):
            env.pop(inherited, None)  # only this attempt's policy and plan, or none
        env.update(spec.contract_env())
        env.setdefault("MNE_LOGGING_LEVEL", "ERROR")
        env["PYTHONUNBUFFERED"] = "1"
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [self.python, "-u", str(spec.repo_root / spec.entrypoint)]
        start = time.monotonic()
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=spec.repo_root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        except OSError as err:
            return AttemptResult(None, 0.0, "", error=f"could not start {cmd[0]}: {err}")
        if proc.stdout is None:  # pragma: no cover - stdout=PIPE always gives a stream
            raise RuntimeError("subprocess has no stdout pipe")
        with spec.log_file.open("a", encoding="utf-8") as log_file:
            reader = threading.Thread(
                target=_pump, args=(proc.stdout, log_file, tail, on_line), daemon=True
            )
            reader.start()
            try:
                timed_out, stopped = _wait(proc, spec, start, stop)
            except BaseException:
                _kill_group(proc)  # Ctrl-C or SIGTERM of trainchain: never leave it running
                raise
            reader.join(timeout=10)
            proc.stdout.close()
        return AttemptResult(
            exit_code=proc.returncode,
            duration_s=time.monotonic() - start,
            log_tail="\n".join(tail),
            timed_out=timed_out,
            stopped=stopped,
        )


def _wait(
    proc: subprocess.Popen[bytes],
    spec: AttemptSpec,
    start: float,
    stop: threading.Event | None,
) -> tuple[bool, bool]:
    """Wait for the process to end, its timeout, or ``stop``; return (timed out, stopped)."""
    deadline = start + spec.timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            proc.wait(timeout=max(0.0, min(POLL_S, remaining)))
            return False, False
        except subprocess.TimeoutExpired:
            pass
        if stop is not None and stop.is_set():
            log.info("trial %s attempt %s: stopped by trainchain", spec.trial, spec.attempt)
            _kill_group(proc)
            return False, True
        if time.monotonic() >= deadline:
            log.warning(
                "trial %s attempt %s: timed out after %.0f s, stopping it",
                spec.trial,
                spec.attempt,
                spec.timeout,
            )
            _kill_group(proc)
            return True, False


def _pump(
    stream: IO[bytes],
    log_file: IO[str],
    tail: collections.deque[str],
    on_line: LineSink | None,
) -> None:
    for raw in stream:
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        log_file.write(line + "\n")
        log_file.flush()
        tail.append(line)
        if on_line is not None:
            on_line(line)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    except ProcessLookupError:
        pass
