"""The training contract, from the script's side (stdlib only).

A training script talks to trainchain through files and environment variables
only, so any script in any image works. This module is a small helper for
scripts that want it; it imports nothing outside the standard library.

In:
  ``TRAINCHAIN_PARAMS``        JSON file: this trial's hyperparameters
  ``TRAINCHAIN_DATA_DIR``      the data (read-only)
  ``TRAINCHAIN_DATA_OPTIONS``  JSON file: ``data.options`` of trainchain.yaml (may be absent)
  ``TRAINCHAIN_CHECKPOINT_DIR`` survives restarts: resume from it when it holds a checkpoint
  ``TRAINCHAIN_TRIAL``, ``TRAINCHAIN_ATTEMPT``  trial number and attempt (1, 2, ...)
  ``TRAINCHAIN_EARLY_STOPPING`` a JSON string (not a file), absent when disabled:
                               ``{"monitor": "val_accuracy", "mode": "max", "patience": 5,
                               "min_delta": 0.0}``; the script stops itself when ``monitor``
                               has not improved by more than ``min_delta`` for ``patience``
                               steps (``task.early_stopping()``)
  ``TRAINCHAIN_VALIDATION``    a JSON string: the validation plan of this run
                               ``{"folds": 5, "repeats": 1, "seed": 0, "purpose": "search"}``
                               (``task.validation()``): every trial of a study gets the same
                               plan, so every trial is scored on the same folds; a confirmation
                               run gets fresh fold assignments (another seed, more repeats)
Out:
  ``TRAINCHAIN_OUTPUT_DIR/metrics.json``  final metrics (``val_<metric>``, ``test_<metric>``),
                                          with the validation's per-fold scores
                                          (``val_<metric>_folds``, their mean is
                                          ``val_<metric>``) and the digest of its fold
                                          assignment (``val_folds_id``, ``task.folds_id``)
  ``TRAINCHAIN_OUTPUT_DIR/model/``        the model, saved in an MLflow flavor's format
  ``TRAINCHAIN_OUTPUT_DIR/heldout.npz``   optional: the held-out test split (arrays ``X``, ``y``)
                                          so trainchain can score champion and challenger alike
  ``TRAINCHAIN_REPORT``                   JSON lines, one per epoch or step
Exit status 0 is success; anything else is a failed attempt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ENV_PARAMS = "TRAINCHAIN_PARAMS"
ENV_DATA_DIR = "TRAINCHAIN_DATA_DIR"
ENV_DATA_OPTIONS = "TRAINCHAIN_DATA_OPTIONS"
ENV_CHECKPOINT_DIR = "TRAINCHAIN_CHECKPOINT_DIR"
ENV_OUTPUT_DIR = "TRAINCHAIN_OUTPUT_DIR"
ENV_REPORT = "TRAINCHAIN_REPORT"
ENV_TRIAL = "TRAINCHAIN_TRIAL"
ENV_ATTEMPT = "TRAINCHAIN_ATTEMPT"
ENV_EARLY_STOPPING = "TRAINCHAIN_EARLY_STOPPING"
ENV_VALIDATION = "TRAINCHAIN_VALIDATION"

METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
HELDOUT_FILE = "heldout.npz"
# metrics.json keys of the validation: ``val_<metric>`` + FOLDS_SUFFIX is the list of
# per-fold scores; FOLDS_ID_KEY the digest of the fold assignment they were scored on
FOLDS_SUFFIX = "_folds"
FOLDS_ID_KEY = "val_folds_id"
# the plan a script gets when run by hand (no TRAINCHAIN_VALIDATION)
DEFAULT_VALIDATION: dict[str, Any] = {"folds": 5, "repeats": 1, "seed": 0, "purpose": "search"}


class ContractError(RuntimeError):
    """The script was started without the environment trainchain provides."""


def _env_path(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise ContractError(
            f"the environment variable {name} is not set: this script is meant to be run by "
            "`trainchain train PATH` (or `trainchain tune`/`run`), which sets it"
        )
    return Path(value)


def params() -> dict[str, Any]:
    """This trial's hyperparameters (defaults merged with the trial's choices)."""
    with _env_path(ENV_PARAMS).open(encoding="utf-8") as f:
        loaded = json.load(f)
    if not isinstance(loaded, dict):
        raise ContractError(f"{ENV_PARAMS} must hold a JSON object, got {type(loaded).__name__}")
    return loaded


def data_dir() -> Path:
    """The data folder (read-only)."""
    return _env_path(ENV_DATA_DIR)


def data_options() -> dict[str, Any]:
    """``data.options`` from trainchain.yaml; empty when none were given."""
    value = os.environ.get(ENV_DATA_OPTIONS)
    if not value:
        return {}
    with Path(value).open(encoding="utf-8") as f:
        loaded = json.load(f)
    return dict(loaded)


def checkpoint_dir() -> Path:
    """The checkpoint folder; it survives restarts of the same trial."""
    path = _env_path(ENV_CHECKPOINT_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_dir() -> Path:
    path = _env_path(ENV_OUTPUT_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_dir() -> Path:
    """Where to save the model (MLflow flavor format). Not created: savers want it absent."""
    return output_dir() / MODEL_DIR


def heldout_path() -> Path:
    """Where to save the held-out split (``numpy.savez(path, X=..., y=...)``)."""
    return output_dir() / HELDOUT_FILE


def trial() -> int:
    return int(os.environ.get(ENV_TRIAL, "0"))


def attempt() -> int:
    return int(os.environ.get(ENV_ATTEMPT, "1"))


def early_stopping() -> dict[str, Any] | None:
    """The early-stopping policy (``monitor``, ``mode``, ``patience``, ``min_delta``), or
    None when trainchain passed none (disabled in trainchain.yaml, or run by hand)."""
    return _json_env(ENV_EARLY_STOPPING, "the policy")


def _json_env(name: str, what: str) -> dict[str, Any] | None:
    """The JSON object in environment variable ``name`` (None when unset or blank)."""
    value = os.environ.get(name, "")
    if not value.strip():
        return None
    try:
        loaded = json.loads(value)
    except ValueError as err:
        raise ContractError(
            f"{name} must hold a JSON object ({what} itself, not a file name), got "
            f"{value[:80]!r}: {err}"
        ) from None
    if not isinstance(loaded, dict):
        raise ContractError(f"{name} must hold a JSON object, got {type(loaded).__name__}")
    return loaded


def validation() -> dict[str, Any]:
    """This run's validation plan: ``folds`` (k of stratified k-fold), ``repeats`` (the
    k-fold repeated on new assignments), ``seed`` (of the assignment) and ``purpose``
    (``"search"`` for a trial, ``"confirm"`` for the confirmation of a study's best). A
    script run by hand gets :data:`DEFAULT_VALIDATION`."""
    return DEFAULT_VALIDATION | (_json_env(ENV_VALIDATION, "the plan") or {})


def folds_id(validation_indices: Iterable[Iterable[int]]) -> str:
    """A short digest of a fold assignment: the indices each fold validates on, in order.
    Two runs scored on the same folds of the same examples have the same id; trainchain
    uses it to check that every trial of a study was scored by the same estimator."""
    folds = [sorted(int(i) for i in fold) for fold in validation_indices]
    return hashlib.sha256(json.dumps(folds).encode("ascii")).hexdigest()[:16]


def _finite_value(raw: Any) -> Any:
    """A JSON-ready value: numpy scalars and arrays as plain numbers and lists (duck-typed:
    this module imports nothing outside the standard library), non-finite floats as None."""
    value = raw.tolist() if type(raw).__module__ == "numpy" and hasattr(raw, "tolist") else raw
    if isinstance(value, list | tuple):
        return [_finite_value(v) for v in value]
    if not isinstance(value, float):
        return value  # ints, bools, strings as they are
    return value if math.isfinite(value) else None


def _finite(values: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready values: numpy scalars and arrays as plain numbers and lists, NaN and
    infinities as null."""
    return {key: _finite_value(raw) for key, raw in values.items()}


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never half.

    The file gets the mode a plain ``open(path, "w")`` gives (0666 less the umask), not
    mkstemp's 0600: a model folder's files are read by the serving container's own user."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metrics(metrics: Mapping[str, Any]) -> Path:
    """Write the final metrics, atomically: numbers, and the validation's per-fold scores
    (``val_<metric>_folds``, a list) and fold-assignment digest (``val_folds_id``)."""
    path = output_dir() / METRICS_FILE
    atomic_write_bytes(path, json.dumps(_finite(metrics), indent=2).encode("utf-8"))
    return path


def report(step: int, **values: Any) -> None:
    """Append one report line: progress, heartbeat, intermediate values for pruning.

    ``step`` is the epoch or step just finished. The line also records the time,
    the trial and the attempt, so it is visible which steps ran in which attempt.
    """
    value = os.environ.get(ENV_REPORT)
    if not value:
        return  # reporting is optional: a script run by hand just trains
    line = {"step": int(step), "time": time.time(), "trial": trial(), "attempt": attempt()}
    line.update(_finite(values))
    with Path(value).open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
