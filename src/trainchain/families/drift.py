"""The drift reference on disk: ``drift_reference.json`` inside a saved model folder, so
it travels with every registered version of the model (``trainchain.core.drift``).

Each family declares its statistics (``summarise`` and ``drift_reference`` in
``families/eeg.py`` and ``families/cnn.py``); this module only writes and reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainchain.contract.task import atomic_write_bytes
from trainchain.core.drift import REFERENCE_FILE, DriftError, Reference

__all__ = ["read_reference", "write_reference"]


def write_reference(reference: Reference, model_dir: Path | str) -> Path:
    """Write ``reference`` into the saved model folder ``model_dir`` (after the flavor's
    ``save_model``, which refuses a folder that exists)."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise DriftError(
            f"{folder} is not a folder: save the model first, then write its drift reference"
        )
    target = folder / REFERENCE_FILE
    atomic_write_bytes(target, json.dumps(reference.to_dict(), allow_nan=False).encode("utf-8"))
    return target


def read_reference(path: Path | str) -> Reference:
    """The reference in ``path`` (a ``drift_reference.json`` or the model folder holding it)."""
    file = Path(path)
    if file.is_dir():
        file = file / REFERENCE_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DriftError(f"cannot read the drift reference {file}: {err}") from None
    return Reference.from_dict(data)
