"""The Optuna adapter: the study store, the sampler and pruners, warm-start trials, and
sampling the search space.

A study storage that cannot be opened, read or written is a
:class:`~trainchain.core.errors.StoreError` naming its URL (password redacted): never "no
earlier study", which would start a new study instead of resuming one."""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from trainchain.adapters.locks import sqlite_opening
from trainchain.core.config import (
    CategoricalParam,
    Direction,
    FloatParam,
    IntParam,
    ModelConfig,
    Param,
    Pruning,
)
from trainchain.core.errors import StoreError
from trainchain.core.redaction import redact
from trainchain.core.settings import ensure_sqlite_folder
from trainchain.core.space import fit_to_space

log = logging.getLogger(__name__)

# study user attributes that say whose study it is (read by later studies' warm starts)
MODEL_ATTR = "model"
COMMIT_ATTR = "commit"
GOAL_ATTR = "goal"
# trial user attributes of a trial added from an earlier study
WARM_ATTR = "warm_start"
# trial user attributes: the trial it retries (its worker died), the checkpoints it resumes
# from, and which worker runs it ("host:pid")
RETRY_ATTR = "retry_of"
CHECKPOINT_ATTR = "checkpoint_key"
WORKER_ATTR = "worker"
# seconds a SQLite study storage waits for another process's write lock
SQLITE_LOCK_TIMEOUT_S = 60
# A PostgreSQL study storage's connection pool, per process. A worker uses one connection
# at a time (a trial's storage calls are sequential); pool_size keeps that one and those of
# a few threads (Optuna's heartbeat, workers sharing the process) open, max_overflow lets a
# burst open more for a moment. With PostgreSQL's default max_connections of 100, that is
# room for dozens of single-connection workers.
PG_POOL_SIZE = 5
PG_MAX_OVERFLOW = 10
# connections older than this are replaced at checkout, before a proxy or firewall drops
# an idle one; each is pinged at checkout too (pool_pre_ping), so a dead one is replaced
PG_POOL_RECYCLE_S = 1800
# seconds one connection attempt may take (libpq's connect_timeout)
PG_CONNECT_TIMEOUT_S = 10
# seconds an opened storage keeps reconnecting after losing its server (a restart, a
# failover) before the chain fails; opening a storage does not wait: a wrong URL fails at once
PG_RECONNECT_WAIT_S = 30.0
RECONNECT_FIRST_PAUSE_S = 0.25  # doubled after each refused attempt, up to the maximum
RECONNECT_MAX_PAUSE_S = 2.0
STORE_HINT = (
    "check TRAINCHAIN_STUDY_STORAGE: the database must be reachable, and a SQLite file must "
    "be an Optuna study database this user can read and write; a study is resumed from it, "
    "so fix it rather than delete it"
)


def startup_trials(max_trials: int) -> int:
    """The start-up trials before TPE models the results, sized to the budget: all of a
    budget of up to 10 trials, 10 of a larger one (Optuna's default), at least 2; the
    chain fills them with a space-filling design, not random draws. benchmarks/tuning.py
    measured the choice: where a few categories solve the problem, TPE modelling after 2
    or 3 trials keeps to the best of those and does worse than random search, and a
    design of half the budget did no better than random search at 5 and 10 trials."""
    return max(2, min(10, max_trials))


