"""Honest verdicts (pure): a score with its folds, the confirmation bound and rule, the
held-out interval, the study's decisions over a real in-memory Optuna study, and the fold
pruner."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from scipy import stats

from tests.test_config import GOOD
from trainchain.adapters.studies import (
    EarlierTrial,
    add_warm_trials,
    make_pruner,
    open_study,
    space_filling,
    startup_trials,
)
from trainchain.chain.search import Search, first_trials, fresh_seed
from trainchain.core.config import Direction, Goal, parse_config
from trainchain.core.verdict import (
    Confirmation,
    Estimate,
    binomial_interval,
    confirm,
    confirm_on_heldout,
    lower_bound,
    read_estimate,
)

GOAL = Goal(metric="accuracy", threshold=0.8)
FOLDS = [0.9, 0.85, 0.95, 0.8, 0.9]


# --- the estimate a script reports ------------------------------------------------------


def test_read_estimate_takes_the_folds_their_id_and_sizes() -> None:
    """read_estimate takes the per-fold scores, their id and sizes, and describes the spread."""
    raw = {
        "val_accuracy": sum(FOLDS) / 5,
        "val_accuracy_folds": FOLDS,
        "val_folds_id": "abc",
        "val_fold_sizes": [20] * 5,
        "test_accuracy": 0.5,
    }
    estimate, problem = read_estimate(raw, "val_accuracy")
    assert problem is None and estimate is not None
    assert estimate.folds == tuple(FOLDS) and estimate.folds_id == "abc"
    assert estimate.sizes == (20,) * 5
    assert estimate.spread == pytest.approx(stats.tstd(FOLDS))
    assert estimate.describe() == f"0.880 +- {stats.tstd(FOLDS):.3f} (sd of 5 folds)"


def test_a_score_without_folds_is_kept_with_its_spread_unknown() -> None:
    """A score without per-fold scores is kept, with its spread unknown."""
    estimate, problem = read_estimate({"val_accuracy": 0.7}, "val_accuracy")
    assert problem is None and estimate == Estimate(0.7)
    assert estimate.spread is None and "spread unknown" in estimate.describe()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"val_accuracy": 0.9, "val_accuracy_folds": [0.8, 0.8]}, "is not the mean of"),
        ({"val_accuracy": 0.8, "val_accuracy_folds": []}, "non-empty list"),
        ({"val_accuracy": 0.8, "val_accuracy_folds": [0.8, None]}, "finite numbers"),
        ({"val_accuracy": 0.8, "val_folds_id": 3}, "must be a string"),
        ({"val_accuracy": None}, "no finite 'val_accuracy'"),
    ],
)
def test_malformed_folds_are_refused_with_the_reason(raw: dict[str, Any], message: str) -> None:
    """Malformed fold scores or a missing score are refused with the reason."""
    estimate, problem = read_estimate(raw, "val_accuracy")
    assert estimate is None and problem is not None and message in problem


# --- the confirmation bound ---------------------------------------------------------------


def test_lower_bound_is_the_corrected_repeated_cv_t_bound() -> None:
    """mean - t(1 - alpha, J - 1) * sqrt((1/J + 1/(k - 1)) * s^2), Nadeau and Bengio."""
    folds = FOLDS * 4  # 20 fold scores of 5-fold x 4
    estimate = Estimate(sum(folds) / 20, tuple(folds))
    expected = estimate.value - stats.t.ppf(0.975, 19) * math.sqrt(
        (1 / 20 + 1 / 4) * stats.tvar(folds)
    )
    bound = lower_bound(estimate, folds_per_repeat=5, alpha=0.025)
    assert bound == pytest.approx(expected)
    # the correction makes it wider than the naive standard error of the mean
    naive = estimate.value - stats.t.ppf(0.975, 19) * stats.sem(folds)
    assert bound is not None and bound < naive
    upper = lower_bound(estimate, folds_per_repeat=5, alpha=0.025, direction=Direction.MINIMIZE)
    assert upper == pytest.approx(2 * estimate.value - expected)


def test_one_split_of_known_size_gets_the_exact_binomial_bound() -> None:
    """One split of known size gets the exact binomial bound; of unknown size, no bound."""
    estimate = Estimate(0.8, (0.8,), sizes=(400,))
    bound = lower_bound(estimate, folds_per_repeat=1, alpha=0.05)
    assert bound == pytest.approx(binomial_interval(320, 400, 0.90)[0])
    assert bound is not None and 0.76 < bound < 0.8
    assert lower_bound(Estimate(0.8, (0.8,)), folds_per_repeat=5, alpha=0.05) is None


def test_binomial_interval_is_clopper_pearson() -> None:
    """binomial_interval is the exact Clopper-Pearson interval and rejects more successes than
    trials."""
    low, high = binomial_interval(22, 24)
    ci = stats.binomtest(22, 24).proportion_ci(method="exact")
    assert (low, high) == pytest.approx((ci.low, ci.high))
    assert binomial_interval(24, 24)[1] == 1.0
    with pytest.raises(ValueError, match="successes"):
        binomial_interval(25, 24)


def _fresh(values: list[float], folds_id: str = "fresh") -> Estimate:
    return Estimate(sum(values) / len(values), tuple(values), folds_id)


def test_confirmed_when_the_fresh_folds_bound_clears_the_threshold() -> None:
    """A result is confirmed when the lower bound on fresh folds clears the threshold, and the
    reason says so."""
    result = confirm(
        GOAL, 4, _fresh(FOLDS * 4), search_folds_ids=["search"], folds_per_repeat=5, alpha=0.025
    )
    assert result.confirmed and result.bound is not None and result.bound >= 0.8
    assert result.reason.startswith("confirmed: 0.8800 +- ")
    assert "lower 97.5% bound" in result.reason and ">= 0.8" in result.reason


@pytest.mark.parametrize(("n", "confirmed"), [(2000, True), (400, False)])
def test_a_held_out_accuracy_confirms_by_its_exact_binomial_bound(n: int, confirmed: bool) -> None:
    """confirmation.method heldout: 0.87 of 2,000 held-out images confirms a goal of 0.85
    (one-sided 97.5% Clopper-Pearson bound about 0.854); 0.87 of 400 does not (about
    0.833). The record keeps its method through the study's JSON."""
    goal = Goal(metric="accuracy", threshold=0.85)
    result = confirm_on_heldout(goal, 3, 0.87, n, alpha=0.025, searched=Estimate(0.9))
    low, _ = binomial_interval(round(0.87 * n), n, 0.95)
    assert result.bound == pytest.approx(low)
    assert result.confirmed is confirmed and (low >= 0.85) is confirmed
    assert result.reason.startswith(f"{'' if confirmed else 'not '}confirmed: held-out 0.8700 (")
    assert result.estimate.sizes == (n,) and result.method == "heldout"
    assert result.where == "on the held-out test set"
    assert Confirmation.from_dict(result.to_dict()) == result
    old = {k: v for k, v in result.to_dict().items() if k != "method"}  # before the field
    assert Confirmation.from_dict(old).where == "on fresh folds"


