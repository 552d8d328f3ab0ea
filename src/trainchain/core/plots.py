"""The goal metric per trial, as a PNG for the email.

matplotlib is imported inside :func:`metric_plot` only (the CLI must not pay for
it at import time), with the Agg backend and a bare
:class:`matplotlib.figure.Figure`: no pyplot, so no global figure state.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

from trainchain.core.report import trial_label

if TYPE_CHECKING:
    from trainchain.core.report import ChainReport, TrialSummary

__all__ = ["metric_plot"]

_COMPLETE = "COMPLETE"
_PRUNED = "PRUNED"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _best_so_far(values: list[float], minimize: bool) -> list[float]:
    best: list[float] = []
    for v in values:
        best.append(v if not best else (min(best[-1], v) if minimize else max(best[-1], v)))
    return best


def _draw_trials(
    ax: Any, report: ChainReport, done: list[TrialSummary], pruned: list[TrialSummary]
) -> None:
    minimize = report.direction.lower() == "minimize"
    marked = {t.number for t in done} | {t.number for t in pruned}
    failed = [t.number for t in report.trials if t.number not in marked]
    if done:
        xs = [t.number for t in done]
        ys = [float(t.value) for t in done if t.value is not None]
        spreads = [_spread(t) for t in done]
        ax.plot(xs, ys, "o-", color="tab:blue", label="completed (+- fold sd)", zorder=3)
        if any(sd > 0 for sd in spreads):
            ax.errorbar(xs, ys, yerr=spreads, fmt="none", ecolor="tab:blue", alpha=0.5, capsize=3)
        best = _best_so_far(ys, minimize)
        ax.step(xs, best, where="post", color="tab:green", linewidth=2, label="best so far")
        if report.best_trial is not None and _finite(report.best_value):
            ax.plot(
                [report.best_trial],
                [report.best_value],
                "*",
                color="gold",
                markeredgecolor="black",
                markersize=16,
                label=f"best (trial {trial_label(report.best_trial)})",
                zorder=4,
            )
    if pruned:
        ax.plot(
            [t.number for t in pruned],
            [float(t.value) for t in pruned if t.value is not None],
            "^",
            markerfacecolor="none",
            color="tab:orange",
            linestyle="none",
            label="pruned",
            zorder=3,
        )
    if failed:
        # No value to plot: mark them along the bottom edge (x in data, y in axes units).
        ax.plot(
            failed,
            [0.03] * len(failed),
            "x",
            color="tab:red",
            markersize=9,
            linestyle="none",
            transform=ax.get_xaxis_transform(),
            label="failed (no value)",
            zorder=3,
        )


def _spread(trial: TrialSummary) -> float:
    estimate = trial.estimate()
    return (estimate.spread or 0.0) if estimate is not None else 0.0


def _draw_checks(ax: Any, report: ChainReport) -> None:
    """Beside the best trial: its confirmation (on fresh folds or the held-out set: the
    score, and a line down to the one-sided bound the rule compares with the goal) and its
    held-out test (the accuracy with its 95% interval)."""
    if report.best_trial is None:
        return
    minimize = report.direction.lower() == "minimize"
    confirmation = report.confirmation
    if confirmation is not None:
        x = confirmation.trial + 0.2
        y = confirmation.estimate.value
        colour = "tab:green" if confirmation.confirmed else "tab:red"
        ax.plot(
            [x],
            [y],
            "D",
            color=colour,
            zorder=4,
            label=(
                f"confirmation {confirmation.where} (to its bound)"
                + ("" if confirmation.confirmed else ": NOT confirmed")
            ),
        )
        if confirmation.bound is not None:
            ax.plot([x, x], [y, confirmation.bound], "-", color=colour, linewidth=2, zorder=4)
            ax.plot([x], [confirmation.bound], "v" if not minimize else "^", color=colour, zorder=4)
    interval = report.best_test_interval
    test = report.promotion_test
    value, low_high = (
        (test.accuracy, test.interval) if test is not None else (report.best_test_value, interval)
    )
    if value is not None:
        x = report.best_trial + 0.4
        if low_high is not None:
            low, high = low_high
            ax.errorbar(
                [x],
                [value],
                yerr=[[value - low], [high - value]],
                fmt="s",
                color="tab:purple",
                capsize=4,
                zorder=4,
                label="held-out test (95% interval)",
            )
        else:
            ax.plot([x], [value], "s", color="tab:purple", zorder=4, label="held-out test")


def _draw_goal(ax: Any, report: ChainReport) -> None:
    op = "<=" if report.direction.lower() == "minimize" else ">="
    label = f"goal: {report.goal_metric} {op} {report.threshold:g}"
    ax.axhline(report.threshold, linestyle="--", color="black", linewidth=1, label=label)
    # Label the line outside the plotting area, as a tick of a right-hand axis at the
    # threshold: inside, the label sat on the trials' line wherever it crossed the goal.
    right = ax.secondary_yaxis("right")
    right.set_yticks([report.threshold], labels=[f"goal {op} {report.threshold:g}"])
    right.tick_params(length=0, labelsize="small")


def metric_plot(report: ChainReport) -> bytes:
    """:func:`metric_figure` as a PNG."""
    buffer = io.BytesIO()
    metric_figure(report).savefig(buffer, format="png")
    return buffer.getvalue()


def metric_figure(report: ChainReport) -> Any:
    """A matplotlib Figure of ``report.goal_metric`` per trial, with the best-so-far and the goal.

    Completed trials are points joined by a line, with their fold spread as error bars;
    beside the best trial, its confirmation (a diamond, with a line down to
    the bound the goal is judged by) and its held-out test with its 95% interval (a
    square); pruned trials with a value are
    hollow triangles; failed trials (and pruned ones without a value) are crosses
    along the bottom edge; the best value so far is a step line; the threshold is
    a dashed horizontal line, labelled outside the plotting area. With no completed
    trial the picture says so.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    trials = sorted(report.trials, key=lambda t: t.number)
    done = [t for t in trials if t.state == _COMPLETE and _finite(t.value)]
    pruned = [t for t in trials if t.state == _PRUNED and _finite(t.value)]

    fig = Figure(figsize=(7.5, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    _draw_trials(ax, report, done, pruned)
    _draw_checks(ax, report)
    _draw_goal(ax, report)
    if done or pruned:
        ax.margins(y=0.12)  # room for the goal's label when the goal is the top or bottom
    else:  # nothing to scale by: centre the goal
        pad = max(abs(report.threshold) * 0.1, 0.1)
        ax.set_ylim(report.threshold - pad, report.threshold + pad)
    if not done:
        ax.text(
            0.5,
            0.3,
            "no completed trials",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=14,
            color="dimgray",
        )
    if trials:
        ax.set_xlim(trials[0].number - 0.5, trials[-1].number + 0.7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # Optuna numbers trials from 0; people (console, email) from 1
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{int(x) + 1}"))
    else:
        ax.set_xlim(-0.5, 0.5)
        ax.set_xticks([])
    ax.set_xlabel("trial")
    ax.set_ylabel(report.goal_metric)
    ax.set_title(
        f"{report.model_name}: {report.goal_metric} per trial\ngoal {report.verdict_text}",
        fontsize="medium",
    )
    ax.grid(visible=True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig
