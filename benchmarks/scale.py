"""Scale-out: one study shared by many workers on PostgreSQL (issue 15 item 5).

Three parts, side by side in one run, each against a PostgreSQL server of its own
(``scripts/start-postgres.sh --port 0`` in a temporary folder, stopped at the end):

A. Storage soak. ``--workers`` (default 32, far more than this machine's cores, on
   purpose) worker processes open the SAME study through trainchain's own storage code
   (``trainchain.adapters.studies.open_study``: the pool, pre-ping and reconnecting of a
   PostgreSQL storage, and the chain's heartbeats, grace ``--grace``, default the chain's
   30 s) with the chain's sampler (``make_sampler``: multivariate TPE as a constant liar;
   each worker seeded apart), the example's search space and fold pruner, and run a
   trivial objective (no training) until the study-wide budget (``--trials``) is spent.
   Each worker makes the chain's own decisions (``trainchain.chain.search.Search``: one
   view of the study per decision, the budget counted in places, a trial asked past it
   marked ``over_budget`` and never run) and does with the store what a chain's trial
   does: the dead-worker check (``fail_dead_workers``, at most once per heartbeat
   interval), the ask with its parameters, the worker's name, a heartbeat thread
   (``heartbeat``), one report per fold (``--folds``) with the pruner asked after each,
   the tell with what the chain keeps of a trial (its estimate, its run id and held-out
   figures; the leader its elapsed time) and the study's best for the trial's line. Every
   storage call is timed inside the storage (a wrapper on the study's storage object),
   and the steps around it:

   - trials per second (the study's trials over the time from the start signal to the
     last worker's end);
   - each storage call, p50 and p99 in ms; each ask (with its parameters) and each tell,
     p50 and p99, as a worker sees them: with 32 processes on 2 cores this includes
     waiting for a core;
   - storage overhead per trial: the time inside storage calls per trial (and their
     number); beside it the whole loop of a trial besides training (the decisions, the
     ask with the sampler, the reports, the tell), the worker's CPU per trial, and the
     machine's wall time per trial (elapsed / trials: what the whole machine spends per
     trial); and where the time inside the storage goes, per storage method;
   - failed, lost and duplicated trials, counted from the storage afterwards: trial
     numbers unique and 0..n-1, every trial a worker told COMPLETE or PRUNED, no trial
     told by two workers; lost = RUNNING or WAITING at the end, failed without a retry
     (a trial asked past the budget apart), or missing.

   Three runs: the stress soak (trials back to back: 32 CPU-bound processes on 2 cores,
   the machine's ceiling in trials per second); the paced soak (``--pace``, default 2 s:
   each trial waits that long across its folds, standing for training done elsewhere, so
   that 32 workers use the store concurrently as a chain's workers do, without starving
   each other of the 2 cores; ``--paced-trials``, default 640); and the kill variant
   (``--kills``, default 3): the stress soak again with workers SIGKILLed at evenly
   spaced points of the budget. A killed worker leaves its trial RUNNING; another worker
   fails it once its heartbeat is older than the grace and retries it once
   (``retry_once``); workers that find every place taken wait (bounded: grace + a beat +
   5 s) for the other workers' RUNNING trials, so that a killed trial near the end is
   retried too. A worker killed between its ask and its trial's first heartbeat leaves a
   RUNNING trial without any heartbeat, which the chain fails once older than the grace;
   the table counts those left ("never beat").

B. One worker, PostgreSQL against SQLite: the same soak with one worker and
   ``--single-trials`` trials on each (``sqlite:///`` in the temporary folder, and the
   PostgreSQL server): storage overhead per trial on each.

C. Chain scale: ``trainchain tune examples/eeg-motor-imagery --workers N`` for N in
   ``--chain-workers`` (default 1,2,4), each in a fresh TRAINCHAIN_HOME on a fresh
   PostgreSQL study storage (a new server each, so no run warm-starts from another's
   study), with ``--executor local``, the example's seed, synthetic medium EEG
   (``trainchain data synth-eeg``, written once), a fixed budget (``--chain-trials``,
   default 24, divisible by 1, 2 and 4) and a goal out of reach (``--threshold 0.99``):
   every run spends its whole budget and runs no confirmation, so each does the same
   number of trials (the pruner may still stop different trials early: the table counts
   them). Wall time from the start to the verdict (the process's end), trials per
   minute, the verdict and exit status (3: the budget ran out below the goal), and the
   ratios of the wall times to one worker's.

Targets (issue 15): storage overhead per trial (time inside storage calls) under 50 ms
at 32 workers; no lost or duplicated trial (also under kills); 2 workers reach the
verdict in at most 0.6x the time of one on this 2-core machine. The machine may be
shared: the load average is printed before and after; figures are indicative when it is
above the core count.

Progress goes to stderr, the tables to stdout. Every wait is bounded and the whole run
is capped (``--max-seconds``); the servers are stopped however the run ends and the
temporary folder deleted unless ``--keep``.

    .venv/bin/python benchmarks/scale.py [--quick] [--workers 32] [--trials 2000]
        [--kills 3] [--grace 30] [--pace 2] [--paced-trials 640] [--single-trials 300]
        [--chain-workers 1,2,4] [--chain-trials 24] [--parts A,B,C] [--max-seconds 3600]
        [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import Deadline, OutOfTime, loadavg

os.environ.setdefault("MNE_LOGGING_LEVEL", "ERROR")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "eeg-motor-imagery"
START_POSTGRES = ROOT / "scripts" / "start-postgres.sh"
BIN = Path(sys.executable).parent  # .venv/bin: trainchain
OVERHEAD_TARGET_MS = 50.0  # storage overhead per trial at 32 workers
RATIO_TARGET = 0.6  # wall time with 2 workers / with 1
GRACE_S = 30  # the chain's default TRAINCHAIN_HEARTBEAT_GRACE: a silent trial's worker is dead
READY_S = 300.0  # the workers must have opened the study within this
POSTGRES_S = 120.0
CHAIN_GOAL = 0.99  # out of reach: every chain spends its whole budget


def log(text: str = "") -> None:
    print(text, file=sys.stderr, flush=True)


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``; nan when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# --------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def postgres(folder: Path, deadline: Deadline) -> Iterator[str]:
    """A PostgreSQL server of the project's script in ``folder`` (any free port); its
    study storage URL. Stopped on exit."""
    out = subprocess.run(
        [str(START_POSTGRES), "--dir", str(folder), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=deadline.limit(POSTGRES_S),
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"scripts/start-postgres.sh failed:\n{out.stderr[-3000:]}")
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.stdout.splitlines()
        if line.startswith("export ")
    )
    try:
        yield exports["TRAINCHAIN_STUDY_STORAGE"]
    finally:
        subprocess.run(
            [str(START_POSTGRES), "--stop", str(folder)],
            capture_output=True,
            timeout=POSTGRES_S,
            check=False,
        )


# --------------------------------------------------------------------------- the worker


class StorageTimer:
    """Wraps every public method of a study's storage (and the heartbeat's stale-trial
    query) on the instance: the time spent inside storage calls, outermost calls only."""

    def __init__(self, storage: Any) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.by_name: dict[str, list[float]] = {}  # name: [calls, seconds]
        self.durations: list[float] = []  # every outermost call's, in seconds
        self._depth = 0
        names = [n for n in dir(storage) if not n.startswith("_")] + ["_get_stale_trial_ids"]
        for name in names:
            method = getattr(storage, name, None)
            if callable(method):
                setattr(storage, name, self._timed(name, method))

    def _timed(self, name: str, method: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return method(*args, **kwargs)
            self._depth += 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                took = time.perf_counter() - started
                self.seconds += took
                self.calls += 1
                self.durations.append(took)
                totals = self.by_name.setdefault(name, [0, 0.0])
                totals[0] += 1
                totals[1] += took
                self._depth -= 1

        return timed


def example_model() -> Any:
    from trainchain.core.config import load_config

    return load_config(EXAMPLE).model


def open_worker_study(url: str, name: str, seed: int, budget: int, grace: int | None) -> Any:
    """The study as a chain's worker opens it: trainchain's storage (pool, pre-ping,
    reconnect), the chain's sampler (a constant liar); with ``grace``, the chain's
    heartbeats: a trial silent for ``grace`` seconds is failed and retried once."""
    from trainchain.adapters.studies import make_pruner, make_sampler, open_study

    model = example_model()
    return open_study(
        url,
        name,
        model.goal.direction,
        seed,
        pruner=make_pruner(model.pruning),
        sampler=make_sampler(seed, budget),
        max_trials=budget,
        heartbeat_grace=grace,
    )


def retry_of(trial: Any) -> int | None:
    """The number of the trial ``trial`` retries, or None."""
    from trainchain.adapters.studies import RETRY_ATTR

    found = trial.user_attrs.get(RETRY_ATTR)
    return None if found is None else int(found)


def objective(params: dict[str, Any], fold: int) -> float:
    """A trivial score of the parameters (no training)."""
    return 0.5 + 0.04 * math.sin(float(params["C"]) + params["csp_components"] + fold)


@dataclass(frozen=True)
class Spec:
    """What a soak's workers share (picklable: it crosses to spawned processes)."""

    url: str
    name: str
    budget: int
    folds: int
    grace: int | None
    pace: float = 0.0  # seconds a trial waits, standing for its training (no CPU)


