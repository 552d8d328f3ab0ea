"""Render the chain's outcome as an email (pure: no network, no files, no clock).

:func:`render` turns a :class:`~trainchain.core.report.ChainReport` into an
:class:`email.message.EmailMessage`: a plain-text body, an HTML alternative,
and the metric plot attached as ``metric-per-trial.png`` when one is given.
Sending or keeping the message is :mod:`trainchain.adapters.mailer`'s job.

The renderer never sees SMTP settings, so it cannot leak the SMTP password;
credentials embedded in URLs (``scheme://user:password@host``) anywhere in the
report (repository, tracking URI, error, log tail) are replaced by ``***``.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
from collections.abc import Sequence
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from trainchain.core.config import base_metric
from trainchain.core.promotion import describe_chance, describe_paired
from trainchain.core.redaction import redact
from trainchain.core.report import ChainReport, TrialSummary, trial_label
from trainchain.core.status import RunState

__all__ = ["PLOT_FILENAME", "render", "subject"]

PLOT_FILENAME = "metric-per-trial.png"
PLOT_CID = "metric-per-trial@trainchain"  # the plot's Content-ID: the HTML shows it inline

# Bounds on what goes into one email (DESIGN: bounded payload size).
MAX_LOG_LINES = 60
MAX_LOG_CHARS = 16_000
MAX_ERROR_CHARS = 4_000
MAX_SUBJECT_DETAIL = 120
MAX_TABLE_TRIALS = 500
MAX_EMAIL_CHARS = 254
_EMAIL = re.compile(r"^[^@\s<>,;:\"()\[\]\\]+@[^@\s<>,;:\"()\[\]\\]+\.[^@\s<>,;:\"()\[\]\\]+$")


def email_address(text: object) -> str | None:
    """``text`` as one plain email address (``name@host.tld``), or None when it is not one
    (a GitHub noreply address is one; a name, a list or a header is not)."""
    if not isinstance(text, str):
        return None
    address = text.strip()
    if len(address) > MAX_EMAIL_CHARS or not _EMAIL.match(address):
        return None
    return address


def _one_line(text: str, limit: int = MAX_SUBJECT_DETAIL) -> str:
    line = " ".join(redact(text).split())
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def _pair(value: float, threshold: float) -> tuple[str, str]:
    """Format a value and a threshold with enough digits that unequal numbers look unequal."""
    for digits in (4, 6, 8, 12, 17):
        a, b = _num(value, digits), _num(threshold, digits)
        if a != b or value == threshold:
            return a, b
    return repr(value), repr(threshold)


def _minimize(report: ChainReport) -> bool:
    return report.direction.lower() == "minimize"


def _reached(report: ChainReport, value: float | None) -> bool:
    if value is None or not math.isfinite(value):
        return False
    return value <= report.threshold if _minimize(report) else value >= report.threshold


def _comparison(report: ChainReport, value: float) -> str:
    """``"0.84 >= 0.8"`` or ``"0.71 < 0.999"``: the value against the goal, honestly."""
    reached = _reached(report, value)
    op = {(False, True): ">=", (False, False): "<", (True, True): "<=", (True, False): ">"}[
        (_minimize(report), reached)
    ]
    a, b = _pair(value, report.threshold)
    return f"{a} {op} {b}"


def _error_line(report: ChainReport) -> str:
    if report.error and report.error.strip():
        return _one_line(report.error.strip().splitlines()[0])
    if report.status is RunState.RUNNING:
        return "the chain stopped before it finished (its report still says running)"
    return "the chain failed without an error message"


def _bounded_metric(report: ChainReport) -> str:
    """What the confirmation's bound is of: the goal's metric on fresh folds, or the
    held-out accuracy."""
    confirmation = report.confirmation
    if confirmation is not None and confirmation.method == "heldout":
        return "held-out " + base_metric(report.goal_metric)
    return report.goal_metric


def subject(report: ChainReport) -> str:
    """The one-line subject: outcome, goal and what happened in the registry."""
    head = f"[trainchain] {_one_line(report.model_name, 80)}:"
    metric = report.goal_metric
    confirmation = report.confirmation
    side = "upper" if _minimize(report) else "lower"
    if report.status is RunState.SUCCEEDED:
        if confirmation is not None and confirmation.bound is not None:
            goal = (
                f"goal reached and confirmed ({_bounded_metric(report)} {side} bound "
                f"{_comparison(report, confirmation.bound)})"
            )
        elif report.best_value is not None:
            goal = f"goal reached ({metric} {_comparison(report, report.best_value)})"
        else:
            goal = "goal reached"
        if report.same_as:
            outcome = f"{report.same_as} already is this model"
        elif report.registry_version is None:
            outcome = "not registered"
        elif report.became_champion:
            outcome = f"v{report.registry_version} is champion"
        else:
            outcome = f"v{report.registry_version} is challenger, champion kept"
        return f"{head} {goal}, {outcome}"
    if report.status is RunState.GOAL_NOT_REACHED and report.verdict == "search_only":
        found = report.best_value if report.best_value is not None else float("nan")
        bound = (
            f"; {side} bound {_num(confirmation.bound)} {confirmation.where}"
            if confirmation is not None and confirmation.bound is not None
            else ""
        )
        return (
            f"{head} goal NOT confirmed ({metric} {_comparison(report, found)} on the search's "
            f"validation only{bound})"
        )
    if report.status is RunState.GOAL_NOT_REACHED:
        used = len(report.trials)
        if report.best_value is not None:
            best = f"best {metric} {_comparison(report, report.best_value)}"
        else:
            best = "no completed trial"
        return f"{head} goal NOT reached ({best} after {used} trial{'s' if used != 1 else ''})"
    return f"{head} FAILED: {_error_line(report)}"


def _value(value: Any) -> str:
    """A hyperparameter's value as people write it: ``8-12``, ``0.01``, ``True``, not a
    Python repr (``'8-12'``)."""
    if isinstance(value, float):
        return _num(value, 6)
    return redact(str(value))


def _params_lines(params: dict[str, Any]) -> list[str]:
    if not params:
        return ["(none)"]
    return [f"{key} = {_value(params[key])}" for key in sorted(params)]


def _params_rows(params: dict[str, Any]) -> list[tuple[str, str]]:
    return [(key, _value(params[key])) for key in sorted(params)]


def _log_tail(text: str) -> str:
    lines = redact(text).rstrip().splitlines()
    dropped = max(0, len(lines) - MAX_LOG_LINES)
    tail = "\n".join(lines[dropped:])
    if len(tail) > MAX_LOG_CHARS:
        tail = tail[-MAX_LOG_CHARS:]
        tail = tail[tail.find("\n") + 1 :] if "\n" in tail else tail
        dropped = -1
    if dropped:
        note = "(earlier lines left out)" if dropped < 0 else f"({dropped} earlier lines left out)"
        tail = f"{note}\n{tail}"
    return tail


def _error_text(report: ChainReport) -> str:
    text = redact((report.error or "").strip())
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + "\n(error text cut)"
    return text


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{seconds:.1f}s"


def _before_tuning(report: ChainReport) -> bool:
    """A chain that failed before it tuned (the pull, detection, the configuration): no
    goal was read and no trial ran. Said by the report (the chain knows where it stopped);
    a report without a goal is not enough: a trial that gave up past its restarts makes
    one too."""
    return report.status is RunState.FAILED and report.before_tuning


def _facts(report: ChainReport) -> list[tuple[str, str]]:
    """(label, value) rows shared by both outcomes; values are redacted."""
    rows: list[tuple[str, str]] = [("Model", report.model_name)]
    extras = [
        f"{name}: {value}"
        for name, value in (
            ("family", report.family),
            ("image", report.image),
            ("executor", report.executor),
        )
        if value
    ]
    if extras:
        rows[0] = ("Model", f"{report.model_name} ({', '.join(extras)})")
    rows += [("Repository", report.repository), ("Commit", report.commit)]
    if not _before_tuning(report):
        rows += [
            (
                "Goal",
                f"{report.goal_metric}, {report.direction}, threshold {_num(report.threshold, 6)}",
            ),
            ("Trials", f"{len(report.trials)} of {report.max_trials} used"),
        ]
    rows.append(("Chain", report.chain_id))
    if report.elapsed_s:
        rows.append(("Elapsed", _duration(report.elapsed_s)))
    return [(label, redact(value)) for label, value in rows]


def _where(report: ChainReport) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if report.model_uri:
        rows.append(("Model URI", report.model_uri))
    if report.tracking_uri:
        rows.append(("Tracking URI", report.tracking_uri))
    if report.best_run_id:
        rows.append(("MLflow run", report.best_run_id))
    if report.parent_run_id:
        rows.append(("MLflow parent run", report.parent_run_id))
    if report.jenkins_build_url:
        rows.append(("Jenkins build", report.jenkins_build_url))
    return [(label, redact(value)) for label, value in rows]


def _registry_rows(report: ChainReport) -> list[tuple[str, str]]:
    if report.registry_version is None:
        if report.same_as:
            return [
                ("Registry", f"not registered: {report.same_as} already is this model"),
                ("Promotion", redact(report.promotion_reason)),
            ]
        return [("Registry", "not registered")]
    champion = "yes" if report.became_champion else "no"
    rows = [
        ("Registry version", f"{report.registry_version}"),
        ("Champion", champion),
    ]
    if report.promotion_reason:
        rows.append(("Promotion", report.promotion_reason))
    return [(label, redact(value)) for label, value in rows]


def _verdict_rows(report: ChainReport) -> list[tuple[str, str]]:
    """The goal's verdict and the three figures behind it, each with its uncertainty."""
    rows = [
        (
            "Verdict",
            f"{report.goal_metric} {_op(report)} {_num(report.threshold, 6)}: "
            f"{report.verdict_text}",
        ),
        ("Search", report.search_figure()),
        ("Confirmation", report.confirmation_figure()),
        ("Held-out test", report.heldout_figure()),
    ]
    if report.warm_start:
        rows.append(("Warm start", report.warm_start))
    return [(label, redact(value)) for label, value in rows]