def test_a_lucky_search_score_is_not_confirmed_when_its_bound_misses() -> None:
    """Fresh folds averaging 0.82 with a wide spread: the bound misses 0.8."""
    folds = [0.95, 0.7, 0.9, 0.75, 0.8] * 4
    result = confirm(
        GOAL, 4, _fresh(folds), search_folds_ids=["search"], folds_per_repeat=5, alpha=0.025
    )
    assert not result.confirmed and result.bound is not None and result.bound < 0.8
    assert result.reason.startswith("not confirmed:") and "misses 0.8" in result.reason


@pytest.mark.parametrize(
    ("estimate", "message"),
    [
        (_fresh(FOLDS * 4, folds_id="search"), "the search's own folds"),
        (Estimate(0.95), "no per-fold scores"),
        (Estimate(0.95, (0.95,)), "no spread"),
    ],
)
def test_no_confirmation_without_fresh_folds_or_a_spread(estimate: Estimate, message: str) -> None:
    """No confirmation on the search's own folds, without per-fold scores, or without a spread."""
    result = confirm(
        GOAL, 1, estimate, search_folds_ids=["search"], folds_per_repeat=5, alpha=0.025
    )
    assert not result.confirmed and result.bound is None and message in result.reason


# --- the study's decisions ------------------------------------------------------------------


