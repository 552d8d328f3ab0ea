"""The decisions of one tuning study, apart from how a trial runs.

What the next trial is, whether a trial's score is the study's estimator, which trial to
confirm, when to stop and what the verdict is: :class:`Search` over one Optuna study.
``tune`` runs its trials as subprocesses or containers and logs them to MLflow;
``benchmarks/tuning.py`` runs them in-process; both go through these same decisions.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from trainchain.adapters.studies import (
    RETRY_ATTR,
    WARM_ATTR,
    EarlierTrial,
    best_distinct,
    space_filling,
    startup_trials,
    suggest,
)
from trainchain.core.config import ModelConfig
from trainchain.core.report import trial_label
from trainchain.core.verdict import Confirmation, Estimate, Verdict

__all__ = [
    "CONFIRMATIONS_ATTR",
    "ESTIMATE_ATTR",
    "ESTIMATOR_ATTR",
    "EXCESS_ATTR",
    "RETRY_ATTR",
    "Search",
    "first_trials",
    "fresh_seed",
    "run_search",
]

CONFIRMATIONS_ATTR = "confirmations"  # study: the confirmations so far, as JSON
ESTIMATOR_ATTR = "estimator"  # study: the folds every trial is scored on
ESTIMATE_ATTR = "estimate"  # trial: its estimate (value, folds, folds id)
# trial: asked by a worker when the budget's last place had just gone to another worker;
# never run, and not one of the study's trials (like a warm start's)
EXCESS_ATTR = "over_budget"


def fresh_seed(seed: int, index: int) -> int:
    """The fold-assignment seed of confirmation ``index``: never the search's own."""
    return (seed + 7919 * (index + 1)) % (2**31 - 1)


def _state(trial: Any) -> str:
    return str(trial.state.name)