def _op(report: ChainReport) -> str:
    return "<=" if _minimize(report) else ">="


HOW_TO_READ = (
    "How to read these figures: the search keeps the best of many noisy scores, so its "
    "figure is optimistic (the +- is the spread of its folds). The goal counts as reached "
    "only when the best trial, cross-validated again on fold assignments no trial was "
    "scored on, has a one-sided confidence bound (corrected repeated cross-validation t) "
    "at or beyond the threshold. The held-out test is scored once, on examples tuning "
    "never saw; its interval is the exact 95% binomial interval."
)


def _promotion_lines(report: ChainReport) -> list[str]:
    """The held-out tests behind the promotion decision, their p-values, what they mean."""
    test = report.promotion_test
    if test is None:
        return []
    level = f"alpha {test.alpha:g}"
    lines = [
        f"Against chance: {describe_chance(test)}.",
        f"  What it means: a model no better than always answering the most common label "
        f"({test.majority_rate:.2f} of these examples) would get {test.correct} or more of "
        f"{test.n} right with probability p. "
        + (
            f"p is at or below {level}: the model is better than chance."
            if test.chance_p <= test.alpha
            else f"p is above {level}: these examples do not show it beats chance."
        ),
    ]
    if test.champion_version is not None and test.paired_p is not None:
        margin = f" by more than {test.margin:g}" if test.margin else ""
        lines += [
            f"Against the champion: {describe_paired(test)}.",
            f"  What it means: McNemar's test looks only at the examples exactly one of the "
            f"two models got right. If this model were not better than champion "
            f"v{test.champion_version}{margin}, it would win {test.wins} or more of those "
            f"{(test.wins or 0) + (test.losses or 0)} with probability p. "
            + (
                f"p is at or below {level}: it is significantly better."
                if test.paired_p <= test.alpha
                else f"p is above {level}: the difference may be luck; the champion stays."
            ),
        ]
    return [redact(line) for line in lines]


