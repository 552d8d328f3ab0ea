"""Job 5: a chain's report as an email, sent by SMTP when configured, else kept in the outbox.

Used by the chain (its outcome), ``trainchain notify`` and the give-up of a trial
(:mod:`trainchain.chain.giveup`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from trainchain.adapters.mailer import Delivery, deliver
from trainchain.core.notify import render
from trainchain.core.report import ChainReport
from trainchain.core.settings import Settings

log = logging.getLogger(__name__)


def send_report(report: ChainReport, settings: Settings, to: Sequence[str] = ()) -> Delivery:
    """Job 5: the email, by SMTP when configured, else into the outbox; to ``to`` when
    given (the person who pushed), else to the configured recipients."""
    recipients = (
        tuple(to)
        or (settings.smtp.recipients if settings.smtp else ())
        or report.recipients
        or settings.default_recipients
        or ("trainchain@localhost",)
    )
    sender = settings.smtp.sender if settings.smtp else "trainchain@localhost"
    png: bytes | None
    try:
        from trainchain.core.plots import metric_plot

        png = metric_plot(report)
    except Exception as err:
        log.warning("could not draw the metric plot: %s", err)
        png = None
    message = render(report, sender=sender, recipients=recipients, plot_png=png)
    return deliver(message, settings.smtp, settings.outbox, recipients=to)
