"""One trial: run its attempts through an executor, then log what the script wrote.

The script never talks to the tracking store; this module does, on the host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainchain.adapters.tracking import MODEL_ARTIFACT, Tracker
from trainchain.contract import task
from trainchain.core import keys
from trainchain.core.config import LoadedConfig
from trainchain.core.settings import Settings
from trainchain.core.verdict import Estimate, read_estimate
from trainchain.executors import AttemptResult, AttemptSpec, Executor, LineSink

if TYPE_CHECKING:
    from trainchain.chain.context import Lineage, Prepared

log = logging.getLogger(__name__)

REPORT_POLL_S = 0.25  # how often the report file is read for new steps (pruning)

# (step, value of the goal's val metric) -> True to prune the trial now
ReportSink = Callable[[int, float], bool]


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    params: dict[str, Any]
    ok: bool
    metrics: dict[str, float]
    run_id: str
    attempts: tuple[AttemptResult, ...]
    duration_s: float
    error: str | None = None
    output_dir: Path | None = None
    pruned: bool = False  # stopped by trainchain because on_report said so (not a failure)
    pruned_step: int | None = None  # the step whose report decided it
    pruned_value: float | None = None  # the val metric at that step
    estimate: Estimate | None = None  # the goal metric with its per-fold scores
    stopped: bool = False  # stopped because the chain ended (``cancel``): neither pruned nor failed

    @property
    def log_tail(self) -> str:
        return self.attempts[-1].log_tail if self.attempts else ""


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one chain shares."""

    loaded: LoadedConfig
    settings: Settings
    tracker: Tracker
    executor: Executor
    lineage: Lineage
    chain_id: str
    experiment_id: str
    data_dir: Path
    val_metric: str
    parent_run_id: str | None = None


