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
Out:
  ``TRAINCHAIN_OUTPUT_DIR/metrics.json``  final metrics (``val_<metric>``, ``test_<metric>``)
  ``TRAINCHAIN_OUTPUT_DIR/model/``        the model, saved in an MLflow flavor's format
  ``TRAINCHAIN_OUTPUT_DIR/heldout.npz``   optional: the held-out test split (arrays ``X``, ``y``)
                                          so trainchain can score champion and challenger alike
  ``TRAINCHAIN_REPORT``                   JSON lines, one per epoch or step
Exit status 0 is success; anything else is a failed attempt.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
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

METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
HELDOUT_FILE = "heldout.npz"


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
    value = os.environ.get(ENV_EARLY_STOPPING, "")
    if not value.strip():
        return None
    try:
        loaded = json.loads(value)
    except ValueError as err:
        raise ContractError(
            f"{ENV_EARLY_STOPPING} must hold a JSON object (the policy itself, not a file "
            f"name), got {value[:80]!r}: {err}"
        ) from None
    if not isinstance(loaded, dict):
        raise ContractError(
            f"{ENV_EARLY_STOPPING} must hold a JSON object, got {type(loaded).__name__}"
        )
    return loaded


def _finite(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in values.items():
        # numpy scalars (np.int64, np.float32) as plain numbers
        value = raw.item() if type(raw).__module__ == "numpy" and hasattr(raw, "item") else raw
        if not isinstance(value, float):
            out[key] = value  # ints, bools, strings as they are
        elif math.isfinite(value):
            out[key] = value
        else:
            out[key] = None
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metrics(metrics: Mapping[str, float]) -> Path:
    """Write the final metrics, atomically."""
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