def soak_model(budget: int) -> Any:
    """The EEG example's config with the soak's budget (every other setting the example's:
    its search space, goal, validation and Wilcoxon fold pruning)."""
    model = example_model()
    return model.model_copy(
        update={"budget": model.budget.model_copy(update={"max_trials": budget})}
    )


def soak_worker(index: int, spec: Spec, records: str, ready: Any, go: Any) -> None:
    """One worker process, a chain's worker with a trivial objective: the chain's own
    decisions (``trainchain.chain.search``: one view of the study per decision, the budget
    counted in places, a trial past the budget marked ``over_budget``), the chain's
    dead-worker check (at most once per heartbeat interval), the ask with its parameters,
    the worker's name, a heartbeat thread, one report per fold with the example's fold
    pruner asked after each, and the tell with what the chain keeps of a trial (its
    estimate, its MLflow run id and held-out figures; the leader, worker 0, its elapsed
    time), then the study's best for the trial's line. With heartbeats, a worker that
    finds every place taken waits (bounded) for the other workers' RUNNING trials, one of
    which may be a dead worker's. ``spec.pace`` seconds of waiting stand for a trial's
    training (no CPU). Writes one line per event to ``records`` (flushed: a killed
    worker's lines up to its kill stay): ``A number`` after an ask, ``X number`` for a
    trial asked past the budget, ``T number count_ms ask_ms report_ms tell_ms storage_ms
    calls cpu_ms`` after a tell, and at the end the storage methods' totals and the
    duration of every storage call."""
    import warnings

    import optuna

    from trainchain.adapters.studies import (
        WORKER_ATTR,
        fail_dead_workers,
        heartbeat,
        worker_id,
    )
    from trainchain.chain.search import EXCESS_ATTR, Search
    from trainchain.core.verdict import Estimate

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Optuna warns that heartbeats go with Study.optimize; the chain, like this, asks and
    # tells itself, beating while a trial runs and failing dead workers' trials first
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    model = soak_model(spec.budget)
    study = open_worker_study(spec.url, spec.name, 1000 + index, spec.budget, spec.grace)
    search = Search(study, model)
    storage = study._storage
    timer = StorageTimer(storage)
    ready.put(index)
    go.wait(READY_S)
    end_wait = 0.0 if spec.grace is None else spec.grace + max(1, spec.grace // 6) + 5.0
    waited = 0.0
    started = time.monotonic()
    with open(records, "a", buffering=1) as out:
        for _ in range(4 * spec.budget + int(2 * end_wait)):  # bounded: budget and end wait
            cpu = time.process_time()
            t0 = time.perf_counter()
            storage_before, calls_before = timer.seconds, timer.calls
            with search.view():  # the chain's loop: a candidate? stop? a free place?
                search.candidate()
                reason = search.stop_reason(failures=0, elapsed=0.0)
                free = reason is None and search.can_ask()
            if reason is not None:
                break
            if not free:
                if waited >= end_wait:
                    break
                # others' RUNNING trials: one may be a dead worker's, to fail and retry
                fail_dead_workers(study, now=True)
                time.sleep(0.5)
                waited += 0.5
                continue
            fail_dead_workers(study)  # nothing without heartbeats
            t1 = time.perf_counter()
            trial, params = search.ask()
            out.write(f"A {trial.number}\n")
            if search.place_of(trial) >= spec.budget and retry_of(trial) is None:
                trial.set_user_attr(EXCESS_ATTR, True)  # as the chain's _ask does
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                out.write(f"X {trial.number}\n")
                continue
            trial.set_user_attr(WORKER_ATTR, worker_id())
            with heartbeat(study, trial):  # nothing without heartbeats
                t2 = time.perf_counter()
                values: list[float] = []
                pruned, slept = False, 0.0
                for fold in range(spec.folds):
                    if spec.pace:
                        time.sleep(spec.pace / spec.folds)  # the fold's training, elsewhere
                        slept += spec.pace / spec.folds
                    values.append(objective(params, fold))
                    trial.report(values[-1], fold)
                    if search.prunable(fold) and trial.should_prune():
                        pruned = True
                        break
                t3 = time.perf_counter()
                if pruned:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                else:
                    estimate = Estimate(statistics.fmean(values), tuple(values), "soak-folds")
                    trial.set_user_attr("mlflow_run_id", f"run-{trial.number}")
                    trial.set_user_attr("test_value", values[-1])
                    trial.set_user_attr("test_n", 58)
                    search.tell_complete(trial, estimate)
                if index == 0:  # the leader keeps the chain's elapsed time
                    study.set_user_attr("elapsed_s", time.monotonic() - started)
                search.best()  # the trial's line shows the best so far
            t4 = time.perf_counter()
            out.write(
                f"T {trial.number} {1000 * (t1 - t0):.3f} {1000 * (t2 - t1):.3f} "
                f"{1000 * (t3 - t2 - slept):.3f} "
                f"{1000 * (t4 - t3):.3f} "
                f"{1000 * (timer.seconds - storage_before):.3f} {timer.calls - calls_before} "
                f"{1000 * (time.process_time() - cpu):.3f}\n"
            )
        for name, (calls, seconds) in timer.by_name.items():
            out.write(f"M {name} {calls:.0f} {seconds:.6f}\n")
        out.write("D " + " ".join(f"{1000 * d:.3f}" for d in timer.durations) + "\n")


# --------------------------------------------------------------------------- the soak


@dataclass
class Soak:
    """One soak's measurements and its audit of the storage."""

    label: str
    workers: int
    budget: int
    elapsed: float = 0.0
    counts: list[float] = field(default_factory=list)
    asks: list[float] = field(default_factory=list)
    reports: list[float] = field(default_factory=list)
    tells: list[float] = field(default_factory=list)
    in_storage: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)  # every storage call's, ms
    excess: int = 0  # trials asked past the budget (marked over_budget, never run)
    pace: float = 0.0
    calls: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # the worker process's CPU per trial
    methods: dict[str, list[float]] = field(default_factory=dict)  # name: [calls, seconds]
    killed: list[int] = field(default_factory=list)  # the killed workers
    states: Counter[str] = field(default_factory=Counter)
    trials: int = 0
    duplicated: int = 0  # trial numbers held by more than one trial, or missing from 0..n-1
    told_twice: int = 0  # trials told by two workers
    told_not_complete: int = 0  # told by a worker but neither COMPLETE nor PRUNED
    in_flight: int = 0  # trials a killed worker had asked for (or was asking) and not told
    retried: int = 0  # failed trials with a retry
    retry_failed: int = 0  # failed retries (a retry is retried no more: it stays failed)
    lost: int = 0  # RUNNING or WAITING at the end, failed without a retry, or missing
    silent: int = 0  # RUNNING at the end without any heartbeat (killed before its first)

    @property
    def overheads(self) -> list[float]:
        return [
            c + a + r + t
            for c, a, r, t in zip(self.counts, self.asks, self.reports, self.tells, strict=True)
        ]

    @property
    def per_second(self) -> float:
        return self.trials / self.elapsed if self.elapsed else math.nan


