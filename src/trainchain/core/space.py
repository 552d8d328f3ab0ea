"""The search space, as plain functions: overrides from ``--set k=v``, and checks of values.

Pure logic: sampling new values is the Optuna adapter's job (``studies.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from trainchain.core.config import CategoricalParam, FloatParam, IntParam, ModelConfig, Param
from trainchain.core.errors import ConfigError


def _convert(name: str, raw: str, param: Param) -> Any:
    if isinstance(param, IntParam):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"--set {name}={raw!r}: expected an integer") from None
    if isinstance(param, FloatParam):
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"--set {name}={raw!r}: expected a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"--set {name}={raw!r}: expected a finite number")
        return value
    # categorical: match the choice's own type ("1" may mean 1, "true" may mean True)
    for choice in param.choices:
        if str(choice) == raw or (choice is None and raw.lower() in {"null", "none"}):
            return choice
    parsed = yaml.safe_load(raw) if raw else raw
    if parsed in param.choices:
        return parsed
    raise ConfigError(f"--set {name}={raw!r}: expected one of {list(param.choices)}")


def parse_overrides(config: ModelConfig, pairs: Iterable[str]) -> dict[str, Any]:
    """``["C=10", "kernel=linear"]`` -> typed values, checked against the search space."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--set {pair!r}: expected NAME=VALUE")
        if name not in config.search_space:
            raise ConfigError(
                f"--set {name}: not a hyperparameter of {config.name}",
                hint=f"known: {', '.join(sorted(config.search_space))}",
            )
        out[name] = _convert(name, raw.strip(), config.search_space[name])
    check_values(config, out)
    return out


def _in_space(value: Any, param: Param) -> bool:
    if isinstance(param, CategoricalParam):
        return value in param.choices
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(param, IntParam) and not float(value).is_integer():
        return False
    return param.low <= value <= param.high


def check_values(config: ModelConfig, values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        param = config.search_space[name]
        if not _in_space(value, param):
            expected = (
                f"one of {list(param.choices)}"
                if isinstance(param, CategoricalParam)
                else f"a {param.type} in [{param.low}, {param.high}]"
            )
            raise ConfigError(f"hyperparameter {name}={value!r}: expected {expected}")


def fit_to_space(config: ModelConfig, values: Mapping[str, Any]) -> dict[str, Any] | None:
    """Values for every hyperparameter of the space taken from ``values`` (a champion's
    parameters), or None when any is missing or outside the space."""
    out: dict[str, Any] = {}
    for name, param in config.search_space.items():
        if name not in values:
            return None
        value = values[name]
        if isinstance(param, IntParam) and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _in_space(value, param):
            return None
        out[name] = value
    return out


def unused(config: ModelConfig, params: Mapping[str, Any]) -> tuple[str, ...]:
    """The hyperparameters of ``params`` their ``when:`` says a trial with ``params`` did
    not use (``kernel`` when ``classifier`` is ``sgd``)."""
    out = []
    for name in params:
        param = config.search_space.get(name)
        when = param.when if param is not None else None
        if when and any(params.get(other) not in values for other, values in when.items()):
            out.append(name)
    return tuple(out)


def used(config: ModelConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` without :func:`unused`'s."""
    skip = set(unused(config, params))
    return {k: v for k, v in params.items() if k not in skip}
