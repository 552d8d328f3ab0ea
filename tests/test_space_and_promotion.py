"""Pure decisions: --set overrides against the search space, and the promotion rule."""

from __future__ import annotations

import pytest

from tests.test_config import GOOD
from trainchain.config import Direction, Goal, parse_config
from trainchain.errors import ConfigError
from trainchain.promotion import decide
from trainchain.space import fit_to_space, parse_overrides

CFG = parse_config(GOOD)
GOAL = Goal(metric="accuracy", threshold=0.8, direction=Direction.MAXIMIZE)


def test_overrides_are_typed_by_the_space() -> None:
    """--set values take the parameter's type."""
    assert parse_overrides(CFG, ["n=6", "C=0.5", "kernel=linear"]) == {
        "n": 6,
        "C": 0.5,
        "kernel": "linear",
    }


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("n=six", "expected an integer"),
        ("n=20", r"expected a int in \[2, 8\]"),
        ("C=nan", "expected a finite number"),
        ("kernel=poly", r"expected one of \['linear', 'rbf'\]"),
        ("gamma=1", "not a hyperparameter of m"),
        ("novalue", "expected NAME=VALUE"),
    ],
)
def test_bad_overrides_are_refused(pair: str, message: str) -> None:
    """A bad --set names the parameter and what was expected."""
    with pytest.raises(ConfigError, match=message):
        parse_overrides(CFG, [pair])


def test_champion_params_fit_or_not() -> None:
    """A champion's params seed the first trial only when they fit the current space."""
    assert fit_to_space(CFG, {"n": 5.0, "C": 2.0, "kernel": "linear"}) == {
        "n": 5,
        "C": 2.0,
        "kernel": "linear",
    }
    assert fit_to_space(CFG, {"n": 5, "C": 2.0}) is None
    assert fit_to_space(CFG, {"n": 50, "C": 2.0, "kernel": "linear"}) is None


def test_first_model_reaching_goal_becomes_champion() -> None:
    """No champion yet: reaching the goal is enough."""
    d = decide(
        goal=GOAL,
        margin=0.0,
        goal_value=0.85,
        candidate_heldout=None,
        champion_version=None,
        champion_heldout=None,
    )
    assert d.promote and "first model" in d.reason


def test_goal_not_reached_never_promotes() -> None:
    """Below the goal nothing is promoted, even without a champion."""
    d = decide(
        goal=GOAL,
        margin=0.0,
        goal_value=0.79,
        candidate_heldout=0.99,
        champion_version=None,
        champion_heldout=None,
    )
    assert not d.promote and "goal not reached" in d.reason


@pytest.mark.parametrize(
    ("cand", "champ", "margin", "promote"),
    [
        (0.90, 0.85, 0.0, True),
        (0.85, 0.85, 0.0, False),  # a tie keeps the champion
        (0.87, 0.85, 0.05, False),  # better, but not by the margin
        (0.91, 0.85, 0.05, True),
        (0.80, 0.85, 0.0, False),
    ],
)
def test_beats_champion_by_margin(cand: float, champ: float, margin: float, promote: bool) -> None:
    """Promotion needs a held-out gain larger than the margin."""
    d = decide(
        goal=GOAL,
        margin=margin,
        goal_value=0.9,
        candidate_heldout=cand,
        champion_version="1",
        champion_heldout=champ,
    )
    assert d.promote is promote


def test_error_or_missing_score_never_promotes() -> None:
    """An error while deciding, or a score that could not be computed, keeps the champion."""
    d = decide(
        goal=GOAL,
        margin=0.0,
        goal_value=0.95,
        candidate_heldout=0.99,
        champion_version="1",
        champion_heldout=0.5,
        error="boom",
    )
    assert not d.promote and "boom" in d.reason
    d = decide(
        goal=GOAL,
        margin=0.0,
        goal_value=0.95,
        candidate_heldout=None,
        champion_version="1",
        champion_heldout=0.5,
    )
    assert not d.promote


def test_minimize_direction() -> None:
    """For a loss, lower is better for the goal and for promotion."""
    goal = Goal(metric="loss", threshold=0.3, direction=Direction.MINIMIZE)
    assert goal.reached(0.2) and not goal.reached(0.4)
    d = decide(
        goal=goal,
        margin=0.0,
        goal_value=0.2,
        candidate_heldout=0.2,
        champion_version="1",
        champion_heldout=0.25,
    )
    assert d.promote