def run_workers(
    result: Soak, spec: Spec, records: list[Path], kills: int, deadline: Deadline
) -> None:
    """Start the workers, wait until all opened the study, give the signal, SIGKILL
    ``kills`` of them at evenly spaced points of the budget, and wait for the rest."""
    study = open_worker_study(spec.url, spec.name, 0, spec.budget, spec.grace)
    ctx = multiprocessing.get_context("spawn")  # no engine or connection crosses a fork
    ready, go = ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(
            target=soak_worker,
            args=(i, spec, str(path), ready, go),
            name=f"soak-{i}",
            daemon=True,
        )
        for i, path in enumerate(records)
    ]
    try:
        for proc in procs:
            proc.start()
        for _ in procs:
            wait = deadline.limit(READY_S)
            try:
                ready.get(timeout=wait)
            except queue.Empty as err:
                dead = [p.name for p in procs if p.exitcode is not None]
                raise RuntimeError(
                    f"the {result.label} workers did not all open the study within "
                    f"{READY_S:.0f} s (exited: {', '.join(dead) or 'none'})"
                ) from err
        log(f"    {len(procs)} workers opened the study; go")
        rng = random.Random(len(procs))  # noqa: S311 - which worker to kill, not a secret
        marks = [spec.budget * (k + 1) // (kills + 1) for k in range(kills)]
        started = shown = time.perf_counter()
        go.set()
        while any(p.is_alive() for p in procs):
            # the study is counted 4 times a second while kills are due (light beside 32
            # workers), else every 10 s for the progress line; a worker's end wakes it
            alive = [p.sentinel for p in procs if p.is_alive()]
            multiprocessing.connection.wait(alive, timeout=deadline.limit(0.25 if marks else 10))
            if marks:
                done = len(study.get_trials(deepcopy=False))
                if done >= marks[0]:
                    marks.pop(0)
                    victim = rng.choice([i for i, p in enumerate(procs) if p.is_alive()])
                    os.kill(procs[victim].pid or 0, signal.SIGKILL)
                    result.killed.append(victim)
                    log(f"    SIGKILL worker {victim} at {done} trials")
            if time.perf_counter() - shown >= 10:
                shown = time.perf_counter()
                done = len(study.get_trials(deepcopy=False))
                log(f"    {done} trials after {shown - started:.0f} s (load {loadavg()})")
        result.elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=10)
    failed = [p.name for i, p in enumerate(procs) if p.exitcode != 0 and i not in result.killed]
    if failed:
        raise RuntimeError(f"{result.label}: workers {', '.join(failed)} exited with an error")