def space_filling(
    config: ModelConfig, count: int, seed: int, *, tried: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """``count`` start-up configurations that spread over the space instead of random
    draws: each categorical's choices in shuffled cycles (no choice again before every
    other one came; a choice in ``tried`` comes last in the first cycle), each number
    from its own stratum (a Latin hypercube; on the log scale for a log parameter)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tried = tried or {}
    columns: dict[str, list[Any]] = {}
    for name, p in config.search_space.items():
        if isinstance(p, CategoricalParam):
            fresh = [c for c in p.choices if c != tried.get(name, object())]
            seen = [c for c in p.choices if c not in fresh]
            cycle = [fresh[i] for i in rng.permutation(len(fresh))] + seen
            while len(cycle) < count:
                cycle += [p.choices[i] for i in rng.permutation(len(p.choices))]
            columns[name] = cycle[:count]
            continue
        strata = (rng.permutation(count) + rng.uniform(size=count)) / max(count, 1)
        low, high = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
        values = [low + float(v) * (high - low) for v in strata]
        values = [math.exp(v) for v in values] if p.log else values
        if isinstance(p, IntParam):
            columns[name] = [
                min(p.high, p.low + p.step * round((v - p.low) / p.step)) for v in values
            ]
        else:
            columns[name] = [min(p.high, max(p.low, v)) for v in values]
    return [{name: columns[name][i] for name in config.search_space} for i in range(count)]


def make_sampler(seed: int, max_trials: int, startup: int | None = None) -> Any:
    """Multivariate TPE (it models the search space jointly, which is what a few trials
    need), its start-up sized to the budget unless ``startup`` is given (the chain fills
    the start-up with :func:`space_filling` configurations; TPE would draw at random).
    With several workers, the trials still running count as if they had scored badly
    (a constant liar), so two workers do not propose the same point."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=startup_trials(max_trials) if startup is None else startup,
            multivariate=True,
            constant_liar=True,
        )


@functools.cache
def _fold_pruner_class() -> type:
    import optuna
    from optuna.trial import TrialState

    class _View:
        """What WilcoxonPruner reads of a study: its direction and its best trial."""

        def __init__(self, direction: Any, best_trial: Any) -> None:
            self.direction = direction
            self.best_trial = best_trial

    class FoldPruner(optuna.pruners.BasePruner):
        """Optuna's WilcoxonPruner, fold by fold against the best of this study's own
        trials: trials added from earlier studies (a warm start) were scored on other
        code, so they inform the sampler but never decide a pruning."""

        def __init__(self, p_threshold: float, n_startup_steps: int) -> None:
            # before this many folds Wilcoxon's rule never prunes: no need to read the study
            self._first = max(2, n_startup_steps)
            # (the storage and trial, its best trial)
            self._best_for: tuple[tuple[int, int], Any] | None = None
            with warnings.catch_warnings():  # marked experimental since Optuna 3.6
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._wilcoxon = optuna.pruners.WilcoxonPruner(
                    p_threshold=p_threshold, n_startup_steps=n_startup_steps
                )

        def prune(self, study: Any, trial: Any) -> bool:
            if len(trial.intermediate_values) < self._first:
                return False
            # the best trial is read once per trial, at its first fold that may prune it:
            # a read of a shared storage costs milliseconds, and a best that others
            # improve meanwhile only makes the rule milder for the rest of this trial
            key = (id(study._storage), trial._trial_id)
            if self._best_for is None or self._best_for[0] != key:
                self._best_for = (key, self._best(study))
            best = self._best_for[1]
            if best is None:
                return False
            view: Any = _View(study.direction, best)
            return bool(self._wilcoxon.prune(view, trial))

        @staticmethod
        def _best(study: Any) -> Any:
            own = [
                t
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if not t.user_attrs.get(WARM_ATTR) and t.intermediate_values and t.value is not None
            ]
            if not own:
                return None
            maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
            return (max if maximize else min)(own, key=lambda t: t.value)

    return FoldPruner


@functools.cache
def _halving_pruner_class() -> type:
    import optuna
    from optuna.trial import TrialState

    class HalvingPruner(optuna.pruners.BasePruner):
        """Optuna's asynchronous successive halving (its rungs at ``min_resource x
        reduction_factor^k`` steps; a trial goes on past a rung only when its value there
        is among the best ``1/reduction_factor`` of the trials that reached it, the first
        trials at a rung against the best of them), with the other rules' start-up: no
        trial is pruned before ``startup_trials`` of this study's own trials completed.
        The rung values are recorded all the same, so the start-up trials compete at the
        rungs of later ones."""

        def __init__(self, min_resource: int, reduction_factor: int, startup_trials: int):
            self._halving = optuna.pruners.SuccessiveHalvingPruner(
                min_resource=min_resource, reduction_factor=reduction_factor
            )
            self._startup = startup_trials

        def prune(self, study: Any, trial: Any) -> bool:
            if not self._halving.prune(study, trial):
                return False
            if self._startup == 0:
                return True
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            return sum(not t.user_attrs.get(WARM_ATTR) for t in done) >= self._startup

    return HalvingPruner


