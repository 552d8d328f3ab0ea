"""Job 4: tune until a confirmed goal, within the budget, resumable after any kill.

An Optuna study (multivariate TPE, its random start-up sized to the budget) in the study
store; each trial is an MLflow child run under one parent run for the chain, scored by
the study's estimator (the same folds for every trial). When the best trial reaches the
goal on that validation, it is confirmed on data the search did not select on (fresh folds,
or the held-out test set: ``confirmation.method``); only a confirmed goal is "goal
reached". A new study starts from the earlier studies of the
same model (warm start). A tune started again continues the same study: finished trials
are kept, the count goes on, and a trial that was running when the process died is
retried with its parameters and checkpoints.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from trainchain.adapters.locks import flock_within
from trainchain.adapters.studies import (
    CHECKPOINT_ATTR,
    WORKER_ATTR,
    EarlierTrial,
    add_warm_trials,
    earlier_trials,
    enqueue_retry,
    fail_dead_workers,
    heartbeat,
    make_pruner,
    mark_study,
    open_study,
    storage_errors,
    study_names,
    trial_state,
    worker_alive,
    worker_id,
)
from trainchain.adapters.tracking import CHAMPION, Tracker
from trainchain.chain.context import Prepared
from trainchain.chain.search import EXCESS_ATTR, RETRY_ATTR, Search, first_trials, run_search
from trainchain.chain.training import TrialContext, TrialOutcome, run_trial
from trainchain.chain.workers import LocalWorkers, share_cores
from trainchain.core import keys
from trainchain.core.config import base_metric
from trainchain.core.errors import Busy
from trainchain.core.progress import TuneDisplay
from trainchain.core.redaction import redact
from trainchain.core.report import ChainReport, TrialSummary, trial_label
from trainchain.core.space import fit_to_space, unused, used
from trainchain.core.status import RunState
from trainchain.core.verdict import (
    ACCURACY_LIKE,
    Confirmation,
    Estimate,
    binomial_interval,
    confirm,
    confirm_on_heldout,
)
from trainchain.executors import Executor

log = logging.getLogger(__name__)

FINISHED_ATTR = "finished"
PARENT_ATTR = "mlflow_parent_run_id"
ELAPSED_ATTR = "elapsed_s"
WARM_NOTE_ATTR = "warm_start_note"
# study: the leader has opened the chain (its parent run, recovery and first trials are
# in place): workers may join; and the leader has concluded it: workers stop
READY_ATTR = "ready"
CONCLUDED_ATTR = "concluded"
# how often a joined worker looks at the study while its trial runs (a concluded chain
# stops the trial), and how long the leader waits for a change while other workers run
# the budget's last trials
WATCH_S = 2.0
JOIN_POLL_S = 0.25  # a worker waiting for its chain to open looks this often
JOIN_NOTE_S = 5.0  # and says what it waits for once it has waited this long
STOPPED_ATTR = "stopped"  # trial: stopped because the chain ended while it ran
WAIT_S = 5.0


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


def _open(prep: Prepared, name: str) -> Any:
    model = prep.loaded.model
    return open_study(
        prep.settings.study_storage,
        name,
        model.goal.direction,
        model.budget.seed,
        pruner=make_pruner(model.pruning),
        max_trials=model.budget.max_trials,
        startup=model.budget.startup_trials,
        heartbeat_grace=prep.settings.heartbeat_grace,
    )


def choose_study(prep: Prepared) -> tuple[str, bool]:
    """The study to use: the newest of this code/data/goal if unfinished, else a new one."""
    base = prep.study_base()
    storage = prep.settings.study_storage
    existing = [n for n in study_names(storage) if n == base or n.startswith(base + "-r")]
    if not existing:
        return base, False
    newest = max(existing, key=_run_index)
    if FINISHED_ATTR not in _open(prep, newest).user_attrs:
        return newest, True
    return f"{base}-r{_run_index(newest) + 1}", False


def _run_index(name: str) -> int:
    """Which run of its code, data and goal a study is: ``base`` 1, ``base-r2`` 2, ..."""
    _, sep, tail = name.rpartition("-r")
    return int(tail) if sep and tail.isdigit() else 1


def _champion_params(prep: Prepared, tracker: Tracker) -> tuple[dict[str, Any], str] | None:
    """The champion's parameters fitted to this space, or None when there is no champion
    (a registry that cannot answer raises: an outage is not "no champion")."""
    model = prep.loaded.model
    version = tracker.alias_version(model.name, CHAMPION)
    if version is None:
        return None
    run_id = tracker.version_run_id(model.name, version)
    if not run_id:
        return None
    _, _, tags = tracker.run_data(run_id)
    champion = fit_to_space(model, json.loads(tags.get(keys.PARAMS, "{}")))
    if champion is None:
        return None
    return champion, f"parameters of champion v{version}"


def _recover(study: Any, tracker: Tracker, experiment_id: str, parent: str) -> list[int]:
    """Trials left RUNNING by a killed process of this host (or of a version that did not
    name its worker): mark them failed and enqueue them again; their MLflow runs (and a
    confirmation's) are marked interrupted. A trial of a worker on another host is left to
    its heartbeat (:func:`~trainchain.adapters.studies.fail_dead_workers`)."""
    from optuna.trial import TrialState

    retried = []
    for t in study.trials:
        if _state(t) != "RUNNING":
            continue
        worker = t.user_attrs.get(WORKER_ATTR)
        if worker is not None and worker_alive(str(worker)) is not False:
            continue  # a live worker's, or another host's
        study.tell(t.number, state=TrialState.FAIL)
        enqueue_retry(study, t)
        retried.append(t.number)
    fail_dead_workers(study)
    # the runs of the interrupted trials, and of a confirmation that was running (only the
    # leader confirms, and this is the leader starting: it is run again, its candidate has
    # no recorded confirmation yet); other workers' runs are theirs
    close_dead_runs(study, tracker, experiment_id, parent)
    return retried


def close_dead_runs(study: Any, tracker: Tracker, experiment_id: str, parent: str) -> None:
    """Mark ``interrupted`` the chain's MLflow runs still RUNNING whose process died: a
    confirmation's (only the leader, the caller, confirms) and those of trials the study
    no longer has running (their worker died: failed at a start or through heartbeats)."""
    running = {str(t.number) for t in study.trials if _state(t) == "RUNNING"}
    runs = tracker.client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'",
    )
    for run in runs:
        tags = run.data.tags
        if tags.get(keys.PURPOSE) == "confirm" or tags.get(keys.TRIAL) not in running:
            tracker.log(run.info.run_id, tags={keys.STATUS: "interrupted"})
            tracker.finish(run.info.run_id, ok=False)


def _summaries(search: Search) -> tuple[TrialSummary, ...]:
    own = search.own_trials()
    retried = {t.user_attrs.get(RETRY_ATTR): t.number for t in own}
    out = []
    for t in own:
        state = _state(t)
        if state in {"RUNNING", "WAITING"}:
            continue
        if t.number in retried and retried[t.number] is not None:
            state = "INTERRUPTED"
        elif t.user_attrs.get(STOPPED_ATTR):
            state = "STOPPED"
        duration = t.duration.total_seconds() if t.duration is not None else None
        estimate = search.estimate_of(t)
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
                folds=estimate.folds if estimate is not None and state == "COMPLETE" else (),
                note=str(t.user_attrs.get("note", "")),
            )
        )
    return tuple(out)


class _Session:
    """One invocation of tune on one study: its state between trials.

    The chain's leader (``join`` None) opens the study, confirms candidates and concludes
    the chain; a joined worker (``join``: a chain id, or ``open``: the unfinished chain of
    this code, data and goal) only runs trials of it until the study says stop."""

    def __init__(
        self,
        prep: Prepared,
        executor: Executor,
        display: TuneDisplay,
        stream_logs: bool,
        *,
        join: str | None = None,
        join_wait: float = 0.0,
    ) -> None:
        self.prep = prep
        self.model = prep.loaded.model
        self.goal = self.model.goal
        self.display = display
        self.stream_logs = stream_logs
        self.executor = executor
        self.join = join
        self.join_wait = join_wait
        self.worker = worker_id()
        self.ran = 0  # trials this process ran
        self.failures = 0
        self.error: str | None = None
        self.last_tail = ""
        self.started = time.monotonic()
        self._waiting_noted = False

    @property
    def leader(self) -> bool:
        return self.join is None

    @cached_property
    def tracker(self) -> Tracker:
        """The MLflow store, opened when first used: importing MLflow and opening its store
        take seconds, which a leader's local workers spend starting meanwhile."""
        return Tracker(self.prep.settings.tracking_uri, self.prep.settings.artifacts)

    def choose(self) -> None:
        """The leader: which study this chain is (new, or an unfinished one resumed)."""
        self.chain_id, self.resumed = choose_study(self.prep)

    def open(self) -> None:
        """Open (or create) the study and its parent run; recover interrupted trials. A
        joined worker waits for the leader's study instead."""
        if not self.leader:
            self._join()
            return
        prep, model, goal = self.prep, self.model, self.goal
        if not hasattr(self, "chain_id"):
            self.choose()
        resumed = self.resumed
        self.study = _open(prep, self.chain_id)
        # a resumed chain is not open to workers until it is recovered (its READY was set
        # by the run that failed); the workers of this leader are waiting for it
        self.study.set_user_attr(READY_ATTR, False)
        self.study.set_user_attr(CONCLUDED_ATTR, False)  # a failed chain resumed
        self.search = Search(self.study, model)
        experiment_id = self.tracker.experiment_id(model.name)
        parent = self.study.user_attrs.get(PARENT_ATTR)
        if parent:
            self.tracker.reopen(parent)
        else:
            parent = self.tracker.start_run(
                experiment_id,
                f"chain {self.chain_id}",
                prep.lineage.tags() | {keys.CHAIN: self.chain_id},
            )
            self.tracker.log(
                parent,
                params={
                    "goal_metric": goal.val_metric,
                    "goal_threshold": goal.threshold,
                    "max_trials": model.budget.max_trials,
                    "seed": model.budget.seed,
                    "validation": json.dumps(self.search.search_plan(), sort_keys=True),
                },
            )
            self.study.set_user_attr(PARENT_ATTR, parent)
        self.parent: str = parent
        retried = _recover(self.study, self.tracker, experiment_id, parent)
        self.display.start(self.chain_id, resumed, self.search.used(), model.budget.max_trials)
        if not self.study.trials:
            self._first_trials()
        for number in retried:
            self.display.note(
                f"  trial {number} was interrupted: it is retried with its "
                "parameters and checkpoints"
            )
        self.elapsed_before = float(self.study.user_attrs.get(ELAPSED_ATTR, 0.0))
        self._context(experiment_id)
        self.study.set_user_attr(READY_ATTR, True)

    def _context(self, experiment_id: str) -> None:
        self.ctx = TrialContext(
            loaded=self.prep.loaded,
            settings=self.prep.settings,
            tracker=self.tracker,
            executor=self.executor,
            lineage=self.prep.lineage,
            chain_id=self.chain_id,
            experiment_id=experiment_id,
            data_dir=self.prep.data_dir,
            val_metric=self.goal.val_metric,
            parent_run_id=self.parent,
        )

    def _join(self) -> None:
        """Wait (up to ``join_wait`` s, looking every ``JOIN_POLL_S``) until the chain to
        join is open, then take it; after ``JOIN_NOTE_S``, say what it waits for."""
        from trainchain.core.errors import ConfigError

        # MLflow first (seconds of imports and store opening), while the leader opens its
        # study: once joined, this worker asks for a trial at once
        _ = self.tracker
        prep, base, storage = self.prep, self.prep.study_base(), self.prep.settings.study_storage
        started = time.monotonic()
        deadline = started + self.join_wait
        study: Any = None
        opened: str | None = None
        noted = False
        while True:
            name = self._chain_to_join(base)
            if name is not None:
                if name != opened:  # one storage per chain looked at, not one per look
                    study, opened = _open(prep, name), name
                attrs = study.user_attrs
                over = bool(attrs.get(CONCLUDED_ATTR)) or FINISHED_ATTR in attrs
                if over and self.join != "open":
                    raise ConfigError(
                        f"chain {name!r} has ended ({attrs.get(FINISHED_ATTR, 'concluded')}): "
                        "there is nothing left to join",
                        hint="join a running chain: `--join open` joins the one a leader of "
                        "this code has open",
                    )
                if attrs.get(READY_ATTR) and not over:
                    break
            left = deadline - time.monotonic()
            what = (
                f"chain {self.join!r}"
                if self.join != "open"
                else f"open chain of this code, data and goal ({base})"
            )
            if left <= 0:
                raise ConfigError(
                    f"no {what} to join within {self.join_wait:g} s" + self._other_chains(base),
                    hint="start the chain's leader first (`trainchain tune` or `run` of the "
                    "same code without --join), with the same study storage "
                    "(TRAINCHAIN_STUDY_STORAGE); --join-wait SECONDS waits longer",
                )
            if not noted and time.monotonic() - started >= JOIN_NOTE_S:
                noted = True
                self.display.note(
                    f"[bold]tune[/bold] worker {self.worker} waiting up to "
                    f"{self.join_wait:g} s for the {what} to open in {redact(storage)}"
                    + self._other_chains(base)
                )
            time.sleep(min(JOIN_POLL_S, left))
        self.chain_id = name
        self.study = study
        self.search = Search(study, self.model)
        self.parent = str(attrs[PARENT_ATTR])
        self.elapsed_before = float(attrs.get(ELAPSED_ATTR, 0.0))
        self.display.note(
            f"[bold]tune[/bold] worker {self.worker} joined chain {name}: "
            f"{self.search.used()} of {self.model.budget.max_trials} trials done"
        )
        self._context(self.tracker.experiment_id(self.model.name))

    def _chain_to_join(self, base: str) -> str | None:
        """The study this worker would join now (None: not there yet)."""
        from trainchain.core.errors import ConfigError

        names = study_names(self.prep.settings.study_storage)
        ours = [n for n in names if n == base or n.startswith(base + "-r")]
        if self.join == "open":
            return max(ours, key=_run_index, default=None)
        if self.join in ours:
            return self.join
        if self.join in names:
            raise ConfigError(
                f"chain {self.join!r} is a study of other code, data or goal than "
                f"this worker's ({base})",
                hint="give the worker the same source, --ref, --subdir, --data, "
                "--threshold and --max-trials as the chain's leader",
            )
        return None

    def _other_chains(self, base: str) -> str:
        """A note of this model's other chains in the storage, which a worker given other
        code, data or options than its leader's would not join."""
        prefix = self.model.name + "-"
        others = sorted(
            n
            for n in study_names(self.prep.settings.study_storage)
            if n.startswith(prefix) and not (n == base or n.startswith(base + "-r"))
        )
        if not others:
            return ""
        return (
            f"; this model's other chains there ({', '.join(others[-3:])}) are of other code, "
            "data or options: a worker takes the leader's source, --ref, --subdir, --data, "
            "--threshold and --max-trials"
        )

    def _first_trials(self) -> None:
        """A new study: say whose it is, start from the model's earlier studies (warm
        start), and enqueue the first trials (``trainchain.chain.search.first_trials``)."""
        model = self.model
        mark_study(self.study, model, self.prep.lineage.commit)
        earlier: list[EarlierTrial] = []
        if model.warm_start.enabled:
            earlier = earlier_trials(
                self.prep.settings.study_storage,
                model,
                exclude={self.chain_id},
                limit=model.warm_start.max_trials,
            )
        if earlier:
            added = add_warm_trials(self.study, model, earlier)
            commits = sorted({e.commit[:12] for e in earlier if e.commit})
            studies = len({e.study for e in earlier})
            note = (
                f"{added} finished trials of {studies} earlier "
                f"stud{'y' if studies == 1 else 'ies'} of {model.name} (commits "
                f"{', '.join(commits) or 'unknown'})"
            )
            self.study.set_user_attr(WARM_NOTE_ATTR, note)
            self.display.note(f"  warm start: the sampler starts from {note}")
        first = first_trials(
            model, champion=_champion_params(self.prep, self.tracker), earlier=earlier
        )
        for params, source in first:
            self.study.enqueue_trial(params, user_attrs={"source": source})
        sources = list(dict.fromkeys(source for _, source in first))
        uses = "s use" if len(first) > 1 else " uses"
        self.display.note(f"  the first trial{uses} the " + " and ".join(sources))

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    @contextmanager
    def local_workers(self, workers: int, worker_argv: Sequence[str]) -> Iterator[None]:
        """``workers`` - 1 more workers of this host join the open chain for the block
        (``worker_argv`` with ``--join CHAIN``); at its end they are waited for, then ended."""
        helpers = LocalWorkers(
            [*worker_argv, "--join", self.chain_id],
            workers - 1,
            on_line=self.display.relay,
            log_dir=self.prep.settings.runs_dir / self.chain_id,
        )
        helpers.start()
        try:
            yield
        except BaseException:
            helpers.close(wait=0)  # this process failed: its workers end with it, at once
            raise
        helpers.close()

    def search_until_stop(self) -> str:
        """This process's trials until the study says stop: the leader confirms and waits
        for the budget's last trials on other workers; a joined worker does neither."""
        try:
            return run_search(
                self.search,
                run_one=self.run_one,
                confirm_one=self.confirm if self.leader else None,
                stop_reason=self.stop_reason,
                wait_for_others=self.wait_for_others if self.leader else None,
            )
        finally:
            self.display.close()

    def chain_over(self) -> str | None:
        """For a joined worker: why the chain is over (the leader concluded it, or its
        goal was confirmed), else None."""
        if self.search.attrs().get(CONCLUDED_ATTR):
            return "the chain's leader has concluded it"
        confirmed = self.search.confirmed()
        if confirmed is not None:
            return f"goal reached and confirmed ({trial_label(confirmed.trial)})"
        return None

    def stop_reason(self) -> str | None:
        if not self.leader:
            over = self.chain_over()
            if over is not None:
                return over
        return self.search.stop_reason(failures=self.failures, elapsed=self.elapsed)

    def wait_for_others(self) -> str | None:
        """Every place of the budget is taken by trials running on other workers: wait up
        to ``WAIT_S`` for one to end or to be found dead (then retried). The time budget,
        checked between waits, bounds the whole."""
        running = {t.number for t in self.search.running()}
        if not self._waiting_noted:
            self._waiting_noted = True
            self.display.note(
                f"  waiting for the budget's last {len(running)} trial(s), running on other workers"
            )
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            fail_dead_workers(self.study)
            if self.search.can_ask() or {t.number for t in self.search.running()} != running:
                break
            time.sleep(0.5)
        return None

    @contextmanager
    def _watch(self, cancel: threading.Event) -> Iterator[None]:
        """While a joined worker's trial runs, stop it once the chain is over."""
        done = threading.Event()

        def loop() -> None:
            while not done.wait(WATCH_S):
                try:
                    over = self.chain_over()
                except Exception:  # a store hiccup: the next look decides
                    log.debug("looking at the chain failed", exc_info=True)
                    continue
                if over is not None:
                    self.display.note(f"  stopping the running trial: {over}")
                    cancel.set()
                    return

        thread = threading.Thread(target=loop, name="chain-watch", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=WATCH_S + 5)

    def _ask(self) -> tuple[Any, dict[str, Any], int] | None:
        """The next trial, its parameters and its place in the budget (1-based); None when
        the budget's last place went to another worker meanwhile (that trial never runs)."""
        from optuna.trial import TrialState

        fail_dead_workers(self.study)
        trial, params = self.search.ask()
        place = self.search.place_of(trial)
        if trial.user_attrs.get(RETRY_ATTR) is None and place >= self.model.budget.max_trials:
            trial.set_user_attr(EXCESS_ATTR, True)
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        trial.set_user_attr(WORKER_ATTR, self.worker)
        return trial, params, place + 1

    def run_one(self) -> bool:
        """Run the next trial; False when nothing ran (see :meth:`_ask`)."""
        asked = self._ask()
        if asked is None:
            return False
        trial, params, n = asked
        total = self.model.budget.max_trials
        shown = used(self.model, params)
        self.display.trial_started(n, total, shown, number=trial.number)

        def on_attempt(_number: int, attempt: int) -> None:
            if attempt > 1:
                self.display.trial_started(n, total, shown, number=trial.number, attempt=attempt)

        def on_report(step: int, value: float) -> bool:
            # called once per step, in increasing order (Optuna warns on a repeated step)
            trial.report(value, step)
            return self.search.prunable(step) and bool(trial.should_prune())

        cancel = threading.Event()
        watch = self._watch(cancel) if not self.leader else nullcontext()
        with heartbeat(self.study, trial), watch:
            outcome = run_trial(
                self.ctx,
                trial.number,
                params,
                # a retry's checkpoints are its original's (enqueue_retry names them)
                checkpoint_key=trial.user_attrs.get(CHECKPOINT_ATTR, trial.number),
                on_line=self.display.console.print if self.stream_logs else self.display.line,
                on_attempt=on_attempt,
                on_report=on_report,
                validation=self.search.search_plan(),
                cancel=cancel,
            )
        self.ran += 1
        self._tell(trial, outcome, n)
        return True

    @staticmethod
    def _keep(trial: Any, outcome: TrialOutcome, test_value: float | None) -> None:
        """Keep a trial's MLflow run and held-out figures in the study."""
        trial.set_user_attr("mlflow_run_id", outcome.run_id)
        if test_value is not None:
            trial.set_user_attr("test_value", test_value)
        if "n_test" in outcome.metrics:
            trial.set_user_attr("test_n", int(outcome.metrics["n_test"]))

    def _tell(self, trial: Any, outcome: TrialOutcome, n: int) -> None:
        """Record a trial's outcome in the study and show it."""
        from optuna.trial import TrialState

        goal, total = self.goal, self.model.budget.max_trials
        # a watchdog that gave up on the trial, or another worker that found this one dead,
        # has already marked it failed in the study, which then refuses any change to it
        running = trial_state(self.study, trial) is TrialState.RUNNING
        test_value = outcome.metrics.get(goal.test_metric)
        if running:
            self._keep(trial, outcome, test_value)
        if self.leader:
            self.study.set_user_attr(ELAPSED_ATTR, self.elapsed)
        self.last_tail = outcome.log_tail
        if outcome.stopped:  # the chain ended while it ran: neither a result nor a failure
            if running:
                trial.set_user_attr(STOPPED_ATTR, True)
                self.study.tell(trial, state=TrialState.FAIL)
            self.display.trial_finished(
                n, total, value=None, best=None, best_trial=None, error=outcome.error, test=None
            )
            return
        refused = self._refused(outcome)
        if outcome.ok and running and refused is None and outcome.estimate is not None:
            self.search.tell_complete(trial, outcome.estimate)
            self.failures = 0
        elif outcome.pruned:  # not a failure: the rule stopped it
            if running:
                self.study.tell(trial, state=TrialState.PRUNED)
        else:
            error = outcome.error if refused is None else f"refused: {refused}"
            if running:
                if error:
                    trial.set_user_attr("note", error[:500])
                self.study.tell(trial, state=TrialState.FAIL)
            self.failures += 1
            self.error = error
        best = self.search.best()
        if outcome.pruned:
            self.display.trial_pruned(
                n,
                total,
                step=outcome.pruned_step,
                value=outcome.pruned_value,
                best=best.value if best else None,
                best_trial=best.number if best else None,
                rule=self.model.pruning.rule if self.model.pruning.enabled else "median",
                reduction_factor=self.model.pruning.reduction_factor,
            )
            return
        ok = outcome.ok and refused is None
        self.display.trial_finished(
            n,
            total,
            value=outcome.estimate if ok else None,
            best=best.value if best else None,
            best_trial=best.number if best else None,
            error=None if ok else self.error,
            test=test_value,
        )

    def _refused(self, outcome: TrialOutcome) -> str | None:
        """Why a finished trial's score is not the study's estimator, or None."""
        if not outcome.ok or outcome.estimate is None:
            return None
        problem = self.search.check_estimate(outcome.estimate)
        if problem is not None:
            self.tracker.log(
                outcome.run_id,
                tags={keys.STATUS: "refused", keys.ERROR: problem},
            )
        return problem

    def confirm(self, candidate: Any) -> None:
        """Confirm the candidate on data the search did not select on, as
        ``confirmation.method`` says, and record the result."""
        alpha = self.search.confirmation_alpha()
        searched = self.search.estimate_of(candidate) or Estimate(float(candidate.value))
        if self.model.confirmation.method == "heldout":
            result = self._confirm_on_heldout(candidate, alpha, searched)
        else:
            result = self._confirm_by_refit(candidate, alpha, searched)
        self.search.record(result)
        if result.run_id is not None:
            self.tracker.log(
                result.run_id,
                tags={keys.CONFIRMED: str(result.confirmed).lower()},
                metrics={"confirmation_bound": result.bound} if result.bound is not None else {},
            )
        self.display.confirmation(result)

    def _confirm_by_refit(self, candidate: Any, alpha: float, searched: Estimate) -> Confirmation:
        """The candidate's parameters trained and cross-validated again on fresh folds."""
        index = len(self.search.confirmations())
        plan = self.search.confirm_plan(index)
        self.display.note(
            f"  confirming {trial_label(candidate.number)} ({self.goal.val_metric} "
            f"{searched.describe()}) on fresh folds: {plan['folds']}-fold x {plan['repeats']}, "
            f"seed {plan['seed']}"
        )
        self.display.confirmation_started(candidate.number)
        outcome = run_trial(
            self.ctx,
            candidate.number,
            dict(candidate.params),
            on_line=self.display.console.print if self.stream_logs else self.display.line,
            extra_tags={
                keys.PURPOSE: "confirm",
                keys.CONFIRMS: str(candidate.number),
            },
            validation=plan,
            label=f"confirm-{index}-trial-{candidate.number:04d}",
        )
        if outcome.ok and outcome.estimate is not None:
            return confirm(
                self.goal,
                candidate.number,
                outcome.estimate,
                search_folds_ids=self.search.search_folds_ids(),
                folds_per_repeat=plan["folds"],
                alpha=alpha,
                run_id=outcome.run_id,
            )
        return Confirmation(
            trial=candidate.number,
            estimate=searched,
            bound=None,
            alpha=alpha,
            confirmed=False,
            reason=f"not confirmed: the confirmation run failed: {outcome.error}",
            run_id=outcome.run_id,
        )

    def _confirm_on_heldout(self, candidate: Any, alpha: float, searched: Estimate) -> Confirmation:
        """The candidate's own held-out accuracy, bounded: no second training."""
        attrs = candidate.user_attrs
        n = attrs.get("test_n")
        self.display.note(
            f"  confirming {trial_label(candidate.number)} ({self.goal.val_metric} "
            f"{searched.describe()}) on the held-out test set"
            + (f" ({n} examples, never used by the search)" if n else "")
        )
        return confirm_on_heldout(
            self.goal,
            candidate.number,
            attrs.get("test_value"),
            n,
            alpha=alpha,
            searched=searched,
            run_id=attrs.get("mlflow_run_id"),
        )

    def _wait_running(self) -> None:
        """The chain is concluded: wait until the trials other workers were running have
        stopped (they look every ``WATCH_S``) or were found dead, at most the heartbeat's
        grace and a margin; the report then lists them as they ended."""
        limit = self.prep.settings.heartbeat_grace + 4 * WATCH_S + 10
        deadline = time.monotonic() + limit
        noted = False
        while self.search.running() and time.monotonic() < deadline:
            if not noted:
                noted = True
                self.display.note(
                    f"  waiting (up to {limit:.0f} s) for {len(self.search.running())} "
                    "trial(s) of other workers to stop"
                )
            fail_dead_workers(self.study)
            time.sleep(0.5)

    def finish(self, stop_reason: str) -> ChainReport:
        model, goal, settings = self.model, self.goal, self.prep.settings
        search = self.search
        self.study.set_user_attr(CONCLUDED_ATTR, True)  # joined workers stop
        self._wait_running()
        close_dead_runs(self.study, self.tracker, self.ctx.experiment_id, self.parent)
        confirmed = search.confirmed()
        # the chain's model is the confirmed trial: with several workers a trial that
        # finished after the confirmation may score higher on the search's folds, but it
        # was never confirmed
        best = self.study.trials[confirmed.trial] if confirmed is not None else search.best()
        failed = self.failures >= model.budget.max_consecutive_failures
        verdict = search.verdict(failed=failed)
        status = {
            "confirmed": RunState.SUCCEEDED,
            "failed": RunState.FAILED,
        }.get(verdict, RunState.GOAL_NOT_REACHED)
        if status is not RunState.FAILED:  # a failed chain stays open: fixing the cause resumes it
            self.study.set_user_attr(FINISHED_ATTR, status.value)
        self.tracker.log(
            self.parent,
            metrics=({"best_" + goal.val_metric: best.value} if best else {})
            | ({"confirmation_bound": confirmed.bound} if confirmed and confirmed.bound else {}),
            tags={
                keys.STATUS: status.value,
                keys.VERDICT: verdict,
                keys.STOP_REASON: stop_reason,
            },
        )
        self.tracker.finish(self.parent, ok=status is RunState.SUCCEEDED)
        self.display.note(f"tune: {stop_reason}")
        test_value = best.user_attrs.get("test_value") if best else None
        test_n = best.user_attrs.get("test_n") if best else None
        report = ChainReport(
            chain_id=self.chain_id,
            model_name=model.name,
            repository=self.prep.lineage.repository,
            commit=self.prep.lineage.commit,
            goal_metric=goal.val_metric,
            threshold=goal.threshold,
            direction=goal.direction.value,
            status=status,
            max_trials=model.budget.max_trials,
            promotion_margin=model.promotion.margin,
            promotion_alpha=model.promotion.alpha,
            trials=_summaries(search),
            best_trial=best.number if best else None,
            best_value=best.value if best else None,
            best_test_value=test_value,
            best_test_n=test_n,
            best_test_interval=_test_interval(goal.test_metric, test_value, test_n),
            best_params=dict(best.params) if best else {},
            unused_params=unused(model, best.params) if best else (),
            best_run_id=best.user_attrs.get("mlflow_run_id") if best else None,
            tracking_uri=settings.tracking_uri,
            parent_run_id=self.parent,
            family=self.prep.detection.family,
            image=self.prep.lineage.image,
            executor=self.executor.name,
            error=f"{self.failures} trials in a row failed; last: {self.error}" if failed else None,
            log_tail=self.last_tail if status is not RunState.SUCCEEDED else "",
            recipients=model.notify.to,
            jenkins_build_url=settings.jenkins_build_url,
            elapsed_s=self.elapsed,
            verdict=verdict,
            confirmations=tuple(search.confirmations()),
            confirmation_alpha=model.confirmation.alpha,
            warm_start=str(self.study.user_attrs.get(WARM_NOTE_ATTR, "")),
            reason=settings.reason,
        )
        save_report(settings.chains_dir, report, self.tracker)
        return report


def _test_interval(
    test_metric: str, value: float | None, n: int | None
) -> tuple[float, float] | None:
    """The 95% exact interval of a held-out accuracy of ``n`` examples."""
    if value is None or not n or base_metric(test_metric) not in ACCURACY_LIKE:
        return None
    return binomial_interval(round(value * n), int(n))


def tune(
    prep: Prepared,
    executor: Executor,
    *,
    display: TuneDisplay | None = None,
    stream_logs: bool = False,
    wait_lock: float = 0.0,
    workers: int = 1,
    worker_argv: Sequence[str] = (),
) -> ChainReport:
    """Tune ``prep``'s model until a confirmed goal or the end of the budget; return the
    chain report. This process leads the chain; with ``workers`` > 1 it starts that many
    less one more workers on this host (``worker_argv``, a `trainchain tune` command line
    to which ``--join CHAIN`` is added), which run trials of the same study."""
    display = display or TuneDisplay.for_goal(prep.loaded.model.goal)
    session = _Session(prep, executor, display, stream_logs)
    with (
        model_lock(prep.settings.locks, prep.loaded.model.name, wait_lock),
        storage_errors(prep.settings.study_storage, "tuning"),
    ):
        session.choose()
        share_cores(workers)
        # the workers start while this process opens the study and MLflow (seconds); they
        # take trials once the study is open to them (READY_ATTR)
        with session.local_workers(workers, worker_argv):
            session.open()
            # concluded before its workers are waited for: the conclusion stops them
            return session.finish(session.search_until_stop())


@dataclass(frozen=True)
class WorkerResult:
    """What a joined worker did: the chain, the trials it ran, why it stopped."""

    chain_id: str
    trials: int
    reason: str


def join_chain(
    prep: Prepared,
    executor: Executor,
    join: str,
    *,
    display: TuneDisplay | None = None,
    stream_logs: bool = False,
    join_wait: float = 300.0,
    workers: int = 1,
    worker_argv: Sequence[str] = (),
) -> WorkerResult:
    """Run trials of an open chain as one more worker until its study says stop; never
    confirms, registers, promotes or emails (the chain's leader does). With ``workers``
    > 1, that many less one more workers of this host join it too (``worker_argv``, to
    which ``--join CHAIN`` is added)."""
    display = display or TuneDisplay.for_goal(prep.loaded.model.goal)
    session = _Session(prep, executor, display, stream_logs, join=join, join_wait=join_wait)
    with storage_errors(prep.settings.study_storage, "tuning as a worker"):
        session.open()
        share_cores(workers)
        with session.local_workers(workers, worker_argv):
            reason = session.search_until_stop()
    return WorkerResult(session.chain_id, session.ran, reason)


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
    from trainchain.core.errors import ConfigError, NotInStore

    path = chains_dir / f"{chain_id}.json"
    if path.exists():
        return ChainReport.load(path)
    run_id = tracker.find_chain_run(chain_id)
    if run_id is not None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = tracker.download(run_id, REPORT_ARTIFACT, Path(tmp))
            except NotInStore as err:  # the run exists but its report was never written
                raise ConfigError(
                    f"chain {chain_id!r} (MLflow run {run_id}) has no {REPORT_ARTIFACT}: "
                    f"{err.message}",
                    hint="the chain's tune job stopped before it finished; see its log",
                ) from err
            return ChainReport.load(local)
    raise ConfigError(
        f"no chain {chain_id!r}: not under {chains_dir} and not in MLflow at {tracker.shown_uri}",
        hint="chain ids are printed by `trainchain tune` and named in each email; on another "
        "machine, point TRAINCHAIN_TRACKING_URI at the tracking server the chain used",
    )


def latest_report(chains_dir: Path, model_name: str | None = None) -> ChainReport:
    from trainchain.core.errors import ConfigError

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