def read_records(result: Soak, records: list[Path]) -> tuple[Counter[int], set[int], set[int]]:
    """The workers' records: the timings; trials told (how many times), asked, and asked
    but not told by a killed worker."""
    told: Counter[int] = Counter()
    asked: set[int] = set()
    open_at_kill: set[int] = set()
    for i, path in enumerate(records):
        told_here: set[int] = set()
        asked_here: set[int] = set()
        for line in path.read_text().splitlines() if path.exists() else []:
            parts = line.split()
            if parts[0] == "A" and len(parts) == 2:
                asked_here.add(int(parts[1]))
            elif parts[0] == "T" and len(parts) == 9:  # a killed worker's last line may be cut
                told_here.add(int(parts[1]))
                for values, text in zip(
                    (result.counts, result.asks, result.reports, result.tells, result.in_storage),
                    parts[2:7],
                    strict=True,
                ):
                    values.append(float(text))
                result.calls.append(int(parts[7]))
                result.cpu.append(float(parts[8]))
            elif parts[0] == "D":  # a killed worker writes none
                result.durations.extend(float(v) for v in parts[1:])
            elif parts[0] == "M" and len(parts) == 4:  # a killed worker writes none
                totals = result.methods.setdefault(parts[1], [0, 0.0])
                totals[0] += int(parts[2])
                totals[1] += float(parts[3])
        told.update(told_here)
        asked |= asked_here
        if i in result.killed:
            open_at_kill |= asked_here - told_here
    return told, asked, open_at_kill