def _model(**changes: Any) -> Any:
    data = {**GOOD, "goal": {"metric": "accuracy", "threshold": 0.8}, **changes}
    return parse_config(data)


def _study(pruner: Any = None) -> Any:
    return open_study(optuna.storages.InMemoryStorage(), "s", Direction.MAXIMIZE, 0, pruner=pruner)


def _finish(search: Search, value: float, folds_id: str = "search") -> Any:
    trial, _ = search.ask()
    search.tell_complete(trial, Estimate(value, (value,) * 5, folds_id))
    return trial


def test_search_confirms_the_best_trial_once_and_stops_after_a_confirmation() -> None:
    """The search confirms each new best trial above the goal once, on fresh folds at a split
    alpha, and stops after a confirmation."""
    model = _model(confirmation={"candidates": 2, "alpha": 0.05, "repeats": 4})
    search = Search(_study(), model)
    _finish(search, 0.7)
    assert search.candidate() is None  # below the goal: nothing to confirm
    best = _finish(search, 0.85)
    assert search.candidate().number == best.number
    assert search.confirmation_alpha() == 0.025
    plan = search.confirm_plan(0)
    assert plan == {"folds": 5, "repeats": 4, "seed": fresh_seed(0, 0), "purpose": "confirm"}
    assert plan["seed"] != search.search_plan()["seed"]
    search.record(confirm(GOAL, best.number, _fresh([0.7, 0.95] * 10), search_folds_ids=["search"],
                          folds_per_repeat=5, alpha=0.025))  # fmt: skip
    assert search.candidate() is None  # tried: only a new best is a candidate
    assert search.stop_reason(failures=0, elapsed=0) is None and search.verdict(failed=False) == (
        "search_only"
    )
    better = _finish(search, 0.9)
    assert search.candidate().number == better.number
    search.record(confirm(GOAL, better.number, _fresh(FOLDS * 4), search_folds_ids=["search"],
                          folds_per_repeat=5, alpha=0.025))  # fmt: skip
    assert "confirmed" in (search.stop_reason(failures=0, elapsed=0) or "")
    assert search.verdict(failed=False) == "confirmed"
    assert [c.trial for c in Search(search.study, model).confirmations()] == [1, 2]


def test_search_stops_when_no_confirmation_is_left() -> None:
    """The search stops, saying none was confirmed, when its confirmations are used up."""
    search = Search(_study(), _model(confirmation={"candidates": 1}))
    best = _finish(search, 0.85)
    search.record(confirm(GOAL, best.number, Estimate(0.85), search_folds_ids=["search"],
                          folds_per_repeat=5, alpha=0.05))  # fmt: skip
    reason = search.stop_reason(failures=0, elapsed=0)
    assert reason is not None and "none was confirmed" in reason


def test_a_trial_on_other_folds_is_not_the_studys_estimator() -> None:
    """A trial validated on other folds or with fewer fold scores is refused with the reason."""
    search = Search(_study(), _model())
    _finish(search, 0.7, folds_id="a")
    assert search.check_estimate(Estimate(0.7, (0.7,) * 5, "a")) is None
    other = search.check_estimate(Estimate(0.9, (0.9,) * 5, "b"))
    assert other is not None and "validated on other folds" in other
    fewer = search.check_estimate(Estimate(0.9, (0.9,) * 3, "a"))
    assert fewer is not None and "3 per-fold scores" in fewer