def make_pruner(pruning: Pruning) -> Any:
    """``pruning:`` of trainchain.yaml as an Optuna pruner: the median rule (steps are
    epochs), the Wilcoxon rule (steps are the study's folds), successive halving (steps
    are epochs), or none."""
    import optuna

    if not pruning.enabled:
        return optuna.pruners.NopPruner()
    if pruning.rule == "wilcoxon":
        return _fold_pruner_class()(
            p_threshold=pruning.p_threshold, n_startup_steps=max(2, pruning.warmup_steps)
        )
    if pruning.rule == "halving":
        return _halving_pruner_class()(
            min_resource=max(1, pruning.warmup_steps),
            reduction_factor=pruning.reduction_factor,
            startup_trials=pruning.startup_trials,
        )
    return optuna.pruners.MedianPruner(
        n_startup_trials=pruning.startup_trials, n_warmup_steps=pruning.warmup_steps
    )


def _first_line(err: BaseException) -> str:
    """The first non-empty line of ``err``'s message, URL passwords redacted."""
    return redact(next((line for line in str(err).splitlines() if line.strip()), ""))


def _shown(storage: Any) -> str:
    return redact(storage) if isinstance(storage, str) else type(storage).__name__


@contextmanager
def storage_errors(storage: Any, doing: str) -> Iterator[None]:
    """Optuna's and its database's errors while ``doing`` as a :class:`StoreError` naming
    the storage (password redacted) and saying what to do."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
        # Optuna's StorageInternalError says only "an exception is raised during the
        # commit"; the database's own error is its cause
        cause = err.__cause__ if isinstance(err.__cause__, SQLAlchemyError) else err
        raise StoreError(
            f"the study storage {_shown(storage)} failed while {doing}: {_first_line(cause)}",
            hint=STORE_HINT,
        ) from err


def _is_postgres(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] == "postgresql"


def _engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for a storage URL: SQLite waits ``SQLITE_LOCK_TIMEOUT_S``
    for its lock; PostgreSQL gets a pool for several workers, pinged and recycled, and a
    connect timeout; other databases SQLAlchemy's defaults."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}
    if _is_postgres(url):
        return {
            "pool_size": PG_POOL_SIZE,
            "max_overflow": PG_MAX_OVERFLOW,
            "pool_pre_ping": True,
            "pool_recycle": PG_POOL_RECYCLE_S,
            "connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S},
        }
    return {}


def _reconnect_with_wait(engine: Any, url: str, wait: float) -> None:
    """Make ``engine`` retry a connection its server refuses for up to ``wait`` seconds,
    then raise a :class:`StoreError` naming ``url`` (password redacted).

    The pool opens a connection when it has none left to give or its pre-ping found one
    dead: after a restart, every storage call reconnects through here. Only connecting is
    retried, never a statement, so no trial is created or told twice."""
    from sqlalchemy import event

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        dbapi = dialect.loaded_dbapi
        deadline = time.monotonic() + wait
        pause, attempt, detail = RECONNECT_FIRST_PAUSE_S, 0, ""
        # every pause but the last is at least the first one: the deadline comes first
        while attempt <= wait / RECONNECT_FIRST_PAUSE_S:
            attempt += 1
            try:
                return dbapi.connect(*cargs, **cparams)
            except dbapi.OperationalError as err:
                detail = _first_line(err)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if attempt == 1:
                    log.warning(
                        "lost the connection to the study storage %s (%s); reconnecting "
                        "for up to %g s",
                        redact(url),
                        detail,
                        wait,
                    )
                time.sleep(min(pause, left))
                pause = min(pause * 2, RECONNECT_MAX_PAUSE_S)
        raise StoreError(
            f"lost the connection to the study storage {redact(url)} and could not "
            f"reconnect within {wait:g} s ({attempt} attempts): {detail}",
            hint="start the database server again, or check that it is reachable "
            "(scripts/start-postgres.sh starts one), then run the same command again: the "
            "study resumes from its storage",
        )


def _storage(storage: Any, heartbeat_grace: int | None = None) -> Any:
    """An Optuna storage: a URL becomes an RDB storage (engine options of
    :func:`_engine_kwargs`; an opened PostgreSQL storage reconnects for up to
    ``PG_RECONNECT_WAIT_S`` after losing its server); a storage object (an
    ``InMemoryStorage`` in a benchmark) is used as it is. With ``heartbeat_grace``, a
    running trial records a heartbeat (:func:`heartbeat`) and one silent for that many
    seconds is failed and retried once (:func:`fail_dead_workers`, :func:`retry_once`)."""
    import optuna

    if not isinstance(storage, str):
        return storage
    ensure_sqlite_folder(storage)
    beats: dict[str, Any] = {}
    if heartbeat_grace is not None:
        beats = {
            "heartbeat_interval": heartbeat_interval(heartbeat_grace),
            "grace_period": heartbeat_grace,
            "heartbeat_stale_trial_callback": retry_once,
        }
    with sqlite_opening(storage), storage_errors(storage, "opening it"), warnings.catch_warnings():
        # heartbeats are marked experimental since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            backend = optuna.storages.RDBStorage(
                storage, engine_kwargs=_engine_kwargs(storage), **beats
            )
        except ImportError as err:  # a database URL whose driver is not installed
            raise StoreError(
                f"cannot open the study storage {redact(storage)}: {err}",
                hint="install the database driver its URL names (postgresql:// needs "
                "psycopg2-binary, mysql:// needs PyMySQL), or use a sqlite:/// URL",
            ) from err
    if _is_postgres(storage):
        _reconnect_with_wait(backend.engine, storage, PG_RECONNECT_WAIT_S)
    return backend


def open_study(
    storage: Any,
    name: str,
    direction: Direction,
    seed: int,
    *,
    pruner: Any = None,
    sampler: Any = None,
    max_trials: int = 20,
    startup: int | None = None,
    heartbeat_grace: int | None = None,
) -> Any:
    """Create or load study ``name``. Neither pruner nor sampler is stored with the study:
    pass them each time; None means no pruning and :func:`make_sampler`. With
    ``heartbeat_grace``, trials run under :func:`heartbeat` (see :func:`_storage`)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = _storage(storage, heartbeat_grace)
    with storage_errors(storage, f"opening study {name!r}"):
        return optuna.create_study(
            storage=backend,
            study_name=name,
            direction=direction.value,
            sampler=sampler if sampler is not None else make_sampler(seed, max_trials, startup),
            pruner=pruner if pruner is not None else optuna.pruners.NopPruner(),
            load_if_exists=True,
        )