class Search:
    """One study's decisions. ``study`` is an Optuna study; ``model`` the config."""

    def __init__(self, study: Any, model: ModelConfig) -> None:
        self.study = study
        self.model = model
        self.goal = model.goal
        self._held: dict[str, Any] | None = None  # a decision's view (see :meth:`view`)

    # ---- reading the study -----------------------------------------------------------
    @contextmanager
    def view(self) -> Iterator[None]:
        """Within the block, the study's trials and attributes are read from the storage
        once, on first use, and shared by every question asked of them (one decision of
        the loop: a candidate? stop? a free place?): a read of a shared storage costs
        milliseconds, and the loop asks several questions per trial. Writes are not
        seen until the block ends: nothing in it may write."""
        self._held = {}
        try:
            yield
        finally:
            self._held = None

    def _read(self, what: str, read: Callable[[], Any]) -> Any:
        if self._held is None:
            return read()
        if what not in self._held:
            self._held[what] = read()
        return self._held[what]

    def trials(self) -> list[Any]:
        """The study's trials as stored (not copies: read them, never change them)."""
        return self._read("trials", lambda: self.study.get_trials(deepcopy=False))  # type: ignore[no-any-return]

    def attrs(self) -> dict[str, Any]:
        """The study's user attributes."""
        return self._read("attrs", lambda: self.study.user_attrs)  # type: ignore[no-any-return]

    # ---- validation plans ------------------------------------------------------------
    def search_plan(self) -> dict[str, Any]:
        """What every trial of the study is scored by (TRAINCHAIN_VALIDATION)."""
        return self.model.validation.plan()

    def confirm_plan(self, index: int) -> dict[str, Any]:
        """Confirmation ``index``: more repeats, on fold assignments no trial saw."""
        v = self.model.validation
        return v.plan(
            repeats=self.model.confirmation.repeats,
            seed=fresh_seed(v.seed, index),
            purpose="confirm",
        )

    # ---- trials ----------------------------------------------------------------------
    def own_trials(self) -> list[Any]:
        """This study's trials, without those added from earlier studies (warm start) and
        those a worker asked for past the budget (never run)."""
        return [
            t
            for t in self.trials()
            if not t.user_attrs.get(WARM_ATTR) and not t.user_attrs.get(EXCESS_ATTR)
        ]

    # ---- the budget across workers ------------------------------------------------------
    # Every trial but a retry takes one place of the budget, in the order of its number
    # (Optuna numbers a study's trials atomically, across processes): place k goes to the
    # k-th such trial, whichever worker asked for it, so ``max_trials`` counts across
    # workers without a counter of its own.
    def place_of(self, trial: Any) -> int:
        """``trial``'s place in the budget (0-based); a retry has its original's place."""
        retry_of = trial.user_attrs.get(RETRY_ATTR)
        number = int(retry_of) if retry_of is not None else trial.number
        return sum(
            1
            for t in self.own_trials()
            if t.number < number and t.user_attrs.get(RETRY_ATTR) is None
        )

    def can_ask(self) -> bool:
        """Whether a trial can start: a place of the budget is free, or an enqueued trial
        (a first trial, a retry) waits. False while the last places' trials run."""
        own = self.own_trials()
        places = sum(1 for t in own if t.user_attrs.get(RETRY_ATTR) is None)
        return places < self.model.budget.max_trials or any(_state(t) == "WAITING" for t in own)

    def running(self) -> list[Any]:
        """The trials running now, on any worker."""
        return [t for t in self.own_trials() if _state(t) == "RUNNING"]

    def used(self) -> int:
        """Trials of the budget used: finished, pruned or failed, a retried one once."""
        own = self.own_trials()
        retried = {t.user_attrs.get(RETRY_ATTR) for t in own}
        return sum(
            1
            for t in own
            if _state(t) in {"COMPLETE", "PRUNED", "FAIL"} and t.number not in retried
        )

    def best(self) -> Any | None:
        """The best finished trial of this study by its search score."""
        complete = [t for t in self.own_trials() if _state(t) == "COMPLETE" and t.value is not None]
        if not complete:
            return None
        sign = 1.0 if self.goal.direction.value == "maximize" else -1.0
        return max(complete, key=lambda t: sign * t.value)

    @staticmethod
    def estimate_of(trial: Any) -> Estimate | None:
        raw = trial.user_attrs.get(ESTIMATE_ATTR)
        return Estimate.from_dict(raw) if raw else None

    def ask(self) -> tuple[Any, dict[str, Any]]:
        with warnings.catch_warnings():
            # Optuna warns that heartbeats go with Study.optimize; the chain asks and tells
            # itself, beating while a trial runs (studies.heartbeat) and failing dead
            # workers' trials before it asks (studies.fail_dead_workers), as optimize does
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
            trial = self.study.ask()
        return trial, suggest(trial, self.model)

    def estimator(self) -> dict[str, Any] | None:
        value = self.attrs().get(ESTIMATOR_ATTR)
        return dict(value) if value else None

    def check_estimate(self, estimate: Estimate) -> str | None:
        """None when ``estimate`` was scored by the study's estimator (the same folds as
        its other trials), else why not: such a trial's score is not comparable."""
        known = self.estimator()
        if known is None:
            return None
        if known.get("folds_id") and estimate.folds_id != known["folds_id"]:
            seen = estimate.folds_id or "none"
            return (
                f"it was validated on other folds (val_folds_id {seen}) than the study's "
                f"trials ({known['folds_id']}): scores on other folds are not comparable; "
                "validate with the plan in TRAINCHAIN_VALIDATION (task.validation())"
            )
        if known.get("n") != estimate.n:
            return (
                f"it reports {estimate.n} per-fold scores where the study's trials report "
                f"{known.get('n')}: every trial of a study must be scored by the same estimator"
            )
        return None

    def prunable(self, step: int) -> bool:
        """Whether a report at ``step`` may prune the trial: with the fold rule, not at the
        plan's last fold (the trial is finished then: pruning would only lose its score)."""
        if self.model.pruning.rule != "wilcoxon":
            return True
        plan = self.search_plan()
        return step < int(plan["folds"]) * int(plan["repeats"]) - 1

    def tell_complete(self, trial: Any, estimate: Estimate) -> None:
        if self.estimator() is None:
            self.study.set_user_attr(
                ESTIMATOR_ATTR, {"folds_id": estimate.folds_id, "n": estimate.n}
            )
        trial.set_user_attr(ESTIMATE_ATTR, estimate.to_dict())
        self.study.tell(trial, estimate.value)

    # ---- confirmation ----------------------------------------------------------------
    def confirmations(self) -> list[Confirmation]:
        raw = self.attrs().get(CONFIRMATIONS_ATTR, "[]")
        return [Confirmation.from_dict(c) for c in json.loads(raw)]

    def record(self, confirmation: Confirmation) -> None:
        done = [c.to_dict() for c in self.confirmations()] + [confirmation.to_dict()]
        self.study.set_user_attr(CONFIRMATIONS_ATTR, json.dumps(done))

    def confirmed(self) -> Confirmation | None:
        return next((c for c in self.confirmations() if c.confirmed), None)

    def confirmation_alpha(self) -> float:
        """Each confirmation's level: the chain's alpha shared by its candidates
        (Bonferroni), so the chain's chance of a false claim stays within alpha."""
        c = self.model.confirmation
        return c.alpha / c.candidates

    def candidate(self) -> Any | None:
        """The trial to confirm now: the study's best, when it reached the goal on the
        search's validation, has not been confirmed yet, and candidates are left."""
        done = self.confirmations()
        if any(c.confirmed for c in done) or len(done) >= self.model.confirmation.candidates:
            return None
        best = self.best()
        if best is None or not self.goal.reached(best.value):
            return None
        if best.number in {c.trial for c in done}:
            return None
        return best

    def search_folds_ids(self) -> list[str | None]:
        """The fold assignments the search's trials were scored on."""
        known = self.estimator()
        return [known.get("folds_id")] if known else []

    # ---- stopping and the verdict ----------------------------------------------------
    def stop_reason(self, *, failures: int, elapsed: float) -> str | None:
        """Why to stop before the next trial, or None to go on."""
        budget = self.model.budget
        confirmed = self.confirmed()
        if confirmed is not None:
            return f"goal reached and confirmed ({trial_label(confirmed.trial)})"
        done = self.confirmations()
        if len(done) >= self.model.confirmation.candidates:
            return (
                f"{len(done)} trial(s) reached the goal on the search's validation; none was "
                f"confirmed {done[-1].where}, and no confirmation is left"
            )
        if failures >= budget.max_consecutive_failures:
            return f"{failures} trials in a row failed"
        used = self.used()
        if used >= budget.max_trials:
            return f"budget spent: {used} of {budget.max_trials} trials"
        if elapsed >= budget.timeout:
            return f"budget spent: {elapsed:.0f} s of {budget.timeout:.0f} s"
        return None

    def verdict(self, *, failed: bool) -> Verdict:
        if self.confirmed() is not None:
            return "confirmed"
        if failed:
            return "failed"
        best = self.best()
        if best is not None and self.goal.reached(best.value):
            return "search_only"
        return "not_reached"


