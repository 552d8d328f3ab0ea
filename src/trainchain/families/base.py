"""The contract every model family declares, and where the family modules are.

A family module (``eeg``, ``cnn``, ``sklearn``) holds the training code a model
repository's script uses inside the family's image, and declares one :class:`FamilySpec`
as its module attribute ``SPEC``: which :class:`~trainchain.core.config.Family` it is,
what its models take as input, the MLflow flavour they are saved in and the libraries a
saved model needs to load. :func:`family_spec` finds a family's spec by importing its
module only then: importing this module imports no ML library (mne, scikit-learn,
TensorFlow), and the cnn module imports Keras only inside its functions.

A family that is monitored for drift also declares its statistics: ``drift_monitor``
loads a saved model and returns what summarises a batch of its inputs
(:data:`DriftMonitor`); ``trainchain drift`` uses it, whatever the family. The service,
which has already run the model, declares its cheaper sibling ``serving_summary``
(:data:`ServingSummary`): the summary of a request's inputs from the inputs and the
model's outputs, without running the model again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from trainchain.core.config import Family
from trainchain.core.errors import TrainchainError

__all__ = [
    "FAMILY_MODULES",
    "DriftMonitor",
    "FamilyDataError",
    "FamilySpec",
    "ServingSummary",
    "family_spec",
]

# A batch of a model's inputs -> its drift summary ({feature group: (n, features)}, the
# groups of the family's trainchain.core.drift.Reference) and the classes the model predicts.
DriftMonitor = Callable[[Any], tuple[dict[str, Any], list[str]]]

# One request's inputs (as the model takes them) and the class probabilities the model gave
# them (n, classes), or None -> their drift summary ({feature group: (n, features)}): the
# groups a service can afford per request (a millisecond), a subset of the reference's.
ServingSummary = Callable[[Any, Any], dict[str, Any]]

# Each family's module, imported by family_spec only when its spec is asked for.
FAMILY_MODULES: Mapping[Family, str] = {
    Family.EEG: "trainchain.families.eeg",
    Family.CNN: "trainchain.families.cnn",
    Family.SKLEARN: "trainchain.families.sklearn",
}


class FamilyDataError(TrainchainError, ValueError):
    """A family's data, data options or hyperparameters are wrong (each family's own error
    class derives from it)."""


@dataclass(frozen=True)
class FamilySpec:
    """What a family declares about its models."""

    family: Family
    inputs: str  # what a saved model takes as input (and serving must be given)
    flavor: str  # the MLflow flavour its models are saved in (``mlflow.<flavor>``)
    # The distributions a saved model needs to load, in the order they are pinned; those
    # not installed here are left out (tensorflow-cpu or tensorflow, whichever is).
    requirements: tuple[str, ...]
    # The family's drift statistics: the saved model's folder -> its DriftMonitor (the model
    # loaded once). None: the family declares none, and its models are not monitored.
    drift_monitor: Callable[[Path], DriftMonitor] | None = None
    # The per-request summary `trainchain serve` computes (:data:`ServingSummary`). None: the
    # family's models are served without drift monitoring.
    serving_summary: ServingSummary | None = None

    def __post_init__(self) -> None:
        if not self.requirements:
            raise ValueError(f"{self.family}: a family spec names at least one requirement")

    def pip_requirements(self) -> list[str]:
        """``name==version`` of each of ``requirements`` installed in this environment: the
        exact libraries a model saved here needs (what ``pip_requirements`` of MLflow's
        ``save_model`` takes)."""
        out = []
        for dist in self.requirements:
            try:
                out.append(f"{dist}=={importlib_metadata.version(dist)}")
            except importlib_metadata.PackageNotFoundError:
                continue
        return out


def family_spec(family: Family | str) -> FamilySpec:
    """The spec ``family``'s module declares (the module is imported now, not before)."""
    try:
        key = Family(family)
    except ValueError:
        raise FamilyDataError(
            f"unknown model family {family!r}: expected one of {[f.value for f in Family]}"
        ) from None
    module = importlib.import_module(FAMILY_MODULES[key])
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, FamilySpec) or spec.family != key:
        raise TypeError(f"{FAMILY_MODULES[key]}.SPEC is not the FamilySpec of {key}: {spec!r}")
    return spec