def load_study(storage: Any, name: str) -> Any | None:
    """Study ``name`` as it is stored, or None when the storage has no study of that name
    (a storage that cannot be read raises :class:`StoreError`)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = _storage(storage)
    with storage_errors(storage, f"loading study {name!r}"):
        try:
            return optuna.load_study(study_name=name, storage=backend)
        except KeyError:  # Optuna's answer for a study name the storage does not hold
            return None


def study_names(storage: Any) -> list[str]:
    """The names of the studies in ``storage``; an empty or new storage has none. A
    storage that cannot be read raises :class:`StoreError`: the answer decides whether a
    study is resumed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = _storage(storage)
    with storage_errors(storage, "listing its studies"):
        return [
            s.study_name
            for s in optuna.get_all_study_summaries(storage=backend, include_best_trial=False)
        ]


def distribution(param: Param) -> Any:
    """The Optuna distribution of one hyperparameter (what :func:`suggest` samples)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if isinstance(param, IntParam):
        return IntDistribution(param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, FloatParam):
        return FloatDistribution(param.low, param.high, log=param.log)
    return CategoricalDistribution(list(param.choices))


def suggest(trial: Any, config: ModelConfig) -> dict[str, Any]:
    """This trial's hyperparameters. An enqueued trial (defaults, champion, retry) gets
    its fixed values back from the same calls."""
    params: dict[str, Any] = {}
    for name, p in config.search_space.items():
        if isinstance(p, IntParam):
            params[name] = trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
        elif isinstance(p, FloatParam):
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        elif isinstance(p, CategoricalParam):
            params[name] = trial.suggest_categorical(name, list(p.choices))
    return params


# --------------------------------------------------------------------------- workers


def heartbeat_interval(grace: int) -> int:
    """Seconds between a running trial's heartbeats: a sixth of the grace (at least 1), so
    that a few lost beats (a busy database) never make a live worker look dead."""
    return max(1, grace // 6)


def worker_id() -> str:
    """This process as a study's trials name their worker: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(worker: str) -> bool | None:
    """Whether ``worker`` (a :func:`worker_id`) still runs: None when it is on another host
    (only its heartbeats can tell)."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """Record ``trial``'s heartbeat while the block runs (a thread of Optuna's; nothing
    when the study's storage has no heartbeat)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield


