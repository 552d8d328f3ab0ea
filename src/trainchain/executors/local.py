"""Run an attempt as a subprocess of this Python (machines without a Docker engine)."""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
import threading
import time

from trainchain.adapters import procgroup
from trainchain.adapters.procgroup import LineSink
from trainchain.contract import task
from trainchain.executors._base import AttemptResult, AttemptSpec

log = logging.getLogger(__name__)

TAIL_LINES = 30
POLL_S = 0.2  # how often the attempt is checked for its end, its timeout and a stop
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long


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
            proc = procgroup.spawn(cmd, cwd=spec.repo_root, env=env, die_with_parent=True)
        except OSError as err:
            return AttemptResult(None, 0.0, "", error=f"could not start {cmd[0]}: {err}")
        if proc.stdout is None:  # pragma: no cover - stdout=PIPE always gives a stream
            raise RuntimeError("subprocess has no stdout pipe")
        with spec.log_file.open("a", encoding="utf-8") as log_file:
            reader = threading.Thread(
                target=procgroup.pump,
                args=(procgroup.decoded_lines(proc.stdout),),
                kwargs={
                    "log_file": log_file,
                    "tail": tail,
                    "on_line": on_line,
                    "source": f"trial {spec.trial} attempt {spec.attempt}",
                },
                daemon=True,
            )
            reader.start()
            try:
                timed_out, stopped = _wait(proc, spec, start, stop)
            except BaseException:  # Ctrl-C or SIGTERM of trainchain: never leave it running
                procgroup.stop_group(proc, STOP_GRACE_S)
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
            procgroup.stop_group(proc, STOP_GRACE_S)
            return False, True
        if time.monotonic() >= deadline:
            log.warning(
                "trial %s attempt %s: timed out after %.0f s, stopping it",
                spec.trial,
                spec.attempt,
                spec.timeout,
            )
            procgroup.stop_group(proc, STOP_GRACE_S)
            return True, False