def read_report(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(row, dict):
            rows.append(row)
    return rows


class ReportWatcher:
    """Tail a trial's report file and pass each new step's val metric to ``on_report``.

    Rows may come from several attempts (a resumed attempt goes on after its
    checkpoint; one started over repeats steps): each step is passed once, in
    increasing order, and rows without a finite ``metric`` are skipped. When
    ``on_report`` returns True the trial is to be pruned: ``stop`` is set and
    nothing more is passed on. An exception in ``on_report`` is logged, and
    counts as "do not prune".
    """

    def __init__(
        self,
        path: Path,
        metric: str,
        on_report: ReportSink,
        stop: threading.Event,
        *,
        poll_s: float = REPORT_POLL_S,
    ) -> None:
        self.path = path
        self.metric = metric
        self.on_report = on_report
        self.stop = stop
        self.poll_s = poll_s
        self.last_step: int | None = None
        self.pruned_step: int | None = None
        self.pruned_value: float | None = None
        self._offset = 0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="report-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread, then pass on what the last poll had not seen yet."""
        self._done.set()
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            log.warning("the report watcher of %s did not stop within %.0f s", self.path, timeout)
            return
        self.poll()

    def _loop(self) -> None:
        while not self._done.is_set():
            self.poll()
            self._done.wait(self.poll_s)

    def poll(self) -> None:
        """Read the lines appended since the last poll (complete lines only)."""
        with self._lock:
            if self.pruned_step is not None:
                return
            try:
                with self.path.open("rb") as f:
                    f.seek(self._offset)
                    chunk = f.read()
            except OSError:
                return  # not written yet
            end = chunk.rfind(b"\n")
            if end < 0:
                return
            self._offset += end + 1
            for raw in chunk[: end + 1].splitlines():
                if self._take(raw):
                    return

    def _take(self, raw: bytes) -> bool:
        """Pass one line on; True when it pruned the trial."""
        parsed = _step_value(raw, self.metric)
        if parsed is None:
            return False
        step, value = parsed
        if self.last_step is not None and step <= self.last_step:
            return False  # seen already (an attempt that started over repeats steps)
        self.last_step = step
        try:
            prune = bool(self.on_report(step, value))
        except Exception:
            log.exception("on_report failed at step %d of %s; the trial goes on", step, self.path)
            return False
        if prune:
            self.pruned_step, self.pruned_value = step, value
            self.stop.set()
        return prune


def _step_value(raw: bytes, metric: str) -> tuple[int, float] | None:
    """``(step, metric)`` of one report line; None when either is missing or not finite."""
    try:
        row = json.loads(raw)
    except ValueError:
        return None  # a line cut short by a kill
    if not isinstance(row, dict):
        return None
    step, value = row.get("step"), row.get(metric)
    if isinstance(step, bool) or not isinstance(step, int):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return step, float(value)


def read_metrics_file(output_dir: Path) -> tuple[dict[str, Any], str | None]:
    """The script's ``metrics.json`` as written (numbers, per-fold lists, the folds id)."""
    path = output_dir / task.METRICS_FILE
    if not path.exists():
        return {}, f"the script wrote no {task.METRICS_FILE} into TRAINCHAIN_OUTPUT_DIR"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        return {}, f"{task.METRICS_FILE} is not valid JSON: {err}"
    if not isinstance(raw, dict):
        return {}, f"{task.METRICS_FILE} must hold a JSON object of metric names to numbers"
    return raw, None


def numbers(raw: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics mapping (what MLflow logs as metrics)."""
    return {
        str(k): float(v)
        for k, v in raw.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def run_trial(
    ctx: TrialContext,
    number: int,
    params: Mapping[str, Any],
    *,
    checkpoint_key: int | None = None,
    on_line: LineSink | None = None,
    on_attempt: Callable[[int, int], None] | None = None,
    extra_tags: Mapping[str, str] | None = None,
    on_report: ReportSink | None = None,
    validation: Mapping[str, Any] | None = None,
    label: str | None = None,
    cancel: threading.Event | None = None,
) -> TrialOutcome:
    """Run trial ``number`` to success or to its attempt cap, and log it as one MLflow run.

    With ``on_report``, each new step of the report file is passed to it while the trial
    runs (its goal metric's value); when it returns True the attempt is stopped and the
    trial ends pruned: not retried, ``pruned=True``, tagged ``trainchain.status=pruned``.
    ``validation`` is the plan passed as TRAINCHAIN_VALIDATION (default: the config's
    search plan); ``label`` names the run and its folders instead of ``trial-NNNN`` (a
    confirmation run of trial ``number``). ``cancel``, set by another thread, stops the
    attempt as pruning does: the trial ends ``stopped`` (the chain ended meanwhile),
    tagged ``trainchain.status=stopped``; its checkpoints are kept.
    """
    model = ctx.loaded.model
    name = label or f"trial-{number:04d}"
    trial_dir = ctx.settings.runs_dir / ctx.chain_id / name
    ckpt_dir = (
        ctx.settings.checkpoints
        / ctx.chain_id
        / (label or f"trial-{checkpoint_key if checkpoint_key is not None else number:04d}")
    )
    report_file = trial_dir / "report.jsonl"
    trial_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    tags = (
        ctx.lineage.tags()
        | {
            keys.CHAIN: ctx.chain_id,
            keys.TRIAL: str(number),
            keys.PARAMS: json.dumps(dict(params), sort_keys=True),
        }
        | dict(extra_tags or {})
    )
    run_id = ctx.tracker.start_run(
        ctx.experiment_id, label or f"trial-{number}", tags, parent_run_id=ctx.parent_run_id
    )
    ctx.tracker.log(run_id, params=params)

    attempts: list[AttemptResult] = []
    start = time.monotonic()
    # an executor that supervises restarts (docker) returns one result for the whole trial
    max_attempts = 1 if ctx.executor.supervises_restarts else model.train.max_attempts
    stop = cancel if cancel is not None else threading.Event()
    watcher = None
    if on_report is not None:
        watcher = ReportWatcher(report_file, ctx.val_metric, on_report, stop)
        watcher.start()
    plan = dict(validation) if validation is not None else model.validation.plan()
    try:
        metrics, estimate, error, output_dir = _run_attempts(
            ctx,
            number,
            params,
            run_id=run_id,
            trial_dir=trial_dir,
            ckpt_dir=ckpt_dir,
            max_attempts=max_attempts,
            attempts=attempts,
            on_line=on_line,
            on_attempt=on_attempt,
            stop=stop,
            validation=plan,
        )
    finally:
        if watcher is not None:
            watcher.close()
    ended = bool(attempts) and attempts[-1].stopped
    pruned = ended and watcher is not None and watcher.pruned_step is not None
    stopped = ended and not pruned and cancel is not None and cancel.is_set()
    pruned_step = watcher.pruned_step if watcher is not None and pruned else None
    pruned_value = watcher.pruned_value if watcher is not None and pruned else None
    if pruned:
        error = None
        log.info("trial %d: pruned at step %s", number, pruned_step)
    if stopped:
        error = "stopped: the chain ended while it ran"

    ok = error is None and not pruned
    rows = read_report(report_file)
    status = "pruned" if pruned else ("stopped" if stopped else ("ok" if ok else "failed"))
    spread = estimate.spread if estimate is not None else None
    ctx.tracker.log(
        run_id,
        metrics=metrics | ({f"{ctx.val_metric}_sd": spread} if spread is not None else {}),
        tags={
            keys.VALIDATION: json.dumps(plan, sort_keys=True),
            keys.ATTEMPTS: str(sum(1 + a.restarts for a in attempts)),
            keys.STATUS: status,
        }
        | ({keys.ERROR: error[:4000]} if error else {})
        | ({keys.PRUNED_STEP: str(pruned_step)} if pruned else {}),
    )
    if rows:
        ctx.tracker.log_step_metrics(run_id, rows)
    _log_outputs(ctx.tracker, run_id, output_dir, trial_dir, ctx.parent_run_id)
    if pruned or stopped:  # ended on purpose: neither finished nor failed
        ctx.tracker.client.set_terminated(run_id, status="KILLED")
    else:
        ctx.tracker.finish(run_id, ok)
    if ok or pruned:
        # the trial is over and its model logged; checkpoints only serve a resume (a CNN's
        # are tens of MB). A failed trial keeps them, to look at or to resume by hand.
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return TrialOutcome(
        number=number,
        params=dict(params),
        ok=ok,
        metrics=metrics,
        run_id=run_id,
        attempts=tuple(attempts),
        duration_s=time.monotonic() - start,
        error=error,
        output_dir=output_dir,
        pruned=pruned,
        pruned_step=pruned_step,
        pruned_value=pruned_value,
        estimate=estimate if ok else None,
        stopped=stopped,
    )


def train_once(
    prep: Prepared, settings: Settings, params: Mapping[str, Any], on_line: LineSink
) -> TrialOutcome:
    """One training run of a prepared model with ``params`` (job 3, `trainchain train`),
    logged as its own MLflow run; a failed run is a TrainingError naming its log."""
    from trainchain.chain.giveup import give_up_callback
    from trainchain.core.errors import TrainingError
    from trainchain.executors import get_executor

    model = prep.loaded.model
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    chain_id = f"train-{model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    ctx = TrialContext(
        loaded=prep.loaded,
        settings=settings,
        tracker=tracker,
        executor=get_executor(
            prep.lineage.executor, model, settings, on_give_up=give_up_callback(settings)
        ),
        lineage=prep.lineage,
        chain_id=chain_id,
        experiment_id=tracker.experiment_id(model.name),
        data_dir=prep.data_dir,
        val_metric=model.goal.val_metric,
    )
    outcome = run_trial(ctx, 0, params, on_line=on_line)
    if not outcome.ok:
        raise TrainingError(
            f"training {model.name} failed: {outcome.error}",
            hint=f"the full log is under {settings.runs_dir / chain_id}",
            log_tail=outcome.log_tail,
        )
    return outcome


def _run_attempts(
    ctx: TrialContext,
    number: int,
    params: Mapping[str, Any],
    *,
    run_id: str,
    trial_dir: Path,
    ckpt_dir: Path,
    max_attempts: int,
    attempts: list[AttemptResult],
    on_line: LineSink | None,
    on_attempt: Callable[[int, int], None] | None,
    stop: threading.Event,
    validation: dict[str, Any],
) -> tuple[dict[str, float], Estimate | None, str | None, Path]:
    """The attempts of one trial, until one succeeds, the cap, or ``stop``; appends each
    result to ``attempts`` and returns the metrics, the estimate of the goal metric, the
    error and the last output folder."""
    model = ctx.loaded.model
    metrics: dict[str, float] = {}
    estimate: Estimate | None = None
    error: str | None = None
    output_dir = trial_dir
    for attempt in range(1, max_attempts + 1):
        spec = AttemptSpec.in_trial_dir(
            trial_dir,
            attempt,
            params=params,
            data_options=model.data.options,
            repo_root=ctx.loaded.root,
            entrypoint=model.entrypoint,
            data_dir=ctx.data_dir,
            checkpoint_dir=ckpt_dir,
            trial=number,
            timeout=model.train.timeout,
            image=ctx.lineage.image,
            early_stopping=model.early_stopping_policy(),
            validation=validation,
            labels={
                keys.MODEL: model.name,
                keys.RUN: run_id,
                keys.CHAIN: ctx.chain_id,
                keys.TRIAL: str(number),
                keys.ATTEMPT: str(attempt),
            },
        )
        output_dir = spec.output_dir
        if on_attempt is not None:
            on_attempt(number, attempt)
        result = ctx.executor.run(spec, on_line, stop)
        attempts.append(result)
        if result.stopped:  # pruned: not a failure, and never retried
            error = f"attempt {attempt} {result.describe()}"
            break
        if result.ok:
            raw, error = read_metrics_file(output_dir)
            metrics = numbers(raw)
            if error is None and ctx.val_metric not in metrics:
                error = (
                    f"{task.METRICS_FILE} has no {ctx.val_metric!r} (it has: "
                    f"{', '.join(sorted(metrics)) or 'nothing'}); the goal metric must be there"
                )
            if error is None:
                estimate, error = read_estimate(raw, ctx.val_metric)
            if error is None:
                break
        else:
            error = f"attempt {attempt} {result.describe()}"
        log.warning("trial %d attempt %d failed: %s", number, attempt, error)
        if attempt < max_attempts:
            log.warning(
                "trial %d: retrying (attempt %d of %d), resuming from %s",
                number,
                attempt + 1,
                max_attempts,
                ckpt_dir,
            )

    return metrics, estimate, error, output_dir


def heldout_digest(path: Path) -> str:
    """A digest of the held-out arrays themselves (the .npz file's bytes differ each time:
    its zip entries carry the time they were written)."""
    import numpy as np

    digest = hashlib.sha256()
    with np.load(path, allow_pickle=False) as data:
        for key in sorted(data.files):
            array = np.ascontiguousarray(data[key])
            digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:20]


def _log_heldout(tracker: Tracker, run_id: str, path: Path, parent_run_id: str | None) -> None:
    if parent_run_id is None:
        tracker.log_artifact(run_id, path)
        return
    try:
        digest = heldout_digest(path)
    except Exception as err:  # not readable as arrays: keep the file with its run
        log.warning("%s is not a readable .npz of arrays (%s); logged as it is", path, err)
        tracker.log_artifact(run_id, path)
        return
    target = tracker.log_artifact_once(parent_run_id, path, f"heldout/{digest}")
    tracker.log(run_id, tags={keys.HELDOUT: f"{parent_run_id}:{target}"})


def _log_outputs(
    tracker: Tracker, run_id: str, output_dir: Path, trial_dir: Path, parent_run_id: str | None
) -> None:
    model_dir = output_dir / task.MODEL_DIR
    if (model_dir / "MLmodel").exists():
        tracker.log_artifacts(run_id, model_dir, MODEL_ARTIFACT)
    elif model_dir.exists():
        log.warning("%s has no MLmodel file: the model is logged as plain files", model_dir)
        tracker.log_artifacts(run_id, model_dir, "model-files")
    if (output_dir / task.HELDOUT_FILE).exists():
        _log_heldout(tracker, run_id, output_dir / task.HELDOUT_FILE, parent_run_id)
    if (output_dir / task.METRICS_FILE).exists():
        tracker.log_artifact(run_id, output_dir / task.METRICS_FILE)
    for path in sorted(trial_dir.glob("attempt-*/train.log")):
        tracker.log_artifact(run_id, path, f"logs/{path.parent.name}")
    if (trial_dir / "report.jsonl").exists():
        tracker.log_artifact(run_id, trial_dir / "report.jsonl")