def audit(
    result: Soak, spec: Spec, told: Counter[int], asked: set[int], open_at_kill: set[int]
) -> None:
    """Count from the storage: trials by state, duplicated numbers, trials told twice or
    told but neither COMPLETE nor PRUNED, retried and lost trials. A trial asked past the
    budget (``over_budget``, failed by its worker at once, never run) is counted apart."""
    from optuna.trial import TrialState

    from trainchain.adapters.studies import load_study
    from trainchain.chain.search import EXCESS_ATTR

    stored = load_study(spec.url, spec.name)
    if stored is None:
        raise RuntimeError(f"{result.label}: the study {spec.name!r} is not in the storage")
    trials = stored.get_trials(deepcopy=False)
    result.trials = len(trials)
    result.states = Counter(t.state.name for t in trials)
    numbers = Counter(t.number for t in trials)
    missing = set(range(len(trials))) - set(numbers)
    result.duplicated = sum(c - 1 for c in numbers.values()) + len(missing)
    by_number = {t.number: t for t in trials}
    result.told_twice = sum(c > 1 for c in told.values())
    result.told_not_complete = sum(
        n not in by_number or by_number[n].state not in (TrialState.COMPLETE, TrialState.PRUNED)
        for n in told
    )
    # the trials the kills interrupted: asked and not told by a killed worker (unless its
    # tell went through just before the kill), or not even recorded as asked (killed in
    # its ask)
    result.in_flight = sum(
        by_number[n].state not in (TrialState.COMPLETE, TrialState.PRUNED)
        and not by_number[n].user_attrs.get(EXCESS_ATTR)
        for n in open_at_kill | (set(numbers) - asked)
        if n in by_number
    )
    retried = {retry_of(t) for t in trials}
    result.excess = sum(bool(t.user_attrs.get(EXCESS_ATTR)) for t in trials)
    failed = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get(EXCESS_ATTR)]
    result.retried = sum(t.number in retried for t in failed)
    result.retry_failed = sum(retry_of(t) is not None for t in failed)
    result.lost = (
        result.states.get("RUNNING", 0)
        + result.states.get("WAITING", 0)
        + len(failed)
        - result.retried
        + len(asked - set(numbers))
    )
    result.silent = never_beat(spec.url, stored._study_id)


def never_beat(url: str, study_id: int) -> int:
    """RUNNING trials of the study that never recorded a heartbeat: Optuna's stale check
    passes them by, so a worker killed before its trial's first beat leaves it RUNNING."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sqlalchemy.text(
                    "SELECT count(*) FROM trials t LEFT JOIN trial_heartbeats h "
                    "ON h.trial_id = t.trial_id WHERE t.study_id = :study "
                    "AND t.state = 'RUNNING' AND h.trial_id IS NULL"
                ),
                {"study": study_id},
            ).scalar()
    finally:
        engine.dispose()
    return int(found or 0)


def soak(
    url: str,
    *,
    label: str,
    name: str,
    workers: int,
    budget: int,
    kills: int,
    folds: int,
    folder: Path,
    deadline: Deadline,
    grace: int | None = GRACE_S,
    pace: float = 0.0,
) -> Soak:
    """One soak: ``workers`` processes on study ``name`` of ``url``, ``kills`` of them
    SIGKILLed; its timings and the audit of its storage."""
    result = Soak(label, workers, budget)
    result.pace = pace
    spec = Spec(url, name, budget, folds, grace, pace)
    records = [folder / f"{name}-worker-{i}.txt" for i in range(workers)]
    run_workers(result, spec, records, kills, deadline)
    told, asked, open_at_kill = read_records(result, records)
    audit(result, spec, told, asked, open_at_kill)
    log(
        f"    {result.trials} trials in {result.elapsed:.1f} s: {dict(result.states)}; "
        f"duplicated {result.duplicated}, lost {result.lost}"
    )
    return result


# --------------------------------------------------------------------------- chain scale


@dataclass
class ChainRun:
    workers: int
    wall: float = math.nan
    status: int | None = None
    verdict: str = ""
    states: Counter[str] = field(default_factory=Counter)
    note: str = ""

    @property
    def finished(self) -> int:
        return self.states["COMPLETE"] + self.states["PRUNED"]

    @property
    def per_minute(self) -> float:
        return 60 * self.finished / self.wall if self.wall else math.nan


def workers_option() -> bool:
    """Whether ``trainchain tune`` has ``--workers`` (issue 15 item 1)."""
    out = subprocess.run(
        [str(BIN / "trainchain"), "tune", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return "--workers" in out.stdout


def chain_env(home: Path, url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TRAINCHAIN_", "MLFLOW_")) and k != "BUILD_URL"
    }
    env.update(
        TRAINCHAIN_HOME=str(home),
        TRAINCHAIN_STUDY_STORAGE=url,
        MNE_LOGGING_LEVEL="ERROR",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def chain_data(tmp: Path, deadline: Deadline) -> Path:
    """Synthetic medium EEG (288 cues, seed 0), as the example expects, written once."""
    data = tmp / "data" / "eeg-synth-medium-288"
    out = subprocess.run(
        [str(BIN / "trainchain"), "data", "synth-eeg", "--out", str(data)],
        capture_output=True,
        text=True,
        timeout=deadline.limit(600),
        check=False,
        env=chain_env(tmp / "data-home", ""),
    )
    if out.returncode != 0:
        raise RuntimeError(f"trainchain data synth-eeg failed:\n{out.stderr[-3000:]}")
    return data


def chain_run(workers: int, *, tmp: Path, data: Path, trials: int, deadline: Deadline) -> ChainRun:
    """``trainchain tune examples/eeg-motor-imagery --workers N`` in a fresh home on a
    fresh PostgreSQL; its wall time to the verdict, and its study's trials by state."""
    from trainchain.adapters.studies import load_study, study_names

    run = ChainRun(workers)
    home = tmp / f"chain-home-{workers}"
    with postgres(tmp / f"chain-postgres-{workers}", deadline) as url:
        cmd = [
            str(BIN / "trainchain"),
            "tune",
            str(EXAMPLE),
            "--executor",
            "local",
            "--data",
            str(data),
            "--max-trials",
            str(trials),
            "--threshold",
            str(CHAIN_GOAL),
        ]
        cmd += ["--workers", str(workers)]
        log(f"    $ {' '.join(cmd[1:])}")
        started = time.perf_counter()
        try:
            out = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=deadline.limit(3600),
                check=False,
                env=chain_env(home, url),
            )
        except subprocess.TimeoutExpired as err:
            raise OutOfTime(f"the chain with {workers} workers did not end in time") from err
        run.wall = time.perf_counter() - started
        run.status = out.returncode
        # the summary's "goal:      accuracy >= 0.99: <the verdict>" line
        run.verdict = next(
            (
                line.removeprefix("goal:").strip()
                for line in out.stdout.splitlines()
                if line.startswith("goal:")
            ),
            "",
        )
        if out.returncode not in (0, 3):
            run.note = (out.stderr.strip().splitlines() or ["(no stderr)"])[-1][:200]
            tail = (out.stdout + out.stderr)[-2000:]
            log(f"    exit {out.returncode}; the end of its output:\n{tail}")
        names = study_names(url)
        for name in names:
            study = load_study(url, name)
            if study is not None:
                run.states.update(t.state.name for t in study.get_trials(deepcopy=False))
    log(
        f"    {workers} worker(s): exit {run.status} after {run.wall:.0f} s, trials "
        f"{dict(run.states)} (load {loadavg()})"
    )
    return run


