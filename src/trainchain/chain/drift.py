"""`trainchain drift`: a registered version's drift reference against a batch of inputs.

The reference travels inside the version's model folder (``drift_reference.json``,
written at training time by the family's ``drift_reference``); the inputs are
summarised by the same family's ``summarise`` and tested with
:func:`trainchain.core.drift.test`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainchain.adapters.tracking import MODEL_ARTIFACT, Tracker
from trainchain.core import drift
from trainchain.core.config import Monitoring
from trainchain.core.errors import ConfigError, NotInStore, RegistryError
from trainchain.families.base import DriftMonitor, FamilyDataError, family_spec

__all__ = ["DriftCheck", "check_batch", "read_inputs"]

BATCH = 256  # inputs summarised at a time (memory stays bounded by the batch)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass(frozen=True)
class DriftCheck:
    """A version's reference tested against a batch of inputs."""

    model: str
    version: str
    family: str
    inputs: int
    result: drift.DriftResult

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "family": self.family,
            "inputs": self.inputs,
            **self.result.to_dict(),
        }


def _version(tracker: Tracker, name: str, alias: str, version: str | None) -> tuple[str, str]:
    """(version, run id) of ``--version`` or, without it, of ``--alias``."""
    if version is None:
        found = tracker.alias_version(name, alias)
        if found is None:
            raise RegistryError(
                f"{name} has no version with the alias {alias!r} in {tracker.shown_uri}",
                hint=f"`trainchain models {name}` lists its versions and aliases",
            )
        version = found
    try:
        run_id = tracker.version_run_id(name, version)
    except NotInStore:
        raise RegistryError(
            f"{name} has no version {version} in {tracker.shown_uri}",
            hint=f"`trainchain models {name}` lists its versions",
        ) from None
    if run_id is None:
        raise RegistryError(f"{name} v{version} has no training run to read its model from")
    return version, run_id


def _reference(tracker: Tracker, name: str, version: str, run_id: str, dst: Path) -> Path:
    """The version's model folder, downloaded; a clear error when it holds no reference."""
    local = tracker.download(run_id, MODEL_ARTIFACT, dst)
    if not (local / drift.REFERENCE_FILE).is_file():
        raise RegistryError(
            f"{name} v{version} has no drift reference ({drift.REFERENCE_FILE} in its model "
            "folder): it was trained before trainchain made one, or its training script does "
            "not write it",
            hint="retrain the model with this trainchain (`trainchain run REPO`); a script "
            "of your own writes it with trainchain.families.drift.write_reference "
            "(see examples/eeg-motor-imagery/train.py)",
        )
    return local


def read_inputs(paths: Sequence[Path], reference: drift.Reference, model_dir: Path) -> Any:
    """The inputs as one array shaped like the training inputs: ``.npy`` arrays (EEG epochs
    ``(n, channels, samples)``, images ``(n, height, width, channels)``), or image files
    for an image model."""
    if not paths:
        raise ConfigError("no inputs: expected --input FILES (.npy arrays or image files)")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"input file(s) not found: {missing[:5]}")
    images = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]
    arrays = [p for p in paths if p.suffix.lower() == ".npy"]
    other = [str(p) for p in paths if p not in images and p not in arrays]
    if other:
        raise ConfigError(
            f"input file(s) {other[:5]}: expected .npy arrays or image files {IMAGE_SUFFIXES}"
        )
    parts: list[Any] = []
    if images:
        if reference.family != "cnn":
            raise ConfigError(
                f"image files given, but the model is of the {reference.family} family: "
                "expected .npy arrays"
            )
        from trainchain.families.cnn import read_images, read_preprocessing

        parts.append(read_images(images, read_preprocessing(model_dir)))
    for path in arrays:
        try:
            parts.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: not a readable .npy array: {err}") from None
    expected = reference.input_shape
    shaped = []
    sources = [*(["the image files"] if images else []), *(str(p) for p in arrays)]
    for where, part in zip(sources, parts, strict=True):
        arr = np.asarray(part)
        if expected is not None and arr.shape == expected:
            arr = arr[None]  # one input
        if expected is not None and arr.shape[1:] != expected:
            raise ConfigError(
                f"{where}: inputs of shape {arr.shape}: expected (n, "
                + ", ".join(str(d) for d in expected)
                + ") like the model's training inputs"
            )
        if arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
            raise ConfigError(f"{where}: expected a non-empty numeric array, got {arr.dtype}")
        shaped.append(arr)
    x = np.concatenate(shaped) if len(shaped) > 1 else shaped[0]
    if len(x) > drift.MAX_WINDOW:
        raise ConfigError(f"{len(x)} inputs: at most {drift.MAX_WINDOW} are tested at once")
    return x


def _monitor(reference: drift.Reference, model_dir: Path) -> DriftMonitor:
    """The drift statistics the reference's family declares, for the model in ``model_dir``."""
    try:
        spec = family_spec(reference.family)
    except FamilyDataError:
        spec = None
    if spec is None or spec.drift_monitor is None:
        raise RegistryError(
            f"the drift reference is of the family {reference.family!r}, which declares no drift "
            "statistics in this trainchain"
        )
    return spec.drift_monitor(model_dir)


def check_batch(
    tracker: Tracker,
    name: str,
    inputs: Sequence[Path],
    config: Monitoring,
    *,
    alias: str = "champion",
    version: str | None = None,
) -> DriftCheck:
    """Test ``inputs`` against the drift reference of ``name`` (``version``, else the
    version under ``alias``)."""
    from trainchain.families.drift import read_reference

    number, run_id = _version(tracker, name, alias, version)
    with tempfile.TemporaryDirectory(prefix="trainchain-drift-") as tmp:
        model_dir = _reference(tracker, name, number, run_id, Path(tmp))
        reference = read_reference(model_dir)
        x = read_inputs(list(inputs), reference, model_dir)
        summarise = _monitor(reference, model_dir)
        window = drift.Window(max(1, len(x)))
        for start in range(0, len(x), BATCH):
            summary, predictions = summarise(x[start : start + BATCH])
            window.add(summary, predictions)
        result = drift.test(reference, window, config)
    return DriftCheck(name, number, reference.family, len(x), result)
