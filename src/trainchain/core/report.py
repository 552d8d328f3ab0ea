"""The chain's outcome, as one JSON-serialisable record.

Written by `tune`/`run` to ``TRAINCHAIN_HOME/chains/<chain_id>.json``, updated by
`promote`, read by `notify` (each Jenkins job is its own process).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from trainchain.core.promotion import HeldoutTest
from trainchain.core.status import RunState
from trainchain.core.verdict import Confirmation, Estimate

VERDICT_TEXT = {
    "confirmed": "reached and confirmed",
    "search_only": "reached on the search's validation only, not confirmed",
    "not_reached": "NOT reached",
    "failed": "NOT reached (the chain failed)",
}


def trial_label(number: int) -> str:
    """A trial as people read it, 1-based (``#1`` is Optuna's trial 0): on the console, in
    the email and in the plot alike."""
    return f"#{number + 1}"


MAX_REASON_CHARS = 500  # why a chain ran (`trainchain run --reason`): one line, this long at most


def clean_reason(text: str) -> str:
    """Why a chain ran, as reports, tags and emails hold it: one line (whitespace and
    control characters folded to single spaces), at most :data:`MAX_REASON_CHARS` long
    (cut with "...")."""
    folded = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(folded) > MAX_REASON_CHARS:
        folded = folded[: MAX_REASON_CHARS - 3].rstrip() + "..."
    return folded


@dataclass(frozen=True)
class TrialSummary:
    number: int
    state: str  # COMPLETE, FAIL, PRUNED, INTERRUPTED
    value: float | None
    params: dict[str, Any]
    test_value: float | None = None
    run_id: str | None = None
    duration_s: float | None = None
    folds: tuple[float, ...] = ()  # the per-fold scores behind ``value``
    note: str = ""  # why a trial failed or was refused, when trainchain knows

    def estimate(self) -> Estimate | None:
        if self.value is None:
            return None
        return Estimate(self.value, self.folds)


@dataclass(frozen=True)
class ChainReport:
    chain_id: str
    model_name: str
    repository: str
    commit: str
    goal_metric: str
    threshold: float
    direction: str
    status: RunState  # running, succeeded, goal_not_reached or failed
    max_trials: int
    promotion_margin: float = 0.0
    trials: tuple[TrialSummary, ...] = ()
    best_trial: int | None = None
    best_value: float | None = None
    best_test_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    # of best_params, those the best trial did not use (their `when:` is not met); every
    # figure of a report shows the others
    unused_params: tuple[str, ...] = ()
    best_run_id: str | None = None
    registry_version: str | None = None
    became_champion: bool = False
    promotion_reason: str = ""
    model_uri: str | None = None
    tracking_uri: str = ""
    parent_run_id: str | None = None
    family: str | None = None
    image: str | None = None
    executor: str | None = None
    error: str | None = None
    log_tail: str = ""
    recipients: tuple[str, ...] = ()
    jenkins_build_url: str | None = None
    elapsed_s: float = 0.0
    # confirmed | search_only | not_reached | failed (trainchain.core.verdict)
    verdict: str = ""
    confirmations: tuple[Confirmation, ...] = ()
    confirmation_alpha: float = 0.05
    best_test_n: int | None = None
    best_test_interval: tuple[float, float] | None = None  # 95%, exact binomial
    promotion_alpha: float = 0.05
    promotion_test: HeldoutTest | None = None
    warm_start: str = ""  # what the study started from, when an earlier study
    reason: str = ""  # why this chain ran (`trainchain run --reason`: a drift alert, a person)
    # failed in the pull, detection or configuration: no goal was read, no trial ran
    before_tuning: bool = False
    same_as: str | None = None  # "champion v2": the version that already is this model

    @property
    def used_params(self) -> dict[str, Any]:
        """``best_params`` without ``unused_params``."""
        return {k: v for k, v in self.best_params.items() if k not in self.unused_params}

    def __post_init__(self) -> None:
        # a report read from JSON, or made with a plain string, holds the enum
        object.__setattr__(self, "status", RunState(self.status))

    @property
    def best_summary(self) -> TrialSummary | None:
        return next((t for t in self.trials if t.number == self.best_trial), None)

    @property
    def verdict_text(self) -> str:
        """The goal's verdict in words (console, email, plot)."""
        # a report written before goals were confirmed: its goal was the search's only
        verdict = self.verdict or (
            "search_only" if self.status is RunState.SUCCEEDED else "not_reached"
        )
        return VERDICT_TEXT.get(verdict, verdict)

    def search_figure(self) -> str:
        """The best trial's search score with its fold spread: ``0.9263 +- 0.0723 (sd of 5
        folds), trial #4``."""
        best = self.best_summary
        if best is None or best.value is None:
            return "no completed trial"
        estimate = best.estimate()
        shown = estimate.describe(4) if estimate is not None else f"{best.value:.4f}"
        return f"{shown}, trial {trial_label(best.number)}"

    def confirmation_figure(self) -> str:
        """The deciding confirmation's figure and rule, or why there was none."""
        confirmation = self.confirmation
        if confirmation is not None:
            return confirmation.reason.removeprefix("not confirmed: ").removeprefix("confirmed: ")
        if self.verdict == "not_reached":
            return "none (no trial reached the goal on the search's validation)"
        return "none"

    def heldout_figure(self) -> str:
        """The best trial's held-out test with its 95% interval: ``0.9167 (22/24; 95% CI
        0.73-0.99)``."""
        test = self.promotion_test
        if test is not None:
            low, high = test.interval
            return f"{test.accuracy:.4f} ({test.correct}/{test.n}; 95% CI {low:.2f}-{high:.2f})"
        if self.best_test_value is None:
            return "none reported"
        if self.best_test_interval is not None and self.best_test_n:
            low, high = self.best_test_interval
            right = round(self.best_test_value * self.best_test_n)
            return (
                f"{self.best_test_value:.4f} ({right}/{self.best_test_n}; 95% CI "
                f"{low:.2f}-{high:.2f})"
            )
        return f"{self.best_test_value:.4f} (its number of examples unknown: no interval)"

    @property
    def confirmation(self) -> Confirmation | None:
        """The confirmation that decided the verdict: the confirmed one, else the last."""
        confirmed = [c for c in self.confirmations if c.confirmed]
        if confirmed:
            return confirmed[0]
        return self.confirmations[-1] if self.confirmations else None

    def with_(self, **changes: Any) -> ChainReport:
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChainReport:
        trials = tuple(
            TrialSummary(**{**t, "folds": tuple(t.get("folds", ()))})
            for t in data.get("trials", ())
        )
        rest = {k: v for k, v in data.items() if k != "trials"}
        rest["recipients"] = tuple(rest.get("recipients", ()))
        rest["unused_params"] = tuple(rest.get("unused_params", ()))
        rest["confirmations"] = tuple(
            Confirmation.from_dict(c) for c in rest.get("confirmations", ())
        )
        if rest.get("best_test_interval") is not None:
            rest["best_test_interval"] = tuple(rest["best_test_interval"])
        if rest.get("promotion_test") is not None:
            rest["promotion_test"] = HeldoutTest.from_dict(rest["promotion_test"])
        return cls(trials=trials, **rest)

    @classmethod
    def load(cls, path: Path) -> ChainReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, path: Path) -> Path:
        from trainchain.contract.task import atomic_write_bytes

        atomic_write_bytes(Path(path), self.to_json().encode("utf-8"))
        return Path(path)