def _format_rows(rows: Sequence[tuple[str, str]]) -> list[str]:
    width = max((len(label) for label, _ in rows), default=0)
    return [f"{label + ':':<{width + 1}}  {value}" for label, value in rows]


_TABLE_HEAD = ("trial", "state", "value", "fold sd", "test", "duration")


def _trial_cells(report: ChainReport, trial: TrialSummary) -> tuple[str, ...]:
    mark = "  <- best" if trial.number == report.best_trial else ""
    estimate = trial.estimate()
    spread = estimate.spread if estimate is not None else None
    return (
        trial_label(trial.number),
        trial.state,
        _num(trial.value),
        f"{_num(spread, 2)} ({estimate.n})" if spread is not None and estimate else "",
        _num(trial.test_value) if trial.test_value is not None else "",
        _duration(trial.duration_s) + mark,
    )


def _trials(report: ChainReport) -> tuple[list[TrialSummary], int]:
    trials = sorted(report.trials, key=lambda t: t.number)
    cut = max(0, len(trials) - MAX_TABLE_TRIALS)
    return trials[cut:], cut


def _trials_table(report: ChainReport) -> list[str]:
    trials, cut = _trials(report)
    if not trials:
        return ["(no trials ran)"]
    head = (*_TABLE_HEAD[:2], report.goal_metric, *_TABLE_HEAD[3:])
    rows = [head] + [_trial_cells(report, t) for t in trials]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if cut:
        lines.insert(0, f"({cut} earlier trials left out)")
    return lines


