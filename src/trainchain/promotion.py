"""The promotion decision: a plain function of its inputs.

A candidate becomes champion only when it reached the goal and beats the
champion, both scored on the same held-out data, by more than the margin. The
first model that reaches the goal becomes champion. An error never promotes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainchain.config import Direction, Goal


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def decide(  # noqa: PLR0911 - a decision table: each return is one rule
    *,
    goal: Goal,
    margin: float,
    goal_value: float | None,
    candidate_heldout: float | None,
    champion_version: str | None,
    champion_heldout: float | None,
    error: str | None = None,
    heldout_metric: str = "accuracy",
) -> Decision:
    if error:
        return Decision(False, f"not promoted: error while deciding: {error}")
    if not goal.reached(goal_value):
        shown = "none" if goal_value is None else _fmt(goal_value)
        op = ">=" if goal.direction is Direction.MAXIMIZE else "<="
        return Decision(
            False,
            f"not promoted: goal not reached ({goal.val_metric} {shown}, goal {op} "
            f"{goal.threshold})",
        )
    if champion_version is None:
        return Decision(True, "promoted: first model to reach the goal")
    if candidate_heldout is None or champion_heldout is None:
        return Decision(
            False, "not promoted: could not score both models on the same held-out data"
        )
    if not (math.isfinite(candidate_heldout) and math.isfinite(champion_heldout)):
        return Decision(False, "not promoted: a held-out score is not a finite number")
    gain = candidate_heldout - champion_heldout
    if goal.direction is Direction.MINIMIZE:
        gain = -gain
    comparison = (
        f"held-out {heldout_metric} {_fmt(candidate_heldout)} vs champion "
        f"v{champion_version} {_fmt(champion_heldout)}, margin {margin}"
    )
    if gain > margin:
        return Decision(True, f"promoted: beats the champion ({comparison})")
    return Decision(False, f"not promoted: does not beat the champion by the margin ({comparison})")
