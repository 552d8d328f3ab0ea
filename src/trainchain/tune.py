"""Job 4: tune until the goal, within the budget, resumable after any kill.

An Optuna study (seeded TPE) in the study store; each trial is an MLflow child
run under one parent run for the chain. A tune started again continues the
same study: finished trials are kept, the count goes on, and a trial that was
running when the process died is retried with its parameters and checkpoints.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from trainchain.config import Direction
from trainchain.context import Prepared
from trainchain.errors import TrainchainError
from trainchain.executors import Executor
from trainchain.locks import flock_within
from trainchain.progress import TuneDisplay
from trainchain.report import ChainReport, TrialSummary
from trainchain.space import fit_to_space
from trainchain.studies import make_pruner, open_study, study_names, suggest
from trainchain.tracking import CHAMPION, Tracker
from trainchain.training import PARAMS_TAG, TrialContext, run_trial

log = logging.getLogger(__name__)

FINISHED_ATTR = "finished"
PARENT_ATTR = "mlflow_parent_run_id"
ELAPSED_ATTR = "elapsed_s"


class Busy(TrainchainError):
    exit_code = 9


def model_lock(locks: Path, name: str, wait: float = 0.0) -> AbstractContextManager[None]:
    """One chain at a time per model: a second one waits up to ``wait`` seconds, then is
    refused; never interleaved."""
    path = locks / f"{name}.lock"
    waited = f" after waiting {wait:.0f} s" if wait > 0 else ""
    return flock_within(
        path,
        wait,
        lambda: Busy(
            f"another trainchain process is tuning {name} (lock {path} is held){waited}",
            hint="wait for it to finish (--wait-lock SECONDS waits), or stop it; the study "
            "resumes where it stopped",
        ),
        poll_s=1.0,
    )


def _state(trial: Any) -> str:
    return str(trial.state.name)


def _budget_used(study: Any) -> int:
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    return sum(
        1
        for t in study.trials
        if _state(t) in {"COMPLETE", "PRUNED", "FAIL"} and t.number not in retried
    )


def _best(study: Any, direction: Direction) -> Any | None:
    complete = [t for t in study.trials if _state(t) == "COMPLETE" and t.value is not None]
    if not complete:
        return None
    key = (lambda t: t.value) if direction is Direction.MAXIMIZE else (lambda t: -t.value)
    return max(complete, key=key)


def choose_study(prep: Prepared) -> tuple[str, bool]:
    """The study to use: the newest of this code/data/goal if unfinished, else a new one."""
    base = prep.study_base()
    storage = prep.settings.study_storage
    existing = [n for n in study_names(storage) if n == base or n.startswith(base + "-r")]
    if not existing:
        return base, False
    newest = max(existing, key=lambda n: int(n.rsplit("-r", 1)[1]) if n != base else 1)
    model = prep.loaded.model
    study = open_study(storage, newest, model.goal.direction, 0, pruner=make_pruner(model.pruning))
    if FINISHED_ATTR not in study.user_attrs:
        return newest, True
    index = int(newest.rsplit("-r", 1)[1]) + 1 if newest != base else 2
    return f"{base}-r{index}", False


def _first_params(prep: Prepared, tracker: Tracker) -> tuple[dict[str, Any], str]:
    model = prep.loaded.model
    version = None
    try:
        version = tracker.alias_version(model.name, CHAMPION)
    except Exception:
        version = None
    if version is not None:
        run_id = tracker.version_run_id(model.name, version)
        if run_id:
            _, _, tags = tracker.run_data(run_id)
            champion = fit_to_space(model, json.loads(tags.get(PARAMS_TAG, "{}")))
            if champion is not None:
                return champion, f"parameters of champion v{version}"
    return model.defaults(), "defaults"


def _recover(study: Any, tracker: Tracker, experiment_id: str, parent: str) -> list[int]:
    """Trials left RUNNING by a killed process: mark them failed and enqueue them again."""
    from optuna.trial import TrialState

    retried = []
    for t in study.trials:
        if _state(t) != "RUNNING":
            continue
        key = t.user_attrs.get("checkpoint_key", t.number)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(
            dict(t.params), user_attrs={"retry_of": t.number, "checkpoint_key": key}
        )
        retried.append(t.number)
    if retried:
        runs = tracker.client.search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'",
        )
        for run in runs:
            tracker.log(run.info.run_id, tags={"trainchain.status": "interrupted"})
            tracker.finish(run.info.run_id, ok=False)
    return retried


def _summaries(study: Any) -> tuple[TrialSummary, ...]:
    retried = {t.user_attrs.get("retry_of"): t.number for t in study.trials}
    out = []
    for t in study.trials:
        state = _state(t)
        if state in {"RUNNING", "WAITING"}:
            continue
        if t.number in retried and retried[t.number] is not None:
            state = "INTERRUPTED"
        duration = t.duration.total_seconds() if t.duration is not None else None
        out.append(
            TrialSummary(
                number=t.number,
                state=state,
                # a pruned trial's value is its last reported one (Optuna keeps it)
                value=t.value if state in {"COMPLETE", "PRUNED"} else None,
                params=dict(t.params),
                test_value=t.user_attrs.get("test_value"),
                run_id=t.user_attrs.get("mlflow_run_id"),
                duration_s=duration,
            )
        )
    return tuple(out)


class _Session:
    """One invocation of tune on one study: its state between trials."""

    def __init__(
        self, prep: Prepared, executor: Executor, display: TuneDisplay, stream_logs: bool
    ) -> None:
        self.prep = prep
        self.model = prep.loaded.model
        self.goal = self.model.goal
        self.display = display
        self.stream_logs = stream_logs
        self.executor = executor
        self.tracker = Tracker(prep.settings.tracking_uri, prep.settings.artifacts)
        self.failures = 0
        self.error: str | None = None
        self.last_tail = ""
        self.started = time.monotonic()

    def open(self) -> None:
        """Open (or create) the study and its parent run; recover interrupted trials."""
        prep, model, goal = self.prep, self.model, self.goal
        self.chain_id, resumed = choose_study(prep)
        self.study = open_study(
            prep.settings.study_storage,
            self.chain_id,
            goal.direction,
            model.budget.seed,
            pruner=make_pruner(model.pruning),
        )
        experiment_id = self.tracker.experiment_id(model.name)
        parent = self.study.user_attrs.get(PARENT_ATTR)
        if parent:
            self.tracker.reopen(parent)
        else:
            parent = self.tracker.start_run(
                experiment_id,
                f"chain {self.chain_id}",
                prep.lineage.tags() | {"trainchain.chain": self.chain_id},
            )
            self.tracker.log(
                parent,
                params={
                    "goal_metric": goal.val_metric,
                    "goal_threshold": goal.threshold,
                    "max_trials": model.budget.max_trials,
                    "seed": model.budget.seed,
                },
            )
            self.study.set_user_attr(PARENT_ATTR, parent)
        self.parent: str = parent
        retried = _recover(self.study, self.tracker, experiment_id, parent)
        self.display.start(
            self.chain_id, resumed, _budget_used(self.study), model.budget.max_trials
        )
        if not self.study.trials:
            first, source = _first_params(prep, self.tracker)
            self.study.enqueue_trial(first, user_attrs={"source": source})
            self.display.note(f"  the first trial uses the {source}")
        for number in retried:
            self.display.note(
                f"  trial {number} was interrupted: it is retried with its "
                "parameters and checkpoints"
            )
        self.elapsed_before = float(self.study.user_attrs.get(ELAPSED_ATTR, 0.0))
        self.ctx = TrialContext(
            loaded=prep.loaded,
            settings=prep.settings,
            tracker=self.tracker,
            executor=self.executor,
            lineage=prep.lineage,
            chain_id=self.chain_id,
            experiment_id=experiment_id,
            data_dir=prep.data_dir,
            val_metric=goal.val_metric,
            parent_run_id=parent,
        )

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def stop_reason(self) -> str | None:
        """Why to stop before the next trial, or None to go on."""
        budget = self.model.budget
        best = _best(self.study, self.goal.direction)
        used = _budget_used(self.study)
        if best is not None and self.goal.reached(best.value):
            return "goal reached"
        if self.failures >= budget.max_consecutive_failures:
            return f"{self.failures} trials in a row failed"
        if used >= budget.max_trials:
            return f"budget spent: {used} of {budget.max_trials} trials"
        if self.elapsed >= budget.timeout:
            return f"budget spent: {self.elapsed:.0f} s of {budget.timeout:.0f} s"
        return None

    def run_one(self) -> None:
        from optuna.trial import TrialState

        goal, total = self.goal, self.model.budget.max_trials
        n = _budget_used(self.study) + 1
        trial = self.study.ask()
        params = suggest(trial, self.model)
        key = trial.user_attrs.get("checkpoint_key", trial.number)
        trial.set_user_attr("checkpoint_key", key)
        self.display.trial_started(n, total, params, number=trial.number)

        def on_attempt(_number: int, attempt: int) -> None:
            if attempt > 1:
                self.display.trial_started(n, total, params, number=trial.number, attempt=attempt)

        def on_report(step: int, value: float) -> bool:
            # called once per step, in increasing order (Optuna warns on a repeated step)
            trial.report(value, step)
            return bool(trial.should_prune())

        outcome = run_trial(
            self.ctx,
            trial.number,
            params,
            checkpoint_key=key,
            on_line=self.display.console.print if self.stream_logs else self.display.line,
            on_attempt=on_attempt,
            on_report=on_report,
        )
        # a watchdog that gave up on the trial has already marked it failed in the study,
        # which then refuses any change to it
        running = self.study.trials[trial.number].state is TrialState.RUNNING
        test_value = outcome.metrics.get(goal.test_metric)
        if running:
            trial.set_user_attr("mlflow_run_id", outcome.run_id)
            if test_value is not None:
                trial.set_user_attr("test_value", test_value)
        self.study.set_user_attr(ELAPSED_ATTR, self.elapsed)
        self.last_tail = outcome.log_tail
        if outcome.ok and running:
            self.study.tell(trial, outcome.metrics[goal.val_metric])
            self.failures = 0
        elif outcome.pruned:  # not a failure: the median rule stopped it
            if running:
                self.study.tell(trial, state=TrialState.PRUNED)
        else:
            if running:
                self.study.tell(trial, state=TrialState.FAIL)
            self.failures += 1
            self.error = outcome.error
        best = _best(self.study, goal.direction)
        if outcome.pruned:
            self.display.trial_pruned(
                n,
                total,
                step=outcome.pruned_step,
                value=outcome.pruned_value,
                best=best.value if best else None,
                best_trial=best.number if best else None,
            )
            return
        self.display.trial_finished(
            n,
            total,
            value=outcome.metrics.get(goal.val_metric) if outcome.ok else None,
            best=best.value if best else None,
            best_trial=best.number if best else None,
            error=None if outcome.ok else outcome.error,
            test=test_value,
        )

    def finish(self, stop_reason: str) -> ChainReport:
        model, goal, settings = self.model, self.goal, self.prep.settings
        best = _best(self.study, goal.direction)
        reached = best is not None and goal.reached(best.value)
        failed = self.failures >= model.budget.max_consecutive_failures and not reached
        status = "succeeded" if reached else ("failed" if failed else "goal_not_reached")
        if not failed:  # a failed chain stays open: fixing the cause and rerunning resumes it
            self.study.set_user_attr(FINISHED_ATTR, status)
        self.tracker.log(
            self.parent,
            metrics={"best_" + goal.val_metric: best.value} if best else {},
            tags={"trainchain.status": status, "trainchain.stop_reason": stop_reason},
        )
        self.tracker.finish(self.parent, ok=reached)
        self.display.note(f"tune: {stop_reason}")
        report = ChainReport(
            chain_id=self.chain_id,
            model_name=model.name,
            repository=self.prep.lineage.repository,
            commit=self.prep.lineage.commit,
            goal_metric=goal.val_metric,
            threshold=goal.threshold,
            direction=goal.direction.value,
            status=status,  # type: ignore[arg-type]
            max_trials=model.budget.max_trials,
            promotion_margin=model.promotion.margin,
            trials=_summaries(self.study),
            best_trial=best.number if best else None,
            best_value=best.value if best else None,
            best_test_value=best.user_attrs.get("test_value") if best else None,
            best_params=dict(best.params) if best else {},
            best_run_id=best.user_attrs.get("mlflow_run_id") if best else None,
            tracking_uri=settings.tracking_uri,
            parent_run_id=self.parent,
            family=self.prep.detection.family,
            image=self.prep.lineage.image,
            executor=self.executor.name,
            error=f"{self.failures} trials in a row failed; last: {self.error}" if failed else None,
            log_tail=self.last_tail if not reached else "",
            recipients=model.notify.to,
            jenkins_build_url=settings.jenkins_build_url,
            elapsed_s=self.elapsed,
        )
        save_report(settings.chains_dir, report, self.tracker)
        return report


def tune(
    prep: Prepared,
    executor: Executor,
    *,
    display: TuneDisplay | None = None,
    stream_logs: bool = False,
    wait_lock: float = 0.0,
) -> ChainReport:
    """Tune ``prep``'s model until the goal or the end of the budget; return the chain report."""
    display = display or TuneDisplay.for_goal(prep.loaded.model.goal)
    session = _Session(prep, executor, display, stream_logs)
    with model_lock(prep.settings.locks, prep.loaded.model.name, wait_lock):
        session.open()
        try:
            while (reason := session.stop_reason()) is None:
                session.run_one()
        finally:
            session.display.close()
        return session.finish(reason)