def test_warm_trials_inform_the_sampler_but_not_the_budget_or_the_best() -> None:
    """Warm trials from an earlier study count neither against the budget nor as the best or a
    candidate."""
    model = _model()
    search = Search(_study(), model)
    earlier = EarlierTrial({"n": 4, "C": 1.0, "kernel": "rbf"}, 0.99, "old", "c0ffee", 3)
    assert add_warm_trials(search.study, model, [earlier]) == 1
    assert search.used() == 0 and search.best() is None
    assert search.candidate() is None  # an earlier study's 0.99 is not this study's goal
    _finish(search, 0.7)
    assert search.used() == 1 and search.best().value == 0.7


@pytest.mark.parametrize(("budget", "startup"), [(1, 2), (3, 3), (5, 5), (10, 10), (25, 10)])
def test_startup_trials_are_sized_to_the_budget(budget: int, startup: int) -> None:
    """Startup trials follow the budget, at least 2 and at most 10."""
    assert startup_trials(budget) == startup


def test_a_first_study_starts_from_the_defaults_and_a_space_filling_design() -> None:
    """Each categorical choice comes once before any comes again (the defaults' own last),
    each number from its own stratum of the range (log scale for a log parameter)."""
    model = _model(
        budget={"max_trials": 5, "seed": 4},
        search_space={
            "band": {"type": "categorical", "choices": ["a", "b", "c", "d"], "default": "a"},
            "C": {"type": "float", "low": 0.01, "high": 100, "log": True, "default": 1},
            "n": {"type": "int", "low": 2, "high": 10, "default": 4},
        },
    )
    first = first_trials(model)
    assert first[0] == (model.defaults(), "defaults")
    design = [params for params, source in first[1:] if source == "a space-filling start"]
    assert len(first) == startup_trials(5) == 5 and len(design) == 4
    assert sorted(p["band"] for p in design[:3]) == ["b", "c", "d"] and design[3]["band"] == "a"
    strata = sorted(int(4 * (math.log10(p["C"]) + 2) / 4) for p in design)
    assert strata == [0, 1, 2, 3]  # one value in each quarter of 10^-2..10^2
    assert all(2 <= p["n"] <= 10 and isinstance(p["n"], int) for p in design)
    assert space_filling(model, 4, 4, tried=model.defaults()) == design  # seeded
    champion = ({"band": "c", "C": 3.0, "n": 5}, "champion")
    assert first_trials(model, champion=champion) == [champion]  # no design after a champion


def test_the_fold_pruner_compares_with_this_studys_best_only() -> None:
    """Fold by fold, a trial worse on every fold than the best of this study is pruned; a
    better trial of an earlier study (warm start) is never what decides."""
    model = _model(pruning={"rule": "wilcoxon", "p_threshold": 0.1})
    study = _study(make_pruner(model.pruning))
    search = Search(study, model)
    earlier = EarlierTrial(
        {"n": 4, "C": 1.0, "kernel": "rbf"}, 0.99, "old", "c0ffee", 3, {i: 0.99 for i in range(5)}
    )
    add_warm_trials(study, model, [earlier])

    def reports(values: list[float]) -> bool:
        trial, _ = search.ask()
        pruned = False
        for step, value in enumerate(values):
            trial.report(value, step)
            pruned = pruned or (search.prunable(step) and bool(trial.should_prune()))
        search.tell_complete(trial, Estimate(sum(values) / len(values), tuple(values), "f"))
        return pruned

    assert not reports([0.80, 0.82, 0.79, 0.81, 0.80])  # the study's own best so far
    assert reports([0.60, 0.62, 0.55, 0.61, 0.58])  # worse on every fold: pruned (at fold 3)
    assert not reports([0.81, 0.80, 0.83, 0.80, 0.82])  # not worse: never pruned
    assert [search.prunable(step) for step in range(5)] == [True] * 4 + [False]
