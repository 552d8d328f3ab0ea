"""The promotion decision and its tests: plain functions of their inputs.

A candidate becomes champion only when

1. its chain's goal was confirmed (``verdict == "confirmed"``);
2. on its held-out examples it is significantly better than always answering the
   majority class: a one-sided exact binomial test of its number of right answers
   against the majority-class rate, at ``alpha`` (the first model too);
3. with a champion, on the same held-out examples, it is significantly better than the
   champion by more than ``margin``: McNemar's exact test, one-sided, on the examples
   exactly one of the two got right. With ``b`` of them won by the candidate and ``c`` by
   the champion, the accuracy gain is ``(b - c) / n``; a gain of at most ``margin``
   means the candidate wins a discordant example with probability at most
   ``1/2 + n * margin / (2 (b + c))``, and the p-value is the binomial chance of ``b``
   or more wins at that rate (at ``margin`` 0, McNemar's exact test itself).

An error never promotes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from trainchain.core import keys

__all__ = [
    "IDENTITY_TAGS",
    "Decision",
    "HeldoutTest",
    "chance_test",
    "decide",
    "heldout_test",
    "paired_test",
    "same_model",
]


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class HeldoutTest:
    """The held-out evidence behind a promotion: both models on the same examples."""

    n: int
    correct: int  # the candidate's right answers
    majority_rate: float  # the share of the most common label among the n examples
    chance_p: float  # candidate vs always answering the majority class
    interval: tuple[float, float]  # 95% interval of the candidate's held-out accuracy
    champion_version: str | None = None
    champion_correct: int | None = None
    wins: int | None = None  # b: the candidate right, the champion wrong
    losses: int | None = None  # c: the champion right, the candidate wrong
    paired_p: float | None = None
    margin: float = 0.0
    alpha: float = 0.05

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeldoutTest:
        values = dict(data)
        values["interval"] = tuple(values["interval"])
        return cls(**values)


def chance_test(correct: Sequence[bool], labels: Sequence[Any]) -> tuple[float, float]:
    """``(majority_rate, p)``: the share of the most common label among ``labels``, and
    the one-sided exact binomial p-value of ``sum(correct)`` right answers out of
    ``len(correct)`` if the model were right at that rate only."""
    from collections import Counter

    from scipy import stats

    n = len(correct)
    if n == 0 or len(labels) != n:
        raise ValueError(f"expected as many answers as labels (at least one), got {n}")
    majority = max(Counter(labels).values()) / n
    p = stats.binomtest(int(sum(correct)), n, majority, alternative="greater").pvalue
    return majority, float(p)


def paired_test(
    candidate: Sequence[bool], champion: Sequence[bool], margin: float = 0.0
) -> tuple[int, int, float]:
    """``(wins, losses, p)``: McNemar's exact one-sided test that the candidate is more
    accurate than the champion by more than ``margin`` on the same examples."""
    from scipy import stats

    if len(candidate) != len(champion) or not candidate:
        raise ValueError(
            f"expected both models' answers on the same examples, got {len(candidate)} and "
            f"{len(champion)}"
        )
    wins = sum(1 for a, b in zip(candidate, champion, strict=True) if a and not b)
    losses = sum(1 for a, b in zip(candidate, champion, strict=True) if b and not a)
    discordant = wins + losses
    if discordant == 0:
        return wins, losses, 1.0
    rate = 0.5 + len(candidate) * margin / (2 * discordant)
    if rate >= 1.0:  # even winning every discordant example is not a gain beyond the margin
        return wins, losses, 1.0
    p = stats.binomtest(wins, discordant, rate, alternative="greater").pvalue
    return wins, losses, float(p)


def heldout_test(
    labels: Sequence[Any],
    candidate: Sequence[bool],
    *,
    champion: Sequence[bool] | None = None,
    champion_version: str | None = None,
    margin: float = 0.0,
    alpha: float = 0.05,
) -> HeldoutTest:
    """Both tests on one held-out set: ``candidate`` and ``champion`` say, per example,
    whether each model answered right."""
    from trainchain.core.verdict import binomial_interval

    majority, chance_p = chance_test(candidate, labels)
    interval = binomial_interval(int(sum(candidate)), len(candidate))
    test = HeldoutTest(
        n=len(candidate),
        correct=int(sum(candidate)),
        majority_rate=majority,
        chance_p=chance_p,
        interval=interval,
        margin=margin,
        alpha=alpha,
    )
    if champion is None:
        return test
    wins, losses, p = paired_test(candidate, champion, margin)
    return HeldoutTest(
        **{
            **asdict(test),
            "interval": interval,
            "champion_version": champion_version,
            "champion_correct": int(sum(champion)),
            "wins": wins,
            "losses": losses,
            "paired_p": p,
        }
    )


def _p(value: float) -> str:
    """``p = 0.031`` or ``p < 0.001``."""
    return f"p = {value:.2g}" if value >= 0.001 else "p < 0.001"


def describe_chance(test: HeldoutTest) -> str:
    low, high = test.interval
    return (
        f"held-out accuracy {test.accuracy:.3f} ({test.correct}/{test.n}, 95% CI "
        f"{low:.2f}-{high:.2f}) against the majority-class rate {test.majority_rate:.2f}: "
        f"one-sided binomial test {_p(test.chance_p)}"
    )


def describe_paired(test: HeldoutTest) -> str:
    margin = f" by more than {test.margin:g}" if test.margin else ""
    return (
        f"on the same {test.n} held-out examples the candidate is right where champion "
        f"v{test.champion_version} is wrong on {test.wins} and wrong where it is right on "
        f"{test.losses} ({test.correct} vs {test.champion_correct} right): McNemar's exact test "
        f"that it is better{margin}, one-sided {_p(test.paired_p or 1.0)}"
    )


# What makes two trained models the same one: the same code (a clean commit), data,
# resolved configuration, training image and hyperparameters.
IDENTITY_TAGS = (keys.COMMIT, keys.DATA_DIGEST, keys.CONFIG_DIGEST, keys.IMAGE, keys.PARAMS)


def same_model(candidate: Mapping[str, str], registered: Mapping[str, str]) -> bool:
    """Whether a trial's run (its tags) would train the model a registered version already
    is: every identity tag present and equal, and the commit a clean one (a folder with
    local changes, or data that was missing, is never known to be the same)."""
    commit = candidate.get(keys.COMMIT, "")
    if not commit or commit == "none" or commit.endswith("+dirty"):
        return False
    if candidate.get(keys.DATA_DIGEST) in (None, "", "missing"):
        return False
    return all(candidate.get(k) and candidate.get(k) == registered.get(k) for k in IDENTITY_TAGS)


def decide(  # noqa: PLR0911 - a decision table: each return is one rule
    *,
    confirmed: bool,
    test: HeldoutTest | None,
    error: str | None = None,
    why_not_confirmed: str = "the goal was not confirmed",
) -> Decision:
    if error:
        return Decision(False, f"not promoted: error while deciding: {error}")
    if not confirmed:
        return Decision(False, f"not promoted: {why_not_confirmed}")
    if test is None:
        return Decision(
            False,
            "not promoted: no held-out examples (TRAINCHAIN_OUTPUT_DIR/heldout.npz) to test "
            "the model against chance",
        )
    below, above = f"at or below alpha {test.alpha:g}", f"above alpha {test.alpha:g}"
    if not test.chance_p <= test.alpha:
        return Decision(
            False,
            f"not promoted: not significantly better than answering the majority class "
            f"({describe_chance(test)}, {above})",
        )
    if test.champion_version is None:
        return Decision(
            True,
            f"promoted: first model, significantly better than the majority class "
            f"({describe_chance(test)}, {below})",
        )
    if test.paired_p is None:
        return Decision(
            False, "not promoted: could not score both models on the same held-out examples"
        )
    if test.paired_p <= test.alpha:
        return Decision(
            True, f"promoted: significantly beats the champion ({describe_paired(test)}, {below})"
        )
    return Decision(
        False,
        f"not promoted: not significantly better than the champion ({describe_paired(test)}, "
        f"{above})",
    )
