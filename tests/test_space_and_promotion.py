"""Pure decisions: --set overrides against the search space, and the promotion rule with
its held-out tests."""

from __future__ import annotations

import pytest
from scipy import stats

from tests.test_config import GOOD
from trainchain.core import keys
from trainchain.core.config import Direction, Goal, parse_config
from trainchain.core.errors import ConfigError
from trainchain.core.promotion import (
    HeldoutTest,
    chance_test,
    decide,
    heldout_test,
    paired_test,
    same_model,
)
from trainchain.core.space import fit_to_space, parse_overrides

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


def _test(
    candidate: list[bool],
    champion: list[bool] | None = None,
    labels: list[str] | None = None,
    margin: float = 0.0,
) -> HeldoutTest:
    labels = labels or ["left", "right"] * (len(candidate) // 2) + ["left"] * (len(candidate) % 2)
    return heldout_test(
        labels,
        candidate,
        champion=champion,
        champion_version="1" if champion is not None else None,
        margin=margin,
    )


def test_chance_test_is_the_exact_binomial_against_the_majority_rate() -> None:
    """18 of 24 right where the majority label holds 12: p is the binomial tail at 1/2."""
    labels = ["a"] * 12 + ["b"] * 12
    rate, p = chance_test([True] * 18 + [False] * 6, labels)
    assert rate == 0.5
    assert p == pytest.approx(stats.binom.sf(17, 24, 0.5))
    rate, _ = chance_test([True] * 10, ["a"] * 7 + ["b"] * 3)
    assert rate == 0.7  # the most common label's share, whatever the model answers


def test_paired_test_is_mcnemars_exact_test_and_the_margin_shifts_it() -> None:
    """b = 8 wins, c = 2 losses on 40 examples: at margin 0 the p-value is the binomial tail
    of 8 of 10 at 1/2 (McNemar's exact test); a margin raises the rate under the null; a
    margin no count of wins could beat gives p = 1."""
    champion = [True] * 20 + [False] * 8 + [True] * 2 + [False] * 10
    candidate = [True] * 20 + [True] * 8 + [False] * 2 + [False] * 10
    wins, losses, p = paired_test(candidate, champion)
    assert (wins, losses) == (8, 2)
    assert p == pytest.approx(stats.binomtest(8, 10, 0.5, alternative="greater").pvalue)
    _, _, p_margin = paired_test(candidate, champion, margin=0.05)
    rate = 0.5 + 40 * 0.05 / (2 * 10)
    assert p_margin == pytest.approx(stats.binomtest(8, 10, rate, alternative="greater").pvalue)
    assert p_margin > p
    assert paired_test(candidate, champion, margin=0.3)[2] == 1.0
    assert paired_test(champion, champion) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="same examples"):
        paired_test(candidate, champion[:-1])


def test_first_model_significantly_above_the_majority_rate_becomes_champion() -> None:
    """No champion yet: a confirmed goal and a significant win over chance promote it, and
    the reason shows the test, the interval and the p-value."""
    d = decide(confirmed=True, test=_test([True] * 22 + [False] * 2))
    assert d.promote and "first model" in d.reason
    assert "22/24" in d.reason and "95% CI" in d.reason and "p < 0.001" in d.reason


def test_the_first_model_is_not_promoted_when_it_may_be_chance() -> None:
    """7 of 9 right on a 5:4 held-out split (p about 0.1): not promoted, even first."""
    test = _test([True] * 7 + [False] * 2)
    assert 0.05 < test.chance_p < 0.2
    d = decide(confirmed=True, test=test)
    assert (
        not d.promote and "not significantly better than answering the majority class" in d.reason
    )


def test_an_unconfirmed_goal_or_missing_heldout_never_promotes() -> None:
    """Reached on the search's validation only, or no held-out examples: nothing promoted."""
    test = _test([True] * 24)
    d = decide(confirmed=False, test=test, why_not_confirmed="reached on the search only")
    assert not d.promote and "reached on the search only" in d.reason
    d = decide(confirmed=True, test=None)
    assert not d.promote and "heldout.npz" in d.reason


@pytest.mark.parametrize(
    ("wins", "losses", "margin", "promote"),
    [
        (9, 0, 0.0, True),  # p = 1/512
        (6, 4, 0.0, False),  # more wins, but not significantly
        (0, 0, 0.0, False),  # a tie keeps the champion
        (9, 0, 0.2, False),  # significant, but not beyond a margin of 0.2 on 40 examples
    ],
)
def test_challenger_must_beat_the_champion_significantly_beyond_the_margin(
    wins: int, losses: int, margin: float, promote: bool
) -> None:
    """Promotion over a champion needs McNemar's p at or below alpha, beyond the margin."""
    same = 30 - wins - losses
    champion = [True] * same + [False] * wins + [True] * losses + [False] * 10
    candidate = [True] * same + [True] * wins + [False] * losses + [False] * 10
    d = decide(confirmed=True, test=_test(candidate, champion, margin=margin))
    assert d.promote is promote
    assert "McNemar's exact test" in d.reason and f"is wrong on {wins} and" in d.reason


def test_error_while_deciding_never_promotes() -> None:
    """An error while deciding never promotes, and the reason carries the error."""
    d = decide(confirmed=True, test=_test([True] * 24), error="boom")
    assert not d.promote and "boom" in d.reason


def test_minimize_direction() -> None:
    """For a loss, lower is better for the goal."""
    goal = Goal(metric="loss", threshold=0.3, direction=Direction.MINIMIZE)
    assert goal.reached(0.2) and not goal.reached(0.4)


RUN_TAGS = {
    keys.COMMIT: "c" * 40,
    keys.DATA_DIGEST: "sha256:d",
    keys.CONFIG_DIGEST: "sha256:e",
    keys.IMAGE: "local:python3.11",
    keys.PARAMS: '{"depth": 4}',
    keys.REPOSITORY: "/srv/a",
}


@pytest.mark.parametrize(
    ("changed", "same"),
    [
        ({}, True),
        ({keys.REPOSITORY: "/srv/a-fork"}, True),  # where it came from is not what it is
        ({keys.COMMIT: "b" * 40}, False),
        ({keys.DATA_DIGEST: "sha256:other"}, False),
        ({keys.CONFIG_DIGEST: "sha256:other"}, False),
        ({keys.IMAGE: "trainchain-sklearn:1"}, False),
        ({keys.PARAMS: '{"depth": 3}'}, False),
        ({keys.CONFIG_DIGEST: ""}, False),  # a version registered before the digest existed
    ],
)
def test_the_same_model_is_the_same_commit_data_configuration_image_and_params(
    changed: dict[str, str], same: bool
) -> None:
    """Two runs train the same model only when every identity tag is there and equal."""
    assert same_model(RUN_TAGS | changed, RUN_TAGS) is same


def test_a_dirty_folder_or_missing_data_is_never_known_to_be_the_same() -> None:
    """Uncommitted changes (``+dirty``) or data that was missing: registered as before."""
    for changed in ({keys.COMMIT: "c" * 40 + "+dirty"}, {keys.DATA_DIGEST: "missing"}):
        tags = RUN_TAGS | changed
        assert not same_model(tags, tags)
