"""What every executor takes and returns."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trainchain.adapters.procgroup import LineSink  # the sink of every log pump
from trainchain.contract import task

# the thread pools of the numeric libraries a trial may use (OpenMP, OpenBLAS, MKL,
# TensorFlow): set in trainchain's environment (``trainchain.chain.workers.share_cores``),
# they reach its trials, in a container too
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
)


@dataclass(frozen=True)
class AttemptSpec:
    """One attempt of one trial: where everything is, and the limits."""

    repo_root: Path
    entrypoint: str
    params_file: Path
    data_dir: Path
    data_options_file: Path
    checkpoint_dir: Path
    output_dir: Path
    report_file: Path
    log_file: Path
    trial: int
    attempt: int
    timeout: float
    image: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # the policy the script applies itself (TRAINCHAIN_EARLY_STOPPING); None: disabled
    early_stopping: dict[str, Any] | None = None
    # the validation plan (TRAINCHAIN_VALIDATION): the study's folds, or a confirmation's
    validation: dict[str, Any] | None = None

    @classmethod
    def in_trial_dir(
        cls,
        trial_dir: Path,
        attempt: int,
        *,
        params: Mapping[str, Any],
        data_options: Mapping[str, Any],
        **fields: Any,
    ) -> AttemptSpec:
        """Attempt ``attempt`` laid out under ``trial_dir``: a fresh ``attempt-N/`` holding
        params.json, data_options.json, output/ and train.log; the trial's report.jsonl
        beside them (it spans attempts). ``fields`` are the other fields of the spec."""
        attempt_dir = trial_dir / f"attempt-{attempt}"
        if attempt_dir.exists():
            shutil.rmtree(attempt_dir)  # a half-written attempt from a killed run
        (attempt_dir / "output").mkdir(parents=True)
        params_file = attempt_dir / "params.json"
        params_file.write_text(json.dumps(dict(params), indent=2), encoding="utf-8")
        options_file = attempt_dir / "data_options.json"
        options_file.write_text(json.dumps(dict(data_options), indent=2), encoding="utf-8")
        return cls(
            params_file=params_file,
            data_options_file=options_file,
            output_dir=attempt_dir / "output",
            report_file=trial_dir / "report.jsonl",
            log_file=attempt_dir / "train.log",
            attempt=attempt,
            **fields,
        )

    def json_env(self) -> dict[str, str]:
        """``TRAINCHAIN_EARLY_STOPPING`` and ``TRAINCHAIN_VALIDATION`` (JSON strings, the same
        on the host and in a container), each only when there is one."""
        env = {}
        if self.early_stopping is not None:
            env[task.ENV_EARLY_STOPPING] = json.dumps(self.early_stopping, sort_keys=True)
        if self.validation is not None:
            env[task.ENV_VALIDATION] = json.dumps(self.validation, sort_keys=True)
        return env

    def contract_env(self) -> dict[str, str]:
        """The environment of the training contract, with host paths."""
        return self.json_env() | {
            task.ENV_PARAMS: str(self.params_file),
            task.ENV_DATA_DIR: str(self.data_dir),
            task.ENV_DATA_OPTIONS: str(self.data_options_file),
            task.ENV_CHECKPOINT_DIR: str(self.checkpoint_dir),
            task.ENV_OUTPUT_DIR: str(self.output_dir),
            task.ENV_REPORT: str(self.report_file),
            task.ENV_TRIAL: str(self.trial),
            task.ENV_ATTEMPT: str(self.attempt),
        }


@dataclass(frozen=True)
class AttemptResult:
    exit_code: int | None
    duration_s: float
    log_tail: str
    timed_out: bool = False
    oom_killed: bool = False
    error: str | None = None  # the executor's own failure (could not start, ...)
    restarts: int = 0  # restarts inside this result (an executor that supervises them)
    stopped: bool = False  # ended from outside through the ``stop`` event (a pruned trial)

    @property
    def ok(self) -> bool:
        return (
            self.exit_code == 0 and not self.timed_out and not self.stopped and self.error is None
        )

    def describe(self) -> str:
        if self.stopped:
            return "stopped by trainchain (pruned)"
        if self.error:
            return self.error
        if self.timed_out:
            return f"timed out after {self.duration_s:.0f} s"
        if self.oom_killed:
            return "killed: out of memory"
        if self.exit_code is not None and self.exit_code < 0:
            return f"killed by signal {-self.exit_code}"
        return f"exited with status {self.exit_code}"


class Executor(Protocol):
    name: str
    # True: run() restarts failed attempts itself and returns one result per trial
    supervises_restarts: bool

    def run(
        self,
        spec: AttemptSpec,
        on_line: LineSink | None = None,
        stop: threading.Event | None = None,
    ) -> AttemptResult:
        """Run the attempt to its end; stream each log line to ``on_line``.

        When ``stop`` is set, end the attempt promptly (no restart) and return a result
        with ``stopped=True``."""
        ...