# --------------------------------------------------------------------------- report


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def yes(ok: bool | None) -> str:
    return "n/a" if ok is None else "yes" if ok else "NO"


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def storage_table(soaks: Sequence[Soak]) -> list[str]:
    head = [
        "run",
        "workers",
        "trials (budget)",
        "trials/s",
        "count / ask / report / tell, mean ms",
        "ask p50 / p99 ms",
        "tell p50 / p99 ms",
        "the loop/trial mean / p50 / p99 ms",
        "in storage/trial ms (calls)",
        "storage call p50 / p99 ms",
        "worker CPU/trial ms",
        "machine wall/trial ms",
        "killed (in flight)",
        "states",
        "duplicated",
        "told twice",
        "told, not COMPLETE",
        "lost",
    ]
    rows = []
    for s in soaks:
        over = s.overheads
        rows.append(
            [
                s.label,
                str(s.workers),
                f"{s.trials - s.excess} ({s.budget}; +{s.excess} over)",
                f"{s.per_second:.1f}",
                " / ".join(ms(mean(v)) for v in (s.counts, s.asks, s.reports, s.tells)),
                f"{ms(pct(s.asks, 50))} / {ms(pct(s.asks, 99))}",
                f"{ms(pct(s.tells, 50))} / {ms(pct(s.tells, 99))}",
                f"{ms(mean(over))} / {ms(pct(over, 50))} / {ms(pct(over, 99))}",
                f"{ms(mean(s.in_storage))} ({mean(s.calls) if s.calls else 0:.0f})",
                f"{ms(pct(s.durations, 50))} / {ms(pct(s.durations, 99))}",
                ms(mean(s.cpu)),
                ms(1000 * s.elapsed / s.trials if s.trials else math.nan),
                f"{len(s.killed)} ({s.in_flight})",
                ", ".join(f"{k} {v}" for k, v in sorted(s.states.items())),
                str(s.duplicated),
                str(s.told_twice),
                str(s.told_not_complete),
                str(s.lost),
            ]
        )
    return table(head, rows)


def methods_table(soaks: Sequence[Soak], top: int = 6) -> list[str]:
    """Where the time inside the storage goes: per run, the storage methods with the most
    time per trial (ms per trial, and calls per trial)."""
    rows = []
    for s in soaks:
        trials = max(len(s.tells), 1)
        ranked = sorted(s.methods.items(), key=lambda kv: -kv[1][1])[:top]
        rows.append(
            [
                s.label,
                ", ".join(
                    f"{name} {1000 * seconds / trials:.1f} ({calls / trials:.1f})"
                    for name, (calls, seconds) in ranked
                ),
            ]
        )
    return table(["run", "storage method: ms per trial (calls per trial), the most first"], rows)