def _best_sentence(report: ChainReport) -> str:
    if report.best_value is None:
        return "No trial completed, so there is no best value."
    by = f" by trial {trial_label(report.best_trial)}" if report.best_trial is not None else ""
    test = (
        f" (held-out test: {_num(report.best_test_value)})"
        if report.best_test_value is not None
        else ""
    )
    return f"Best {report.goal_metric} reached: {_num(report.best_value)}{by}{test}."


def _what_failed(report: ChainReport) -> str:
    if report.status is RunState.GOAL_NOT_REACHED and report.verdict == "search_only":
        return (
            f"The goal ({report.goal_metric} {_op(report)} {_num(report.threshold, 6)}) was "
            "reached on the search's validation only, not confirmed "
            f"{report.confirmation.where if report.confirmation else 'on fresh folds'}: the "
            "best score may be the luck of many noisy scores, so nothing was promoted."
        )
    if report.status is RunState.GOAL_NOT_REACHED:
        goal = f"{report.goal_metric} {'<=' if _minimize(report) else '>='} " + _num(
            report.threshold, 6
        )
        return (
            f"The tuning budget ran out below the goal ({goal}) after "
            f"{len(report.trials)} of {report.max_trials} trials."
        )
    if report.status is RunState.RUNNING:
        return "The chain stopped before it finished: its report still says running."
    if _before_tuning(report):
        return (
            "The chain stopped before tuning (the pull, detection or the configuration): "
            "nothing was trained, registered or promoted. The error below says why and what "
            "to do."
        )
    return "The chain failed."


def _reached_sentence(report: ChainReport) -> str:
    """The success email's first line: the confirmed figure when there is one."""
    confirmation = report.confirmation
    if confirmation is not None and confirmation.bound is not None:
        side = "upper" if _minimize(report) else "lower"
        return (
            f"Goal reached and confirmed: {_bounded_metric(report)} {side} bound "
            f"{_comparison(report, confirmation.bound)} {confirmation.where}."
        )
    value = report.best_value
    if value is None:
        return "Goal reached."
    return f"Goal reached: {report.goal_metric} {_comparison(report, value)}."


