"""More workers of one chain on this host: `trainchain tune ... --join CHAIN` processes.

The leader starts them once its study is open; each runs trials of the same study (the
budget, pruning and the goal are the study's) and stops by itself once the chain is
concluded or its budget taken. Their lines are relayed to the leader's display with a
prefix and kept in a log file each; they die with the leader (a leader killed leaves
their trials to be retried when the chain is resumed).
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from trainchain.adapters.procgroup import pump, spawn, stop_group
from trainchain.core.errors import ConfigError
from trainchain.executors._base import THREAD_VARIABLES

log = logging.getLogger(__name__)

MAX_WORKERS = 64  # per host; a study's storage bounds the whole (see README, Scaling out)
# seconds the leader waits for its workers to stop by themselves after concluding the
# chain (they look at it every few seconds), before ending them
STOP_WAIT_S = 30.0


def share_cores(workers: int) -> int | None:
    """With ``workers`` > 1 on this host, give each worker's trials its share of the cores
    (at least 1) through the thread variables, unless the user set them: set in this
    process, they reach its trials (in containers too) and the workers it starts. The
    share, or None.

    By default each numeric library's pool takes every core, so N workers' trials would run
    N times as many threads as cores (OpenBLAS's idle threads spin: on the EEG example's
    cross-validation, 2 threads took 30% more CPU than 1 for the same wall time)."""
    if workers <= 1:
        return None
    share = max(1, len(os.sched_getaffinity(0)) // workers)
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(share))
    return share


def trainchain_command() -> list[str]:
    """This Python running trainchain's CLI (the same installation as the leader's)."""
    return [sys.executable, "-m", "trainchain"]


class LocalWorkers:
    """``count`` worker processes running ``argv``; ``on_line`` gets each of their lines
    as ``[worker K] line``; logs go to ``log_dir/worker-K.log``."""

    def __init__(
        self,
        argv: Sequence[str],
        count: int,
        *,
        on_line: Callable[[str], None],
        log_dir: Path,
    ) -> None:
        if not 0 <= count < MAX_WORKERS:
            raise ConfigError(
                f"--workers {count + 1} is out of range: at most {MAX_WORKERS} on one host",
                hint="more workers go on more machines: `trainchain tune ... --join CHAIN`",
            )
        self.argv = list(argv)
        self.count = count
        self.on_line = on_line
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[Any]] = []
        self._pumps: list[threading.Thread] = []
        self._logs: list[IO[str]] = []

    def start(self) -> None:
        if not self.count:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for k in range(2, self.count + 2):
            path = self.log_dir / f"worker-{k}.log"
            log_file = path.open("a", encoding="utf-8")
            self._logs.append(log_file)
            proc = spawn(self.argv, text=True, die_with_parent=True)
            self.procs.append(proc)
            if proc.stdout is None:  # spawn pipes it; never None
                raise RuntimeError("a worker was started without its output pipe")
            prefix = f"  [worker {k}] "
            thread = threading.Thread(
                target=pump,
                args=(proc.stdout,),
                kwargs={
                    "log_file": log_file,
                    "tail": collections.deque(maxlen=50),
                    "on_line": lambda line, p=prefix: self.on_line(p + line.strip()),
                    "source": f"worker {k}",
                },
                name=f"worker-{k}-pump",
                daemon=True,
            )
            thread.start()
            self._pumps.append(thread)
            log.info("started worker %d (pid %d), its log %s", k, proc.pid, path)
        self.on_line(
            f"  started {self.count} more worker(s) on this host; their logs: "
            f"{self.log_dir}/worker-*.log"
        )

    def close(self, wait: float = STOP_WAIT_S) -> None:
        """Wait up to ``wait`` s for the workers to stop by themselves, then end them."""
        deadline = time.monotonic() + wait
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop within %.0f s: ending it", proc.pid, wait)
                stop_group(proc)
        for thread in self._pumps:
            thread.join(timeout=5)
        for log_file in self._logs:
            log_file.close()
        for k, proc in enumerate(self.procs, start=2):
            if proc.returncode not in (0, None):
                self.on_line(f"  [worker {k}] exited with status {proc.returncode}")