def chain_table(runs: Sequence[ChainRun], tested: bool) -> list[str]:
    base = next((r for r in runs if r.workers == 1), None)
    head = ["workers", "wall s", "trials (complete / pruned / failed)", "trials/min", "exit"]
    head += ["verdict", "time / time(1)"]
    rows = []
    for r in runs:
        ratio = r.wall / base.wall if base is not None and base.wall else math.nan
        rows.append(
            [
                str(r.workers),
                f"{r.wall:.0f}",
                f"{r.states['COMPLETE']} / {r.states['PRUNED']} / {r.states['FAIL']}",
                f"{r.per_minute:.2f}",
                str(r.status),
                (r.verdict or r.note)[:100],
                "-" if math.isnan(ratio) else f"{ratio:.2f}",
            ]
        )
    lines = table(head, rows)
    if not tested:
        lines.append("(not run: `trainchain tune` has no --workers option yet)")
    return lines


def targets(soaks: Sequence[Soak], runs: Sequence[ChainRun]) -> list[str]:
    rows = []
    big = [s for s in soaks if s.workers >= 32 and not s.killed]
    for s in big:
        inside = mean(s.in_storage)
        rows.append(
            [
                f"storage overhead per trial < {OVERHEAD_TARGET_MS:.0f} ms at {s.workers} "
                f"workers, {s.label} (time inside storage calls, mean, as a worker sees it)",
                f"{ms(inside)} ms (p50 {ms(pct(s.in_storage, 50))}, p99 "
                f"{ms(pct(s.in_storage, 99))}; {mean(s.calls) if s.calls else 0:.0f} calls; "
                f"the whole loop of a trial besides training {ms(mean(s.overheads))} ms)",
                yes(inside < OVERHEAD_TARGET_MS),
            ]
        )
    if not big:
        rows.append(["storage overhead per trial at 32 workers", "not measured", "n/a"])
    for s in soaks:
        bad = s.duplicated + s.told_twice + s.told_not_complete + s.lost
        rows.append(
            [
                f"no lost or duplicated trial: {s.label}",
                f"failed {s.states.get('FAIL', 0) - s.excess} (retried {s.retried}; failed retries "
                f"{s.retry_failed}), duplicated "
                f"{s.duplicated}, told twice {s.told_twice}, lost {s.lost} (RUNNING left "
                f"{s.states.get('RUNNING', 0)}, of which never beat {s.silent}; WAITING left "
                f"{s.states.get('WAITING', 0)})",
                yes(bad == 0 and (bool(s.killed) or s.states.get("FAIL", 0) == s.excess)),
            ]
        )
    base = next((r for r in runs if r.workers == 1 and r.status in (0, 3)), None)
    for n in (2, 4):
        run = next((r for r in runs if r.workers == n and r.status in (0, 3)), None)
        if base is None or run is None:
            if n == 2:
                rows.append(
                    [f"2 workers in <= {RATIO_TARGET}x the time of 1", "not measured", "n/a"]
                )
            continue
        ratio = run.wall / base.wall
        rows.append(
            [
                f"{n} workers reach the verdict in <= {RATIO_TARGET}x the time of 1"
                if n == 2
                else "4 workers / 1 (no target)",
                f"{ratio:.2f} ({run.wall:.0f} s / {base.wall:.0f} s)",
                yes(ratio <= RATIO_TARGET) if n == 2 else "-",
            ]
        )
    return table(["target", "measured", "met"], rows)