def _promotion_sentence(report: ChainReport) -> str:
    if report.became_champion and report.registry_version is not None:
        return (
            f"Version {report.registry_version} became champion before the failure: "
            "check the registry."
        )
    if report.registry_version is not None:
        return (
            f"Nothing was promoted: version {report.registry_version} was registered "
            "but the champion alias was not moved."
        )
    return "Nothing was promoted: the champion alias was not moved."


def _why(report: ChainReport) -> str:
    """Why the chain ran, when whoever started it said (a drift alert, a person)."""
    return f"Why this run: {redact(report.reason)}" if report.reason else ""


def _plain(report: ChainReport) -> str:
    lines: list[str] = [_why(report), ""] if report.reason else []
    if report.status is RunState.SUCCEEDED:
        lines.append(_reached_sentence(report))
        lines.append(_best_sentence(report))
        lines.append("")
        lines += _format_rows(_verdict_rows(report))
        lines += ["", HOW_TO_READ, ""]
        lines += _format_rows(_facts(report))
        lines += ["", "Best hyperparameters:"]
        lines += ["  " + line for line in _params_lines(report.used_params)]
        lines.append("")
        lines += _format_rows(_registry_rows(report))
        promotion = _promotion_lines(report)
        if promotion:
            lines += ["", "Promotion tests:"] + ["  " + line for line in promotion]
    else:
        lines.append(_what_failed(report))
        if report.best_value is not None:
            lines += ["", *_format_rows(_verdict_rows(report)), "", HOW_TO_READ]
        error = _error_text(report)
        if error:
            lines += ["", "Error:"] + ["  " + line for line in error.splitlines()]
        if not _before_tuning(report):
            lines += ["", _best_sentence(report)]
            if report.best_value is not None:
                lines.append("Its hyperparameters:")
                lines += ["  " + line for line in _params_lines(report.used_params)]
            lines += ["", _promotion_sentence(report)]
        lines += ["", *_format_rows(_facts(report))]
    where = _where(report)
    if where:
        lines += ["", "Where:"]
        lines += ["  " + line for line in _format_rows(where)]
    if not _before_tuning(report):
        lines += ["", "Trials:"]
        lines += ["  " + line for line in _trials_table(report)]
    if report.status is not RunState.SUCCEEDED and not _before_tuning(report):
        tail = _log_tail(report.log_tail)
        lines += ["", "Last log lines:"]
        lines += ["  " + line for line in tail.splitlines()] if tail else ["  (no log lines)"]
    lines += ["", f"-- trainchain, chain {redact(report.chain_id)}"]
    return "\n".join(lines) + "\n"


def _h(text: str) -> str:
    return html.escape(text, quote=True)


def _html_rows(rows: Sequence[tuple[str, str]]) -> str:
    cells = "".join(
        f'<tr><th style="text-align:left;padding-right:1em">{_h(label)}</th>'
        f"<td>{_h(value)}</td></tr>"
        for label, value in rows
    )
    return f"<table>{cells}</table>"