REPORT_ARTIFACT = "chain-report.json"


def save_report(chains_dir: Path, report: ChainReport, tracker: Tracker | None = None) -> Path:
    """Write the report under ``chains_dir`` and, with a tracker, into the chain's MLflow run,
    so that a job on another machine sharing the tracking server can read it."""
    path = report.save(chains_dir / f"{report.chain_id}.json")
    (chains_dir / f"{report.model_name}.latest").write_text(report.chain_id, encoding="utf-8")
    if tracker is not None and report.parent_run_id:
        tracker.save_text(report.parent_run_id, report.to_json(), REPORT_ARTIFACT)
    return path


def load_report(chains_dir: Path, chain_id: str, tracker: Tracker) -> ChainReport:
    """Chain ``chain_id``'s report: this machine's copy, else the one in MLflow."""
    from trainchain.errors import ConfigError

    path = chains_dir / f"{chain_id}.json"
    if path.exists():
        return ChainReport.load(path)
    run_id = tracker.find_chain_run(chain_id)
    if run_id is not None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = tracker.download(run_id, REPORT_ARTIFACT, Path(tmp))
            except Exception as err:  # the run exists but its report was never written
                raise ConfigError(
                    f"chain {chain_id!r} (MLflow run {run_id}) has no {REPORT_ARTIFACT}: {err}",
                    hint="the chain's tune job stopped before it finished; see its log",
                ) from err
            return ChainReport.load(local)
    raise ConfigError(
        f"no chain {chain_id!r}: not under {chains_dir} and not in MLflow at "
        f"{tracker.tracking_uri}",
        hint="chain ids are printed by `trainchain tune` and named in each email; on another "
        "machine, point TRAINCHAIN_TRACKING_URI at the tracking server the chain used",
    )


def latest_report(chains_dir: Path, model_name: str | None = None) -> ChainReport:
    from trainchain.errors import ConfigError

    if model_name:
        pointer = chains_dir / f"{model_name}.latest"
        if not pointer.exists():
            raise ConfigError(
                f"no chain has run for model {model_name!r} under {chains_dir.parent}",
                hint="run `trainchain tune PATH` or `trainchain run PATH` first",
            )
        return ChainReport.load(chains_dir / f"{pointer.read_text().strip()}.json")
    reports = sorted(chains_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise ConfigError(
            f"no chain report under {chains_dir}",
            hint="run `trainchain tune PATH` or `trainchain run PATH` first",
        )
    return ChainReport.load(reports[-1])