def enqueue_retry(study: Any, trial: Any) -> None:
    """Enqueue ``trial`` again with its parameters and its checkpoints, as a retry of it
    (the retry takes no new place in the budget)."""
    key = trial.user_attrs.get(CHECKPOINT_ATTR, trial.number)
    study.enqueue_trial(
        dict(trial.params), user_attrs={RETRY_ATTR: trial.number, CHECKPOINT_ATTR: key}
    )


def retry_once(study: Any, trial: Any) -> None:
    """The storage's callback for a trial whose worker stopped beating (Optuna has just
    failed it): retried once from its checkpoints; a retry that dies too stays failed."""
    if trial.user_attrs.get(RETRY_ATTR) is not None:
        log.warning(
            "trial %d (a retry of trial %s) lost its worker %s too: it stays failed",
            trial.number,
            trial.user_attrs.get(RETRY_ATTR),
            trial.user_attrs.get(WORKER_ATTR, "?"),
        )
        return
    log.warning(
        "trial %d lost its worker %s (no heartbeat): it is retried from its checkpoints",
        trial.number,
        trial.user_attrs.get(WORKER_ATTR, "?"),
    )
    enqueue_retry(study, trial)


def trial_state(study: Any, trial: Any) -> Any:
    """``trial``'s state as stored now (another worker may have failed it): one row read."""
    return study._storage.get_trial(trial._trial_id).state


# when each study (by id) was last checked for dead workers by this process
_last_check: dict[int, float] = {}


def fail_dead_workers(study: Any, *, now: bool = False) -> None:
    """Fail the running trials whose worker stopped beating, and retry each once
    (:func:`retry_once`); nothing without heartbeats. A trial that never beat at all (its
    worker died between asking for it and its first heartbeat, a moment Optuna's own
    check passes by) counts as dead once it is older than the grace.

    A look costs two reads of the storage; a worker asking for trials faster than its
    heartbeat interval looks once per interval (a dead worker is one silent for the
    whole grace, six intervals), unless ``now``."""
    import optuna
    from optuna.trial import TrialState

    backend = getattr(study._storage, "_backend", study._storage)
    grace = getattr(backend, "grace_period", None)
    if grace is None:
        return
    key, clock = id(study), time.monotonic()
    if not now and clock - _last_check.get(key, -math.inf) < heartbeat_interval(grace):
        return
    _last_check[key] = clock
    with warnings.catch_warnings():  # marked experimental since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for trial in _never_beat(study):
        try:
            changed = study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        if changed:
            retry_once(study, trial)