def _html(report: ChainReport, plot: bool = False) -> str:  # noqa: PLR0915 - one page, top down
    ok = report.status is RunState.SUCCEEDED
    colour = "#1a7f37" if ok else "#cf222e"
    parts = [
        '<!DOCTYPE html><html><body style="font-family:sans-serif">',
        f'<h2 style="color:{colour}">{_h(subject(report).removeprefix("[trainchain] "))}</h2>',
    ]
    if report.reason:
        parts.append(f"<p><strong>{_h(_why(report))}</strong></p>")
    if ok:
        parts.append(f"<p>{_h(_best_sentence(report))}</p>")
        parts.append(_html_rows(_verdict_rows(report)))
        parts.append(f"<p>{_h(HOW_TO_READ)}</p>")
        parts.append(_html_rows(_facts(report)))
        parts.append("<h3>Best hyperparameters</h3>")
        parts.append(_html_rows(_params_rows(report.used_params)))
        parts.append("<h3>Registry</h3>")
        parts.append(_html_rows(_registry_rows(report)))
        promotion = _promotion_lines(report)
        if promotion:
            parts.append("<h3>Promotion tests</h3>")
            parts.append("".join(f"<p>{_h(line)}</p>" for line in promotion))
    else:
        parts.append(f"<p>{_h(_what_failed(report))}</p>")
        if report.best_value is not None:
            parts.append(_html_rows(_verdict_rows(report)))
            parts.append(f"<p>{_h(HOW_TO_READ)}</p>")
        error = _error_text(report)
        if error:
            parts.append(f"<pre>{_h(error)}</pre>")
        if not _before_tuning(report):
            parts.append(f"<p>{_h(_best_sentence(report))}</p>")
            if report.best_value is not None and report.best_params:
                parts.append(_html_rows(_params_rows(report.used_params)))
            parts.append(f"<p><strong>{_h(_promotion_sentence(report))}</strong></p>")
        parts.append(_html_rows(_facts(report)))
    where = _where(report)
    if where:
        parts.append("<h3>Where</h3>")
        parts.append(_html_rows(where))
    parts.append("<h3>Trials</h3>")
    if plot:
        parts.append(
            f'<p><img src="cid:{PLOT_CID}" alt="{_h(report.goal_metric)} per trial" '
            'style="max-width:100%"></p>'
        )
    trials, cut = _trials(report)
    if cut:
        parts.append(f"<p>({cut} earlier trials left out)</p>")
    head = (*_TABLE_HEAD[:2], report.goal_metric, *_TABLE_HEAD[3:])
    header = "".join(f'<th style="text-align:left;padding-right:1em">{_h(c)}</th>' for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{_h(c)}</td>" for c in _trial_cells(report, t)) + "</tr>"
        for t in trials
    )
    parts.append(f"<table><tr>{header}</tr>{body}</table>" if trials else "<p>(no trials ran)</p>")
    if not ok and not _before_tuning(report):
        parts.append("<h3>Last log lines</h3>")
        parts.append(f"<pre>{_h(_log_tail(report.log_tail) or '(no log lines)')}</pre>")
    parts.append(f'<p style="color:#666">trainchain, chain {_h(redact(report.chain_id))}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _header_value(text: str) -> str:
    """Header values are one line: fold whitespace (a newline would be a header injection)."""
    return " ".join(text.split())


def render(
    report: ChainReport,
    *,
    sender: str,
    recipients: Sequence[str],
    plot_png: bytes | None,
) -> EmailMessage:
    """The email telling a person how the chain ended.

    ``status == "succeeded"`` gives a success email (what was reached, where the
    model is, whether it became champion); any other status gives a failure email
    (what failed, the best value, that nothing was promoted, the last log lines).
    ``Date`` and ``Message-ID`` are left to the mailer, so this stays a function of
    its inputs.
    """
    message = EmailMessage(policy=SMTP)
    message["Subject"] = _header_value(subject(report))
    message["From"] = _header_value(sender)
    if recipients:
        message["To"] = ", ".join(_header_value(r) for r in recipients)
    message["X-Trainchain-Chain"] = _header_value(redact(report.chain_id))
    message["X-Trainchain-Status"] = _header_value(report.status)
    plain, page = _plain(report), _html(report, plot=plot_png is not None)
    message.set_content(plain, subtype="plain", charset="utf-8")
    message.add_alternative(page, subtype="html", charset="utf-8")
    if plot_png is not None:  # inline in the HTML (multipart/related), named for saving
        html_part = message.get_body(preferencelist=("html",))  # added just above
        if isinstance(html_part, EmailMessage):
            html_part.add_related(
                plot_png,
                maintype="image",
                subtype="png",
                cid=f"<{PLOT_CID}>",
                filename=PLOT_FILENAME,
                disposition="inline",
            )
    # MIME boundaries from the content, not random: the same report gives the same bytes.
    digest = hashlib.sha256(plain.encode() + page.encode() + (plot_png or b"")).hexdigest()[:32]
    for number, part in enumerate(p for p in message.walk() if p.is_multipart()):
        part.set_boundary(f"==trainchain-{digest}-{number}==")
    return message
