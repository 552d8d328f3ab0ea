"""``trainchain.yaml``: the model repository's contract, read once into frozen objects.

Pure logic: no framework beyond pydantic (validation) and PyYAML (parsing).
Every error names the key, the value received and what was expected.
"""

from __future__ import annotations

import difflib
import enum
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trainchain.core.errors import ConfigError

CONFIG_FILE = "trainchain.yaml"


class Direction(enum.StrEnum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


class Family(enum.StrEnum):
    EEG = "eeg"
    CNN = "cnn"
    SKLEARN = "sklearn"


# The range of each metric trainchain knows, by base name (``val_``/``test_`` stripped).
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0),
    "balanced_accuracy": (0.0, 1.0),
    "f1": (0.0, 1.0),
    "f1_macro": (0.0, 1.0),
    "precision": (0.0, 1.0),
    "recall": (0.0, 1.0),
    "roc_auc": (0.0, 1.0),
    "kappa": (-1.0, 1.0),
    "loss": (0.0, math.inf),
    "mse": (0.0, math.inf),
    "rmse": (0.0, math.inf),
    "mae": (0.0, math.inf),
}


def base_metric(metric: str) -> str:
    """``val_accuracy`` and ``test_accuracy`` are both the metric ``accuracy``."""
    return re.sub(r"^(val|test)_", "", metric)


def metric_range(metric: str) -> tuple[float, float] | None:
    return METRIC_RANGES.get(base_metric(metric))


def _int_as_float(v: Any) -> Any:
    """Strict mode keeps ``1`` from being a float; in YAML ``1`` and ``1.0`` mean the same."""
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


