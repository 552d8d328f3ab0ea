"""trainchain.yaml: loaded into frozen typed objects; bad files refused with a precise message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trainchain.core.config import (
    CategoricalParam,
    Direction,
    FloatParam,
    IntParam,
    load_config,
    parse_config,
    resolve_data_dir,
    with_overrides,
)
from trainchain.core.errors import ConfigError

GOOD = {
    "name": "m",
    "entrypoint": "train.py",
    "goal": {"metric": "accuracy", "threshold": 0.8},
    "search_space": {
        "n": {"type": "int", "low": 2, "high": 8, "default": 4},
        "C": {"type": "float", "low": 0.01, "high": 100, "log": True, "default": 1},
        "kernel": {"type": "categorical", "choices": ["linear", "rbf"], "default": "rbf"},
    },
}


def _with(**changes: object) -> dict[str, object]:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        node = data
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return data


def test_good_config_is_typed_and_frozen() -> None:
    """A valid file becomes frozen objects with typed params and defaults."""
    cfg = parse_config(GOOD)
    assert isinstance(cfg.search_space["n"], IntParam)
    assert isinstance(cfg.search_space["C"], FloatParam) and cfg.search_space["C"].log
    assert isinstance(cfg.search_space["kernel"], CategoricalParam)
    assert cfg.goal.direction is Direction.MAXIMIZE
    assert cfg.goal.val_metric == "val_accuracy" and cfg.goal.test_metric == "test_accuracy"
    assert cfg.defaults() == {"n": 4, "C": 1.0, "kernel": "rbf"}
    with pytest.raises(ValueError, match="frozen"):
        cfg.goal.threshold = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_with(colour="blue"), r"colour: unknown key: expected one of budget, .* \(got 'blue'\)"),
        (_with(goal__thresold=0.8), r"goal.thresold: unknown key: did you mean `threshold`\?"),
        (_with(goal__threshold="high"), r"goal.threshold: .*got 'high'"),
        (
            _with(goal__threshold=1.5),
            r"goal.threshold: outside the range of metric 'accuracy': expected a number from 0 "
            r"to 1 \(got 1.5\)",
        ),
        (_with(goal__direction="up"), r"expected 'maximize' or 'minimize', got 'up'"),
        (_with(search_space={}), r"search_space: the search space is empty"),
        (
            _with(search_space__n={"type": "int", "low": 2, "high": 8, "default": 9}),
            r"search_space.n: default 9 is outside \[2, 8\]",
        ),
        (
            _with(
                search_space__C={"type": "float", "low": 0, "high": 1, "log": True, "default": 0.5}
            ),
            r"log scale needs low > 0",
        ),
        (
            _with(search_space__kernel={"type": "categorical", "choices": ["a"], "default": "b"}),
            r"default 'b' is not one of the choices \['a'\]",
        ),
        (
            _with(search_space__n={"type": "integer", "low": 1, "high": 2, "default": 1}),
            r"search_space.n",
        ),
        (_with(budget={"max_trials": 0}), r"budget.max_trials: .*greater than or equal to 1"),
        (_with(budget={"max_trials": "ten"}), r"budget.max_trials: .*got 'ten'"),
        (_with(notify={"to": ["not-an-address"]}), r"'not-an-address' is not an email address"),
        (_with(name="bad name!"), r"name: "),
        (
            _with(promotion={"alpha": 0.5}),
            r"promotion.alpha: alpha 0.5 is not a significance level: expected a number above "
            r"0 and below 0.5, such as 0.05 .*\(got 0.5\)",
        ),
        (
            _with(promotion={"margin": -0.01}),
            r"promotion.margin: margin -0.01: expected a held-out accuracy gain from 0 .*"
            r"\(got -0.01\)",
        ),
        (_with(promotion={"margin": 1}), r"promotion.margin: margin 1.0: expected"),
        (_with(confirmation={"alpha": 0}), r"confirmation.alpha: alpha 0.0 is not a significance"),
        (
            _with(confirmation={"candidates": 0}),
            r"confirmation.candidates: .*greater than or equal to 1",
        ),
        (_with(validation={"folds": 1}), r"validation.folds: .*greater than or equal to 2"),
        (_with(validation={"fold": 5}), r"validation.fold: unknown key: did you mean `folds`"),
        (
            _with(pruning={"rule": "best"}),
            r"pruning.rule: Input should be 'median', 'wilcoxon' or 'halving'",
        ),
        (
            _with(pruning={"rule": "halving", "reduction_factor": 1}),
            r"pruning.reduction_factor: .*greater than or equal to 2 \(got 1\)",
        ),
        (_with(warm_start={"first": 21}), r"warm_start.first: .*less than or equal to 20"),
        (_with(budget={"startup_trials": -1}), r"budget.startup_trials: .*greater than or equal"),
    ],
)
def test_bad_config_names_key_value_and_expectation(data: dict[str, object], expected: str) -> None:
    """Each bad value is refused with the key, the value and what was expected."""
    with pytest.raises(ConfigError, match=expected):
        parse_config(data, "trainchain.yaml")


def test_when_names_another_categorical_and_its_choices() -> None:
    """A hyperparameter's `when:` is checked against the search space, and a trial that does
    not meet it is told apart from one that does."""
    from trainchain.core.space import unused, used

    good = _with(search_space__n__when={"kernel": ["rbf"]})
    model = parse_config(good, "trainchain.yaml")
    assert unused(model, {"n": 3, "C": 1.0, "kernel": "linear"}) == ("n",)
    assert used(model, {"n": 3, "C": 1.0, "kernel": "rbf"}) == {"n": 3, "C": 1.0, "kernel": "rbf"}
    for when, expected in [
        ({"C": [1]}, r"n.when: 'C' is not another categorical hyperparameter"),
        ({"kernel": ["poly"]}, r"n.when.kernel: expected a list of kernel's choices"),
        ({"kernel": []}, r"n.when.kernel: expected a list of kernel's choices"),
    ]:
        with pytest.raises(ConfigError, match=expected):
            parse_config(_with(search_space__n__when=when), "trainchain.yaml")


def test_statistics_and_warm_start_defaults() -> None:
    """Without the keys: 5-fold CV once for the search, 4 fresh repeats to confirm at alpha
    0.05 shared by 2 candidates, promotion at alpha 0.05 and margin 0, a warm start trying
    3 earlier configurations first, start-up trials sized to the budget."""
    cfg = parse_config(GOOD)
    assert cfg.validation.plan() == {"folds": 5, "repeats": 1, "seed": 0, "purpose": "search"}
    assert (cfg.confirmation.repeats, cfg.confirmation.alpha, cfg.confirmation.candidates) == (
        4,
        0.05,
        2,
    )
    assert (cfg.promotion.alpha, cfg.promotion.margin) == (0.05, 0.0)
    assert (cfg.warm_start.enabled, cfg.warm_start.first) == (True, 3)
    assert cfg.budget.startup_trials is None and cfg.pruning.rule == "median"


def test_pruning_and_early_stopping_defaults() -> None:
    """Without the keys: median pruning after 3 trials and 2 warm-up steps; early stopping
    with patience 5 on the goal's val metric, its direction as the mode."""
    cfg = parse_config(GOOD)
    assert (cfg.pruning.enabled, cfg.pruning.startup_trials, cfg.pruning.warmup_steps) == (
        True,
        3,
        2,
    )
    assert cfg.early_stopping_policy() == {
        "monitor": "val_accuracy",
        "mode": "max",
        "patience": 5,
        "min_delta": 0.0,
    }
    minimize = parse_config(
        _with(
            goal={"metric": "loss", "threshold": 0.2, "direction": "minimize"},
            early_stopping={"patience": 2, "min_delta": 1},
        )
    )
    assert minimize.early_stopping_policy() == {
        "monitor": "val_loss",
        "mode": "min",
        "patience": 2,
        "min_delta": 1.0,
    }
    off = parse_config(_with(early_stopping={"enabled": False}, pruning={"enabled": False}))
    assert off.early_stopping_policy() is None and not off.pruning.enabled


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            _with(pruning={"startup_trials": -1}),
            r"pruning.startup_trials: .*greater than or equal to 0 \(got -1\)",
        ),
        (_with(pruning={"startup_trials": 1001}), r"pruning.startup_trials: .*got 1001"),
        (_with(pruning={"warmup_steps": 2.5}), r"pruning.warmup_steps: .*integer.*got 2.5"),
        (_with(pruning={"enabled": "yes"}), r"pruning.enabled: .*boolean.*got 'yes'"),
        (
            _with(pruning={"interval": 2}),
            r"pruning.interval: unknown key: expected one of enabled, p_threshold, "
            r"reduction_factor, rule, startup_trials, warmup_steps \(got 2\)",
        ),
        (
            _with(early_stopping={"patience": 0}),
            r"early_stopping.patience: .*greater than or equal to 1 \(got 0\)",
        ),
        (_with(early_stopping={"patience": 1001}), r"early_stopping.patience: .*got 1001"),
        (_with(early_stopping={"min_delta": -0.1}), r"early_stopping.min_delta: .*got -0.1"),
        (_with(early_stopping={"min_delta": "small"}), r"early_stopping.min_delta: .*'small'"),
        (
            _with(early_stopping={"min_delta": float("inf")}),
            r"early_stopping.min_delta: expected a finite number >= 0 \(got inf\)",
        ),
    ],
)
def test_bad_pruning_or_early_stopping_names_key_and_value(
    data: dict[str, object], expected: str
) -> None:
    """Out-of-range or mistyped pruning/early-stopping values are refused with key and value."""
    with pytest.raises(ConfigError, match=expected):
        parse_config(data, "trainchain.yaml")