def first_trials(
    model: ModelConfig,
    *,
    champion: tuple[dict[str, Any], str] | None = None,
    earlier: Sequence[EarlierTrial] = (),
) -> list[tuple[dict[str, Any], str]]:
    """A new study's first trials, with where each comes from: the champion's parameters,
    then the best distinct configurations of earlier studies (``warm_start.first`` in
    all); when there is neither, the defaults and a space-filling start that fills the
    start-up (``studies.startup_trials``), each choice tried before any comes again."""
    first: list[tuple[dict[str, Any], str]] = [champion] if champion is not None else []
    if model.warm_start.enabled:
        known = [params for params, _ in first]
        for params in best_distinct(earlier, model.warm_start.first + len(known)):
            if len(first) >= model.warm_start.first:
                break
            if params not in known:
                first.append((params, "an earlier study's best configurations"))
                known.append(params)
    if first:
        return first
    budget = model.budget
    startup = budget.startup_trials
    count = min(
        (startup_trials(budget.max_trials) if startup is None else startup) - 1,
        budget.max_trials - 1,
    )
    defaults = model.defaults()
    design = space_filling(model, max(0, count), budget.seed, tried=defaults)
    return [(defaults, "defaults")] + [
        (params, "a space-filling start") for params in design if params != defaults
    ]


def run_search(
    search: Search,
    *,
    run_one: Callable[[], object],
    confirm_one: Callable[[Any], None] | None,
    stop_reason: Callable[[], str | None],
    wait_for_others: Callable[[], str | None] | None = None,
) -> str:
    """The chain's loop: confirm a candidate as soon as there is one, else stop when the
    study says so, else run the next trial. Returns why it stopped.

    With several workers: only the one with ``confirm_one`` (the chain's leader) confirms;
    when every place of the budget is taken by trials still running elsewhere,
    ``wait_for_others`` waits a moment (None: this worker stops, with its answer as the
    reason; a worker without it stops at once). ``stop_reason`` bounds the waiting (the
    time budget)."""
    while True:
        with search.view():  # one read of the study for the three questions
            candidate = search.candidate() if confirm_one is not None else None
            reason = stop_reason() if candidate is None else None
            free = candidate is not None or reason is not None or search.can_ask()
        if candidate is not None and confirm_one is not None:
            confirm_one(candidate)
            continue
        if reason is not None:
            return reason
        if not free:
            left = wait_for_others() if wait_for_others is not None else None
            if wait_for_others is None or left is not None:
                return left or "every place of the budget is taken by other workers' trials"
            continue
        run_one()