def _never_beat(study: Any) -> list[Any]:
    """The running trials older than the storage's grace that have no heartbeat."""
    import datetime

    import optuna
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    backend = getattr(study._storage, "_backend", study._storage)
    if not isinstance(backend, optuna.storages.RDBStorage) or backend.grace_period is None:
        return []
    now = datetime.datetime.now()  # naive local time, as Optuna stamps datetime_start
    old = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None
        and (now - t.datetime_start).total_seconds() > backend.grace_period
    ]
    if not old:
        return []
    beat = models.TrialHeartbeatModel.trial_id
    with backend.engine.connect() as conn:
        beating = {
            row[0]
            for row in conn.execute(
                sqlalchemy.select(beat).where(beat.in_([t._trial_id for t in old]))
            )
        }
    return [t for t in old if t._trial_id not in beating]


# --------------------------------------------------------------------------- warm start


@dataclass(frozen=True)
class EarlierTrial:
    """A finished trial of an earlier study of the same model, fitted to this space."""

    params: dict[str, Any]
    value: float
    study: str
    commit: str
    number: int
    intermediate: dict[int, float] = field(default_factory=dict)


def mark_study(study: Any, model: ModelConfig, commit: str) -> None:
    """Say whose study this is, so that later studies of the model can start from it."""
    study.set_user_attr(MODEL_ATTR, model.name)
    study.set_user_attr(COMMIT_ATTR, commit)
    study.set_user_attr(GOAL_ATTR, [model.goal.val_metric, model.goal.direction.value])


def earlier_trials(
    storage: Any, model: ModelConfig, *, exclude: Iterable[str] = (), limit: int = 500
) -> list[EarlierTrial]:
    """Finished trials of earlier studies of ``model`` (same name, same goal metric and
    direction) whose parameters fit its current search space; at most ``limit``, the
    best first. Trials that were themselves warm starts are not copied again."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    skip = set(exclude)
    goal = [model.goal.val_metric, model.goal.direction.value]
    backend = _storage(storage)
    found: list[EarlierTrial] = []
    with storage_errors(storage, "reading earlier studies"):
        summaries = optuna.get_all_study_summaries(storage=backend, include_best_trial=False)
    for summary in summaries:
        attrs = summary.user_attrs
        if summary.study_name in skip or attrs.get(MODEL_ATTR) != model.name:
            continue
        if list(attrs.get(GOAL_ATTR, [])) != goal:
            continue
        with storage_errors(storage, f"reading study {summary.study_name!r}"):
            study = optuna.load_study(study_name=summary.study_name, storage=backend)
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for t in trials:
            if t.user_attrs.get(WARM_ATTR) or t.value is None:
                continue
            params = fit_to_space(model, t.params)
            if params is None:
                continue
            found.append(
                EarlierTrial(
                    params=params,
                    value=float(t.value),
                    study=summary.study_name,
                    commit=str(attrs.get(COMMIT_ATTR, "")),
                    number=t.number,
                    intermediate=dict(t.intermediate_values),
                )
            )
    maximize = model.goal.direction is Direction.MAXIMIZE
    found.sort(key=lambda e: -e.value if maximize else e.value)
    return found[:limit]


def add_warm_trials(study: Any, model: ModelConfig, trials: Sequence[EarlierTrial]) -> int:
    """Add ``trials`` to ``study`` as finished trials the sampler learns from, each tagged
    with its study and commit; returns how many were added."""
    import optuna

    distributions = {name: distribution(p) for name, p in model.search_space.items()}
    study.add_trials(
        [
            optuna.trial.create_trial(
                params=t.params,
                distributions=distributions,
                value=t.value,
                intermediate_values=t.intermediate,
                user_attrs={
                    WARM_ATTR: True,
                    "from_study": t.study,
                    "from_trial": t.number,
                    "commit": t.commit,
                },
            )
            for t in trials
        ]
    )
    return len(trials)


def best_distinct(trials: Sequence[EarlierTrial], count: int) -> list[dict[str, Any]]:
    """The parameters of the best ``count`` distinct configurations (``trials`` sorted best
    first)."""
    out: list[dict[str, Any]] = []
    for t in trials:
        if len(out) >= count:
            break
        if t.params not in out:
            out.append(t.params)
    return out
