"""Checks of a family's hyperparameters, with the messages every family gives.

Each message names the hyperparameter, the value received and what was expected;
``error`` is the family's own error class (a :class:`~trainchain.families.base.FamilyDataError`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from trainchain.families.base import FamilyDataError

__all__ = ["one_of", "positive", "with_defaults"]


def with_defaults(
    params: Mapping[str, Any],
    defaults: Mapping[str, Any],
    *,
    known: Collection[str],
    pipeline: str,
    error: type[FamilyDataError],
) -> dict[str, Any]:
    """``defaults`` updated with ``params``; a name not in ``known`` is an error."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise error(
            f"unknown hyperparameter(s) {unknown}: the {pipeline} pipeline understands "
            f"{list(known)}",
            hint="rename them in search_space of trainchain.yaml",
        )
    return {**defaults, **params}


def one_of(name: str, value: Any, allowed: Collection[Any], error: type[FamilyDataError]) -> Any:
    """``value`` when it is one of ``allowed``."""
    if value not in allowed:
        raise error(f"hyperparameter {name!r}: expected one of {list(allowed)}, got {value!r}")
    return value


def positive(name: str, value: Any, error: type[FamilyDataError]) -> float:
    """``value`` as a float when it is a number > 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise error(f"hyperparameter {name!r}: expected a number > 0, got {value!r}")
    return float(value)