Real = Annotated[float, BeforeValidator(_int_as_float)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Goal(_Frozen):
    metric: str = "accuracy"
    threshold: Real
    direction: Direction = Direction.MAXIMIZE

    @field_validator("direction", mode="before")
    @classmethod
    def _direction(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return Direction(v)
            except ValueError:
                raise ValueError(f"expected 'maximize' or 'minimize', got {v!r}") from None
        return v

    @field_validator("threshold")
    @classmethod
    def _threshold_in_range(cls, v: float, info: ValidationInfo) -> float:
        # the error is the threshold's own (goal.threshold, or --threshold), not the goal's
        metric = info.data.get("metric")
        bounds = metric_range(metric) if isinstance(metric, str) else None
        if bounds is not None and not bounds[0] <= v <= bounds[1]:
            low, high = bounds
            expected = f"from {low:g} to {high:g}" if math.isfinite(high) else f">= {low:g}"
            raise ValueError(
                f"outside the range of metric {metric!r}: expected a number {expected}"
            )
        return v

    @property
    def val_metric(self) -> str:
        """The metric tuning optimises: the script's validation value."""
        return self.metric if self.metric.startswith("val_") else f"val_{self.metric}"

    @property
    def test_metric(self) -> str:
        return "test_" + base_metric(self.metric)

    def reached(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.direction is Direction.MAXIMIZE:
            return value >= self.threshold
        return value <= self.threshold


class Budget(_Frozen):
    max_trials: int = Field(20, ge=1, le=10_000)
    timeout: Real = Field(3600.0, gt=0, le=7 * 24 * 3600)
    seed: int = 0
    max_consecutive_failures: int = Field(3, ge=1, le=100)
    # trials the sampler draws at random before it models the results; None: sized to
    # max_trials (trainchain.adapters.studies.startup_trials)
    startup_trials: int | None = Field(None, ge=0, le=1000)


def _level(name: str, v: float) -> float:
    """A significance level: a number above 0 and below 0.5."""
    if not (math.isfinite(v) and 0.0 < v < 0.5):
        raise ValueError(
            f"{name} {v!r} is not a significance level: expected a number above 0 and below "
            "0.5, such as 0.05 (the chance of a false claim the chain accepts)"
        )
    return v


class Validation(_Frozen):
    """The study's estimator: stratified k-fold cross-validation of the development part,
    the same folds for every trial (passed to the script as TRAINCHAIN_VALIDATION)."""

    folds: int = Field(5, ge=2, le=100)
    repeats: int = Field(1, ge=1, le=100)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    def plan(
        self, *, repeats: int | None = None, seed: int | None = None, purpose: str = "search"
    ) -> dict[str, Any]:
        """The plan passed to the script as TRAINCHAIN_VALIDATION (``task.validation()``)."""
        return {
            "folds": self.folds,
            "repeats": self.repeats if repeats is None else repeats,
            "seed": self.seed if seed is None else seed,
            "purpose": purpose,
        }


class Confirmation(_Frozen):
    """How a goal reached on the search's validation is confirmed, on data the search did
    not select on: ``refit``, the candidate's hyperparameters trained and validated again
    on ``repeats`` fresh fold assignments; ``heldout``, the candidate's own accuracy on the
    held-out test set, which no trial's score ever used (no second training: for models
    whose training is long and whose held-out set is large). Confirmed when the one-sided
    bound at ``alpha`` (shared by at most ``candidates`` confirmations per chain) meets the
    threshold."""

    method: Literal["refit", "heldout"] = "refit"
    repeats: int = Field(4, ge=1, le=100)
    alpha: Real = 0.05
    candidates: int = Field(2, ge=1, le=10)

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        return _level("alpha", v)


Scalar = str | int | float | bool | None


class _ParamBase(_Frozen):
    # Applies only when each named categorical hyperparameter takes one of the listed
    # values (``kernel: {..., when: {classifier: [svc]}}``): still sampled, but console,
    # report and email leave it out of a trial that did not use it.
    when: dict[str, tuple[Scalar, ...]] | None = None

    @field_validator("when", mode="before")
    @classmethod
    def _lists_are_tuples(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: tuple(x) if isinstance(x, list) else x for k, x in v.items()}
        return v


class IntParam(_ParamBase):
    type: Literal["int"]
    low: int
    high: int
    default: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_numeric(self.low, self.high, self.default, self.log)
        return self


class FloatParam(_ParamBase):
    type: Literal["float"]
    low: Real
    high: Real
    default: Real
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_numeric(self.low, self.high, self.default, self.log)
        return self


class CategoricalParam(_ParamBase):
    type: Literal["categorical"]
    choices: tuple[Scalar, ...] = Field(min_length=1)
    default: Scalar

    @field_validator("choices", mode="before")
    @classmethod
    def _list_is_tuple(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        if self.default not in self.choices:
            raise ValueError(
                f"default {self.default!r} is not one of the choices {list(self.choices)}"
            )
        return self


def _check_numeric(low: float, high: float, default: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low {low} is greater than high {high}: expected low <= high")
    if not low <= default <= high:
        raise ValueError(f"default {default} is outside [{low}, {high}]")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0, got low {low}")


Param = Annotated[IntParam | FloatParam | CategoricalParam, Field(discriminator="type")]


class Data(_Frozen):
    path: str = "data"
    options: dict[str, Any] = Field(default_factory=dict)


class Promotion(_Frozen):
    """A challenger becomes champion when a paired test on the same held-out examples
    says it is better than the champion by more than ``margin`` at level ``alpha``, and a
    binomial test says it beats the majority-class rate (the first model too)."""

    margin: Real = 0.0
    alpha: Real = 0.05

    @field_validator("margin")
    @classmethod
    def _margin(cls, v: float) -> float:
        if not (math.isfinite(v) and 0.0 <= v < 1.0):
            raise ValueError(
                f"margin {v!r}: expected a held-out accuracy gain from 0 (any significant "
                "gain) to below 1, such as 0.02"
            )
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        return _level("alpha", v)


class WarmStart(_Frozen):
    """A new commit's study starts from earlier studies of the same model: their finished
    trials (whose parameters fit this search space) inform the sampler, and the champion's
    parameters and the best earlier ones are tried first."""

    enabled: bool = True
    first: int = Field(3, ge=0, le=20)  # earlier configurations tried first, champion's first
    max_trials: int = Field(500, ge=1, le=100_000)  # earlier trials given to the sampler


class Notify(_Frozen):
    to: tuple[str, ...] = ()

    @field_validator("to", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, str):
            return (v,)
        return tuple(v) if isinstance(v, list) else v

    @field_validator("to")
    @classmethod
    def _addresses(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for address in v:
            if "@" not in address:
                raise ValueError(f"{address!r} is not an email address")
        return v


class Train(_Frozen):
    timeout: Real = Field(3600.0, gt=0, le=7 * 24 * 3600)
    max_attempts: int = Field(2, ge=1, le=10)
    # container limits (Docker executor): memory as Docker writes it, CPUs as a number
    memory: str = Field("4g", pattern=r"^[0-9]+(\.[0-9]+)?[bkmg]$")
    cpus: Real = Field(2.0, gt=0, le=256)
    # None: no network in the training container; "host" or a network name to allow one
    network: str | None = None


class WatchdogLimits(_Frozen):
    """``watchdog:`` in trainchain.yaml: how dead or hung training containers of this model are
    treated. Read into the one policy,
    :meth:`trainchain.supervise.restarts.WatchdogPolicy.from_config`."""

    max_restarts: int = Field(3, ge=0, le=20)
    heartbeat_limit: Real = Field(900.0, gt=0, le=7 * 24 * 3600)  # seconds without a report
    backoff: Real = Field(2.0, ge=0, le=600)  # first restart delay, doubled each time
    backoff_max: Real = Field(60.0, ge=0, le=3600)


class Pruning(_Frozen):
    """Stop a trial whose per-step reports show it falling behind the study's others.

    Made an Optuna pruner by :func:`trainchain.adapters.studies.make_pruner`: the median
    rule (Optuna's MedianPruner), the fold rule (WilcoxonPruner) or successive halving
    (SuccessiveHalvingPruner, asynchronous: a trial goes on past each rung only when it is
    among the best ``1/reduction_factor`` of the trials that reached that rung).
    """

    enabled: bool = True
    # median: against the median of earlier trials at the same step (steps are epochs);
    # wilcoxon: against the best trial, fold by fold (steps are the study's folds);
    # halving: successive halving on rungs at warmup_steps x reduction_factor^k epochs
    rule: Literal["median", "wilcoxon", "halving"] = "median"
    startup_trials: int = Field(3, ge=0, le=1000)  # completed trials before any pruning
    # a trial's first steps are never pruned (halving: the first rung, at least 1)
    warmup_steps: int = Field(2, ge=0, le=100_000)
    p_threshold: Real = Field(0.1, gt=0.0, lt=1.0)  # wilcoxon: prune below this p-value
    reduction_factor: int = Field(3, ge=2, le=10)  # halving: 1 in this many goes on per rung


class EarlyStopping(_Frozen):
    """The policy passed to the script (``TRAINCHAIN_EARLY_STOPPING``); the script stops."""

    enabled: bool = True
    patience: int = Field(5, ge=1, le=1000)  # steps without improvement before stopping
    min_delta: Real = Field(0.0, ge=0.0)  # the least change that counts as an improvement

    @field_validator("min_delta")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("expected a finite number >= 0")
        return v


class Monitoring(_Frozen):
    """``monitoring:`` in trainchain.yaml: how a served model's inputs are compared with
    its training data (``trainchain.core.drift``; ``trainchain drift`` for batch data)."""

    # the latest inputs (epochs, images) kept and tested; the oldest drop out
    window: int = Field(200, ge=10, le=100_000)
    # no test before the window holds this many inputs
    min_window: int = Field(50, ge=10, le=100_000)
    # the chance of a false alarm in a window where nothing moved (after the correction)
    alpha: Real = 0.01
    # holm: family-wise error, valid whatever the features' dependence; bh: more power
    # when many features move, assumes positive dependence
    correction: Literal["holm", "bh"] = "holm"
    # `trainchain serve --retrain-url`: ask for a retrain once this many consecutive drift
    # tests of the served window (at least --drift-interval apart) said drifted
    persist_windows: int = Field(3, ge=1, le=1000)
    # keep the raw inputs of requests (not only their summaries): off, they may be personal
    capture: bool = False

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        return _level("alpha", v)

    @model_validator(mode="after")
    def _min_window_fits(self) -> Monitoring:
        if self.min_window > self.window:
            raise ValueError(
                f"min_window {self.min_window} is larger than window {self.window}: expected "
                "min_window <= window"
            )
        return self


class Rule(_Frozen):
    """A detection rule: any of ``symbols`` in the code means ``family`` and ``image``.

    A symbol matches an imported module (``mne``, ``mne.decoding``), a name
    imported from a module (``CSP``), a called or referenced name or attribute
    (``Conv2D`` in ``layers.Conv2D(...)``). A ``fallback`` rule counts only when
    no other rule matched (scikit-learn alone means the sklearn image).
    """

    family: str = Field(min_length=1)
    image: str = Field(min_length=1)
    symbols: tuple[str, ...] = Field(min_length=1)
    fallback: bool = False

    @field_validator("symbols", mode="before")
    @classmethod
    def _list_is_tuple(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v


class Detection(_Frozen):
    rules: tuple[Rule, ...] = ()
    # True: only these rules; False: these are added to the defaults, and a rule
    # for a family the defaults have replaces the default rule of that family.
    replace_defaults: bool = False

    @field_validator("rules", mode="before")
    @classmethod
    def _list_is_tuple(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v


class ModelConfig(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    entrypoint: str = "train.py"
    image: str | None = None
    data: Data = Field(default_factory=Data)
    goal: Goal
    budget: Budget = Field(default_factory=Budget)  # type: ignore[arg-type]
    search_space: dict[str, Param]
    promotion: Promotion = Field(default_factory=Promotion)
    notify: Notify = Field(default_factory=Notify)
    train: Train = Field(default_factory=Train)  # type: ignore[arg-type]
    watchdog: WatchdogLimits = Field(default_factory=WatchdogLimits)  # type: ignore[arg-type]
    detection: Detection = Field(default_factory=Detection)
    pruning: Pruning = Field(default_factory=Pruning)  # type: ignore[arg-type]
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)  # type: ignore[arg-type]
    validation: Validation = Field(default_factory=Validation)  # type: ignore[arg-type]
    confirmation: Confirmation = Field(default_factory=Confirmation)  # type: ignore[arg-type]
    warm_start: WarmStart = Field(default_factory=WarmStart)  # type: ignore[arg-type]
    monitoring: Monitoring = Field(default_factory=Monitoring)  # type: ignore[arg-type]

    @field_validator("search_space")
    @classmethod
    def _not_empty(cls, v: dict[str, Param]) -> dict[str, Param]:
        if not v:
            raise ValueError(
                "the search space is empty: expected at least one hyperparameter "
                "(for example `C: {type: float, low: 0.01, high: 100, log: true, default: 1}`)"
            )
        for name, param in v.items():
            for other, values in (param.when or {}).items():
                target = v.get(other)
                if not isinstance(target, CategoricalParam) or other == name:
                    raise ValueError(
                        f"{name}.when: {other!r} is not another categorical hyperparameter "
                        f"of the search space: expected one of "
                        f"{sorted(k for k, p in v.items() if isinstance(p, CategoricalParam))}"
                    )
                wrong = [x for x in values if x not in target.choices]
                if wrong or not values:
                    raise ValueError(
                        f"{name}.when.{other}: expected a list of {other}'s choices "
                        f"{list(target.choices)}, got {list(values)}"
                    )
        return v

    @model_validator(mode="after")
    def _heldout_needs_accuracy(self) -> ModelConfig:
        if self.confirmation.method == "heldout" and base_metric(self.goal.metric) != "accuracy":
            raise ValueError(
                "confirmation.method: heldout bounds a held-out accuracy (an exact binomial "
                f"bound), but the goal's metric is {self.goal.metric!r}: use method refit"
            )
        return self

    def defaults(self) -> dict[str, Any]:
        return {name: p.default for name, p in self.search_space.items()}

    def early_stopping_policy(self) -> dict[str, Any] | None:
        """What ``TRAINCHAIN_EARLY_STOPPING`` holds for the script; None when disabled."""
        policy = self.early_stopping
        if not policy.enabled:
            return None
        return {
            "monitor": self.goal.val_metric,
            "mode": "max" if self.goal.direction is Direction.MAXIMIZE else "min",
            "patience": policy.patience,
            "min_delta": policy.min_delta,
        }


class LoadedConfig(BaseModel):
    """A config with the folder it came from."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    model: ModelConfig
    root: Path


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(text: str, environ: Mapping[str, str], *, where: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is an error."""

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in environ and environ[name] != "":
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{where}: the environment variable {name} is not set (in {text!r})",
            hint=f"set {name}, or write ${{{name}:-default}} in trainchain.yaml",
        )

    return _VAR.sub(repl, text)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in {"int", "float", "categorical"} and parts and parts[-1] != "type":
            continue  # the union branch pydantic tried; the key already says where
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's type holds: itself, a union's members, a dict's or tuple's items."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _keys_at(root: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The keys the mapping at ``loc`` may hold (the fields of the model there), for the
    did-you-mean of an unknown key. A list index or a union's tag in ``loc`` stays at the
    same models; the key of a dict of models (a hyperparameter's name) is skipped."""
    models: list[type[BaseModel]] = [root]
    dict_key = False
    for item in loc:
        if dict_key:
            dict_key = False
            continue
        fields = [
            m.model_fields[str(item)].annotation for m in models if str(item) in m.model_fields
        ]
        if fields:
            models = [model for annotation in fields for model in _models_in(annotation)]
            dict_key = any(get_origin(annotation) is dict for annotation in fields)
    return sorted({name for model in models for name in model.model_fields})


def _unknown_key(loc: Sequence[int | str], root: type[BaseModel]) -> str:
    known = _keys_at(root, loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f"unknown key: did you mean `{close[0]}`?"
    return f"unknown key: expected one of {', '.join(known)}" if known else "unknown key"


def _error_text(e: Any, root: type[BaseModel]) -> str:
    """One pydantic error's reason; for an unknown key, the key meant (or those allowed)."""
    if e["type"] == "extra_forbidden":
        return _unknown_key(e["loc"], root)
    return str(e["msg"]).removeprefix("Value error, ")


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = _format_loc(e["loc"]) or "(top level)"
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"{source}: {key}: {_error_text(e, ModelConfig)} (got {shown})")
    return "\n".join(lines)


def parse_config(data: Any, source: str = CONFIG_FILE) -> ModelConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of keys (name, goal, search_space, ...), "
            f"got {type(data).__name__}"
        )
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(
            format_validation_error(err, source),
            hint="fix those keys in trainchain.yaml; the README lists every key and its type",
        ) from None


def load_config(path: str | Path) -> LoadedConfig:
    """Load ``trainchain.yaml`` from a model repository folder (or the file itself)."""
    p = Path(path)
    file = p / CONFIG_FILE if p.is_dir() else p
    if not file.is_file():
        raise ConfigError(
            f"no {CONFIG_FILE} in {p}",
            hint="a model repository holds its training code and a trainchain.yaml; "
            "see examples/eeg-motor-imagery/trainchain.yaml",
        )
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: not valid YAML: {err}") from None
    model = parse_config(data, str(file))
    root = file.parent.resolve()
    if not (root / model.entrypoint).is_file():
        raise ConfigError(
            f"{file}: entrypoint: {model.entrypoint!r} does not exist in {root}",
            hint="set entrypoint to the training script's path, relative to trainchain.yaml",
        )
    return LoadedConfig(model=model, root=root)


def resolve_data_dir(
    loaded: LoadedConfig, environ: Mapping[str, str] | None = None, override: str | None = None
) -> Path:
    """The data folder: ``--data`` wins, then ``data.path`` (``${VAR}`` expanded, relative to
    the repository)."""
    env = dict(os.environ if environ is None else environ)
    raw = (
        override
        if override is not None
        else expand_vars(loaded.model.data.path, env, where="data.path")
    )
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = loaded.root / path
    return path.resolve()


M = TypeVar("M", bound=BaseModel)

# A command-line option that overrides a key: (the option, the key's path, the value given,
# None when not given).
Flag = tuple[str, tuple[str, ...], Any]


def _shown(value: Any) -> str:
    """A value as it was typed: ``2`` for the 2.0 argparse made of it."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def apply_flags(model: M, flags: Sequence[Flag], *, keeps: str) -> M:
    """``model`` with the value of each option given at its key, validated like the file.
    An error names the option and the value given (not the key, not the file): ``--threshold
    2: outside the range ...``; its hint says to change the option or leave it out, ``keeps``
    naming what is used then. The one place command-line options enter a config."""
    given = [(flag, path, value) for flag, path, value in flags if value is not None]
    if not given:
        return model
    data = model.model_dump(mode="json")
    for _flag, path, value in given:
        section = data
        for key in path[:-1]:
            section = section[key]
        section[path[-1]] = value
    try:
        return type(model).model_validate(data)
    except ValidationError as err:
        lines: list[str] = []
        named: list[str] = []
        for e in err.errors():
            loc = tuple(str(item) for item in e["loc"])
            # the option's key, or a section whose check spans it (min_window <= window)
            mine = [
                f"{flag} {_shown(value)}"
                for flag, path, value in given
                if loc[: len(path)] == path or path[: len(loc)] == loc
            ]
            named += [m for m in mine if m not in named]
            where = " ".join(mine) or _format_loc(e["loc"]) or "(top level)"
            line = f"{where}: {_error_text(e, type(model))}"
            lines += [line] if line not in lines else []
        flags_named = list(dict.fromkeys(m.split(" ")[0] for m in named))
        options = " and ".join(flags_named) or "the options"
        them = "it" if len(flags_named) == 1 else "them"
        raise ConfigError(
            "\n".join(lines),
            hint=f"change {options} on the command line, or leave {them} out to use {keeps}",
        ) from None


def with_overrides(
    model: ModelConfig,
    *,
    threshold: float | None = None,
    max_trials: int | None = None,
    timeout: float | None = None,
) -> ModelConfig:
    """The same config with the chain's command-line options (``run``, ``tune``)."""
    return apply_flags(
        model,
        [
            ("--threshold", ("goal", "threshold"), threshold),
            ("--max-trials", ("budget", "max_trials"), max_trials),
            ("--timeout", ("budget", "timeout"), timeout),
        ],
        keeps="what trainchain.yaml says",
    )
