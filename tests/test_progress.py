"""The tune display in a log (Jenkins, CI): a running trial shows it is alive, sparingly."""

from __future__ import annotations

import io

from rich.console import Console

from trainchain.core.progress import TuneDisplay


def _display(every: float, *, quiet: bool = False) -> tuple[TuneDisplay, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, highlight=False, soft_wrap=True, force_terminal=False)
    return TuneDisplay("val_accuracy", 0.8, ">=", console=console, every=every, quiet=quiet), out


def test_log_gets_the_running_trials_latest_line_at_the_set_interval() -> None:
    """With no terminal, script lines are printed with the trial's label, at most one per
    interval; a long interval prints none, and quiet prints nothing at all."""
    display, out = _display(0.0)
    display.trial_started(1, 8, {"learning_rate": 0.001}, number=0)
    display.line("Epoch 3/60")
    display.line("50/50 - 10s - accuracy: 0.71 - val_accuracy: 0.70")
    lines = out.getvalue().splitlines()
    assert lines[0] == "  trial 1/8 #1: learning_rate=0.001"
    assert lines[1].startswith("    trial 1/8 #1 running 0.0 min: Epoch 3/60")
    assert lines[2].endswith("val_accuracy: 0.70")

    sparse, out = _display(3600.0)
    sparse.trial_started(1, 8, {"learning_rate": 0.001}, number=0)
    sparse.line("Epoch 3/60")
    assert out.getvalue().splitlines() == ["  trial 1/8 #1: learning_rate=0.001"]

    quiet, out = _display(0.0, quiet=True)
    quiet.trial_started(1, 8, {"learning_rate": 0.001}, number=0)
    quiet.line("Epoch 3/60")
    assert out.getvalue() == ""


def test_each_trial_and_the_confirmation_show_their_uncertainty() -> None:
    """A finished trial shows its score with its fold spread; a trial pruned by the fold
    rule says it was worse than the best on the same folds; the confirmation shows its
    fresh-fold figure and the bound the goal is judged by."""
    from trainchain.core.config import Goal
    from trainchain.core.verdict import Estimate, confirm

    display, out = _display(3600.0)
    display.trial_started(1, 8, {"band": "8-13"}, number=0)
    estimate = Estimate(0.9, (0.85, 0.95, 0.9, 0.85, 0.95), "f")
    display.trial_finished(1, 8, value=estimate, best=0.9, best_trial=0, error=None, test=0.91)
    display.trial_started(2, 8, {"band": "18-26"}, number=1)
    display.trial_pruned(2, 8, step=3, value=0.55, best=0.9, best_trial=0, rule="wilcoxon")
    fresh = Estimate(0.9, (0.85, 0.95, 0.9, 0.85, 0.95) * 4, "fresh")
    result = confirm(
        Goal(metric="accuracy", threshold=0.8), 0, fresh, search_folds_ids=["f"],
        folds_per_repeat=5, alpha=0.025,
    )  # fmt: skip
    display.confirmation(result)
    lines = out.getvalue().splitlines()
    assert lines[1] == (
        "  trial 1/8 #1: val_accuracy 0.9000 +- 0.0500 (sd of 5 folds) (test 0.9100) | "
        "best 0.9000 (#1) | goal >= 0.8"
    )
    assert lines[3].startswith("  trial 2/8 #2 pruned after fold 3: val_accuracy of that fold")
    assert "significantly worse than the best trial on the same folds (Wilcoxon)" in lines[3]
    assert lines[4].startswith("  confirmation of #1: confirmed: 0.9000 +- 0.0459 (sd of 20 folds)")
    assert "lower 97.5% bound 0.8" in lines[4] and lines[4].endswith(">= 0.8")
