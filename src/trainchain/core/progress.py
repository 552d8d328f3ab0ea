"""The live display of a tune: trial n of N, this trial's result, the best so far, the goal.

On a terminal a spinner shows the running trial and its latest report line; in
a log (Jenkins, CI) each event is one plain line.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from rich.console import Console
from rich.status import Status

from trainchain.core.config import Direction, Goal
from trainchain.core.report import trial_label
from trainchain.core.verdict import Confirmation, Estimate


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


class TuneDisplay:
    def __init__(
        self,
        metric: str,
        threshold: float,
        op: str,
        *,
        quiet: bool = False,
        console: Console | None = None,
        every: float = 60.0,
    ) -> None:
        self.console = console or Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self.metric = metric
        self.goal = f"{op} {threshold}"
        self.better = "higher" if op == ">=" else "lower"
        self.quiet = quiet
        self._status: Status | None = None
        self._label = ""
        self.every = every  # in a log: at most one line of a running trial per this many s
        self._started = self._shown = 0.0

    @classmethod
    def for_goal(cls, goal: Goal, *, quiet: bool = False) -> TuneDisplay:
        op = ">=" if goal.direction is Direction.MAXIMIZE else "<="
        return cls(goal.val_metric, goal.threshold, op, quiet=quiet)

    def start(self, chain_id: str, resumed: bool, used: int, max_trials: int) -> None:
        if self.quiet:
            return
        verb = "resuming" if resumed else "starting"
        self.console.print(
            f"[bold]tune[/bold] {verb} study {chain_id}: {used} of {max_trials} trials done, "
            f"goal {self.metric} {self.goal}"
        )

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def relay(self, text: str) -> None:
        """A line of another process (a worker), shown as it is: no markup."""
        if not self.quiet:
            self.console.print(text, markup=False, highlight=False)

    def trial_started(
        self, n: int, total: int, params: dict[str, Any], *, number: int, attempt: int = 1
    ) -> None:
        """Trial ``n`` of ``total`` (the budget's count) is Optuna's trial ``#number``."""
        if self.quiet:
            return
        self._label = f"trial {n}/{total} {trial_label(number)}"
        shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        extra = f" (attempt {attempt})" if attempt > 1 else ""
        self.console.print(f"  {self._label}{extra}: {shown}")
        self._started = self._shown = time.monotonic()
        if self.console.is_terminal:
            if self._status is None:
                self._status = self.console.status(f"{self._label} running")
                self._status.start()
            else:
                self._status.update(f"{self._label} running{extra}")

    def line(self, text: str) -> None:
        """A line the training script printed: the spinner shows the latest; in a log
        (Jenkins) one is printed now and then, so a long trial shows it is alive."""
        if self._status is not None:
            self._status.update(f"{self._label} running: {text[-100:]}")
        elif not self.quiet and self._label and text.strip():
            now = time.monotonic()
            if now - self._shown >= self.every:
                self._shown = now
                minutes = (now - self._started) / 60
                self.console.print(f"    {self._label} running {minutes:.1f} min: {text[-160:]}")

    def trial_finished(
        self,
        n: int,
        total: int,
        *,
        value: Estimate | None,
        best: float | None,
        best_trial: int | None,
        error: str | None,
        test: float | None,
    ) -> None:
        """Trial ``n`` ended: its score with its fold spread (or its error), the held-out
        figure, the best so far and the goal."""
        self._stop_status()
        if self.quiet:
            return
        if error:
            result = f"[red]failed[/red]: {error}"
        else:
            result = f"{self.metric} " + (value.describe(4) if value is not None else "-")
            if test is not None:
                result += f" (test {_fmt(test)})"
        best_text = f"best {_fmt(best)}" + (
            f" ({trial_label(best_trial)})" if best_trial is not None else ""
        )
        self.console.print(
            f"  {self._label or f'trial {n}/{total}'}: {result} | {best_text} | goal {self.goal}"
        )

    def trial_pruned(
        self,
        n: int,
        total: int,
        *,
        step: int | None,
        value: float | None,
        best: float | None,
        best_trial: int | None,
        rule: str = "median",
        reduction_factor: int = 3,
    ) -> None:
        """The trial was stopped at ``step``: by the median rule, its value there was worse
        than the median of the earlier trials at the same step; by the Wilcoxon rule, its
        folds so far were significantly worse than the best trial's same folds; by
        successive halving, it was not among the best ``1/reduction_factor`` of the trials
        that reached that step (a rung)."""
        self._stop_status()
        if self.quiet:
            return
        if rule == "wilcoxon":
            at = f" after fold {step}" if step is not None else ""
            why = f"significantly {'worse' if self.better == 'higher' else 'higher'} than the "
            why += "best trial on the same folds (Wilcoxon)"
            shown = f"{self.metric} of that fold {_fmt(value)}"
        elif rule == "halving":
            at = f" at epoch {step}" if step is not None else ""
            why = f"not among the best 1/{reduction_factor} of the trials at that epoch: "
            why += "successive halving"
            shown = f"{self.metric} {_fmt(value)}"
        else:
            at = f" at epoch {step}" if step is not None else ""
            why = f"median of earlier trials {self.better}"
            shown = f"{self.metric} {_fmt(value)}"
        best_text = f"best {_fmt(best)}" + (
            f" ({trial_label(best_trial)})" if best_trial is not None else ""
        )
        self.console.print(
            f"  {self._label or f'trial {n}/{total}'} [yellow]pruned[/yellow]{at}: "
            f"{shown} ({why}) | {best_text} | goal {self.goal}"
        )

    def confirmation_started(self, number: int) -> None:
        """The confirmation run of trial ``#number`` starts: its script lines carry that
        label."""
        self._label = f"confirmation of {trial_label(number)}"
        self._started = self._shown = time.monotonic()

    def confirmation(self, result: Confirmation) -> None:
        """The confirmation of a candidate (fresh folds or the held-out set): the figure, the
        bound, the rule."""
        if self.quiet:
            return
        colour = "green" if result.confirmed else "yellow"
        self.console.print(
            f"  confirmation of {trial_label(result.trial)}: [{colour}]{result.reason}[/{colour}]"
        )

    def close(self) -> None:
        self._stop_status()

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
