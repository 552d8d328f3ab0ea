"""The Optuna adapter: the study store, seeded TPE, and sampling the search space."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from trainchain.config import (
    CategoricalParam,
    Direction,
    FloatParam,
    IntParam,
    ModelConfig,
    Pruning,
)
from trainchain.settings import ensure_sqlite_folder

log = logging.getLogger(__name__)

# TPE learns from this many trials on; before them it samples at random.
STARTUP_TRIALS = 5


def make_pruner(pruning: Pruning) -> Any:
    """``pruning:`` of trainchain.yaml as an Optuna pruner (median rule, or none)."""
    import optuna

    if not pruning.enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=pruning.startup_trials, n_warmup_steps=pruning.warmup_steps
    )


def open_study(
    storage_url: str, name: str, direction: Direction, seed: int, *, pruner: Any = None
) -> Any:
    """Create or load study ``name``. The pruner is not stored with the study: pass it
    (:func:`make_pruner`) each time; None means no pruning."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ensure_sqlite_folder(storage_url)
    storage = optuna.storages.RDBStorage(
        storage_url,
        engine_kwargs={"connect_args": {"timeout": 60}} if storage_url.startswith("sqlite") else {},
    )
    with warnings.catch_warnings():
        # multivariate TPE is marked experimental; it models the search space jointly,
        # which is what a few trials need (see benchmarks/tuning.py)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=STARTUP_TRIALS, multivariate=True
        )
    return optuna.create_study(
        storage=storage,
        study_name=name,
        direction=direction.value,
        sampler=sampler,
        pruner=pruner if pruner is not None else optuna.pruners.NopPruner(),
        load_if_exists=True,
    )


def study_names(storage_url: str) -> list[str]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return [s.study_name for s in optuna.get_all_study_summaries(storage=storage_url)]
    except Exception:
        return []


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