def test_load_checks_file_yaml_and_entrypoint(tmp_path: Path) -> None:
    """Missing file, broken YAML and a missing entrypoint are each one clear error."""
    with pytest.raises(ConfigError, match=r"no trainchain\.yaml"):
        load_config(tmp_path)
    (tmp_path / "trainchain.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path)
    (tmp_path / "trainchain.yaml").write_text(yaml.safe_dump(GOOD))
    with pytest.raises(ConfigError, match=r"entrypoint: 'train\.py' does not exist"):
        load_config(tmp_path)
    (tmp_path / "train.py").write_text("")
    assert load_config(tmp_path).model.name == "m"


def test_data_path_expands_variables_and_is_relative_to_repo(tmp_path: Path) -> None:
    """data.path expands ${VAR:-default} and resolves against the repository."""
    (tmp_path / "train.py").write_text("")
    (tmp_path / "trainchain.yaml").write_text(
        yaml.safe_dump(_with(data={"path": "${MY_DATA:-data}/eeg"}))
    )
    loaded = load_config(tmp_path)
    assert resolve_data_dir(loaded, {}) == (tmp_path / "data" / "eeg").resolve()
    assert resolve_data_dir(loaded, {"MY_DATA": "/srv"}) == Path("/srv/eeg")
    assert resolve_data_dir(loaded, {}, override="/x") == Path("/x")
    (tmp_path / "trainchain.yaml").write_text(yaml.safe_dump(_with(data={"path": "${NOPE}"})))
    with pytest.raises(ConfigError, match="NOPE is not set"):
        resolve_data_dir(load_config(tmp_path), {})


def test_overrides_are_validated_like_the_file() -> None:
    """--threshold/--max-trials go through the same checks as the file."""
    cfg = with_overrides(parse_config(GOOD), threshold=0.9, max_trials=3)
    assert cfg.goal.threshold == 0.9 and cfg.budget.max_trials == 3
    assert with_overrides(cfg) is cfg  # no option given: the file's values


@pytest.mark.parametrize(
    ("options", "message", "hint"),
    [
        (
            {"threshold": 2.0},
            "--threshold 2: outside the range of metric 'accuracy': expected a number from 0 to 1",
            "change --threshold on the command line, or leave it out to use what "
            "trainchain.yaml says",
        ),
        (
            {"max_trials": 0, "timeout": -1.5},
            "--max-trials 0: Input should be greater than or equal to 1\n"
            "--timeout -1.5: Input should be greater than 0",
            "change --max-trials and --timeout on the command line, or leave them out to use "
            "what trainchain.yaml says",
        ),
    ],
)
def test_an_option_out_of_range_is_named_with_the_value_given(
    options: dict[str, float], message: str, hint: str
) -> None:
    """An override's error names the option and the value typed (2, not 2.0), not the
    config key or the file, and its hint does not send the user to trainchain.yaml."""
    with pytest.raises(ConfigError) as info:
        with_overrides(parse_config(GOOD), **options)  # type: ignore[arg-type]
    assert (info.value.message, info.value.hint) == (message, hint)


@pytest.mark.parametrize(
    ("data", "key", "suggestion"),
    [
        (_with(budget={"max_trails": 5}), "budget.max_trails", "max_trials"),
        (_with(serach_space=GOOD["search_space"]), "serach_space", "search_space"),
        (_with(search_space__C__lwo=0.1), "search_space.C.lwo", "low"),
        (
            _with(detection={"rules": [{"family": "f", "image": "i", "symbol": ["x"]}]}),
            "detection.rules[0].symbol",
            "symbols",
        ),
    ],
)
def test_a_typo_in_a_key_is_refused_with_the_key_it_meant(
    data: dict[str, object], key: str, suggestion: str
) -> None:
    """An unknown key close to a key of its section says which one was meant, at any depth
    (a section, a hyperparameter, a list item)."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, "trainchain.yaml")
    assert (
        f"trainchain.yaml: {key}: unknown key: did you mean `{suggestion}`?" in info.value.message
    )
