"""The tune display in a log (Jenkins, CI): a running trial shows it is alive, sparingly."""

from __future__ import annotations

import io

from rich.console import Console

from trainchain.progress import TuneDisplay


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
    assert lines[0] == "  trial 1/8 #0: learning_rate=0.001"
    assert lines[1].startswith("    trial 1/8 #0 running 0.0 min: Epoch 3/60")
    assert lines[2].endswith("val_accuracy: 0.70")

    sparse, out = _display(3600.0)
    sparse.trial_started(1, 8, {"learning_rate": 0.001}, number=0)
    sparse.line("Epoch 3/60")
    assert out.getvalue().splitlines() == ["  trial 1/8 #0: learning_rate=0.001"]

    quiet, out = _display(0.0, quiet=True)
    quiet.trial_started(1, 8, {"learning_rate": 0.001}, number=0)
    quiet.line("Epoch 3/60")
    assert out.getvalue() == ""