def versions(url: str | None) -> str:
    import importlib.metadata

    found = []
    for name in ("optuna", "SQLAlchemy", "psycopg2-binary"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    if url:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        with contextlib.suppress(Exception), engine.connect() as conn:
            found.append(str(conn.execute(sqlalchemy.text("SHOW server_version")).scalar()))
        engine.dispose()
    return ", ".join(found)


# --------------------------------------------------------------------------- main


def parse_ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,2,4, got {text!r}")
    return values


def storage_parts(args: argparse.Namespace, tmp: Path, deadline: Deadline) -> list[Soak]:
    """Parts A and B on one PostgreSQL server (B's SQLite in ``tmp``)."""
    soaks: list[Soak] = []
    with postgres(tmp / "postgres", deadline) as url:
        args.described = versions(url)
        log(f"libraries: {args.described}")
        common = {"folds": args.folds, "folder": tmp, "deadline": deadline, "grace": args.grace}
        if "A" in args.parts:
            runs = [("A soak", 0, 0.0, args.trials)]
            if args.pace:
                runs.append((f"A soak, trials of {args.pace:g} s", 0, args.pace, args.paced_trials))
            if args.kills:
                runs.append((f"A soak, {args.kills} kills", args.kills, 0.0, args.trials))
            for k, (label, kills, pace, budget) in enumerate(runs):
                log(f"{label}: {args.workers} workers, budget {budget}")
                soaks.append(
                    soak(
                        url,
                        label=label,
                        name=f"soak-{k}",
                        workers=args.workers,
                        budget=budget,
                        kills=kills,
                        pace=pace,
                        **common,
                    )
                )
        if "B" in args.parts:
            sqlite = f"sqlite:///{tmp / 'single.db'}"
            for label, where in (("B PostgreSQL", url), ("B SQLite", sqlite)):
                log(f"{label}: 1 worker, {args.single_trials} trials")
                soaks.append(
                    soak(
                        where,
                        label=label,
                        name="single",
                        workers=1,
                        budget=args.single_trials,
                        kills=0,
                        **common,
                    )
                )
    return soaks


def chain_part(args: argparse.Namespace, tmp: Path, deadline: Deadline) -> list[ChainRun]:
    """Part C, when ``trainchain tune`` has --workers."""
    runs: list[ChainRun] = []
    args.tested = workers_option()
    if not args.tested:
        log("C. skipped: `trainchain tune` has no --workers option (issue 15 item 1)")
        return runs
    log("C. chain scale: writing synthetic medium EEG")
    data = chain_data(tmp, deadline)
    for n in args.chain_workers:
        log(f"C. the chain with {n} worker(s), budget {args.chain_trials}")
        runs.append(chain_run(n, tmp=tmp, data=data, trials=args.chain_trials, deadline=deadline))
    return runs


def report(
    args: argparse.Namespace, soaks: Sequence[Soak], runs: Sequence[ChainRun], before: str
) -> None:
    say = print
    say(f"scale benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}")
    say(
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {args.described}; load "
        f"average before {before}, after {loadavg()} (a shared machine: above "
        f"{os.cpu_count()} the figures are indicative)"
    )
    if soaks:
        say()
        say(
            f"Storage: a trivial objective (the example's search space, {args.folds} reports, "
            "no training; the paced soak waits as trials train), the chain's decisions, "
            f"storage, sampler, pruner and heartbeats (grace {args.grace} s); ms as a worker "
            "sees them (waiting for a core included); count = the decisions and the "
            "dead-worker check; the loop = count + ask (with its parameters) + report + tell"
        )
        for line in storage_table(soaks):
            say(line)
        say()
        for line in methods_table(soaks):
            say(line)
    if "C" in args.parts:
        say()
        say(
            f"Chain: trainchain tune examples/eeg-motor-imagery --executor local "
            f"--max-trials {args.chain_trials} --threshold {CHAIN_GOAL} --workers N, "
            "a fresh home and PostgreSQL each"
        )
        for line in chain_table(runs, args.tested):
            say(line)
    say()
    for line in targets(soaks, runs):
        say(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small and short")
    parser.add_argument("--workers", type=int, default=32, help="soak worker processes")
    parser.add_argument("--trials", type=int, default=2000, help="soak budget (study-wide)")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs in the kill variant")
    parser.add_argument("--folds", type=int, default=5, help="intermediate values per trial")
    parser.add_argument(
        "--grace",
        type=int,
        default=GRACE_S,
        help="seconds without a heartbeat before a trial's worker counts as dead "
        "(default: the chain's, %(default)s)",
    )
    parser.add_argument(
        "--pace",
        type=float,
        default=2.0,
        help="seconds each trial of the paced soak waits, standing for its training "
        "(0: no paced soak; default %(default)s)",
    )
    parser.add_argument("--paced-trials", type=int, default=640, help="the paced soak's budget")
    parser.add_argument("--single-trials", type=int, default=300, help="part B's trials")
    parser.add_argument(
        "--chain-workers", type=parse_ints, default=[1, 2, 4], help="part C, e.g. 1,2,4"
    )
    parser.add_argument("--chain-trials", type=int, default=24, help="part C's budget")
    parser.add_argument(
        "--parts", default="A,B,C", help="which parts to run, e.g. A,B (default: all)"
    )
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="cap on the run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.trials, args.kills = 8, 200, 1
        args.pace, args.paced_trials = 0.5, 48
        args.single_trials, args.chain_workers, args.chain_trials = 50, [1, 2], 2
    args.parts = {p.strip().upper() for p in args.parts.split(",") if p.strip()}
    if not args.parts or not args.parts <= {"A", "B", "C"}:
        parser.error("--parts takes A, B and C, comma-separated")
    if args.pace < 0:
        parser.error("--pace is seconds, 0 or more")
    if min(args.workers, args.trials, args.paced_trials, args.single_trials, args.chain_trials) < 1:
        parser.error("expected --workers, --trials, --single-trials and --chain-trials >= 1")
    if args.grace < 2:
        parser.error("--grace is whole seconds, at least 2")
    if not 0 <= args.kills < args.workers:
        parser.error("--kills must be 0 or more and leave a worker alive (below --workers)")
    args.described, args.tested = versions(None), True
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # a SIGTERM (a background run has SIGINT ignored) stops the run through its cleanup:
    # the workers killed, the servers stopped, the temporary folder deleted
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    deadline = Deadline(args.max_seconds)
    began = time.perf_counter()
    before = loadavg()
    log(f"scale benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}")
    log(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}; load {before}")
    tmp = Path(tempfile.mkdtemp(prefix="trainchain-bench-scale-", dir="/tmp"))
    tmp.chmod(0o711)  # run as root, the postgres user must enter its run folders in here
    soaks: list[Soak] = []
    runs: list[ChainRun] = []
    status = 0
    try:
        if args.parts & {"A", "B"}:
            soaks = storage_parts(args, tmp, deadline)
        if "C" in args.parts:
            runs = chain_part(args, tmp, deadline)
    except (OutOfTime, RuntimeError, subprocess.TimeoutExpired) as err:
        log(f"error: {err}")
        status = 1
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(args, soaks, runs, before)
    print(f"\n({time.perf_counter() - began:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
