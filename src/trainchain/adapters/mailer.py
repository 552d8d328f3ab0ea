"""The SMTP adapter: send an email, and always keep a copy in the outbox.

Without SMTP settings the message is written to the outbox as an ``.eml`` file
(a person or a later run can send it). With SMTP settings it is sent with
:mod:`smtplib` honouring :class:`~trainchain.core.settings.TlsMode`, and a copy is
still kept in the outbox first, so nothing is lost when the server refuses it.

The SMTP password goes to ``SMTP.login`` and nowhere else: never into a log
line, an error message or the outbox copy.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import secrets
import smtplib
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid
from pathlib import Path
from typing import Literal

from trainchain.contract.task import atomic_write_bytes
from trainchain.core.errors import NotifyError
from trainchain.core.settings import SmtpSettings, TlsMode

__all__ = ["RETRY_DELAYS_S", "Delivery", "deliver", "write_outbox"]

log = logging.getLogger(__name__)

# Pauses between tries of a connection that failed: 3 tries in all.
RETRY_DELAYS_S: tuple[float, ...] = (0.5, 1.5)
_MAX_NAME_TRIES = 1000
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class Delivery:
    """What happened to one email: sent by SMTP or left in the outbox, and its outbox copy."""

    method: Literal["smtp", "outbox"]
    path: Path | None
    recipients: tuple[str, ...]


def _slug(text: str, limit: int = 60) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return slug[:limit].rstrip("-._") or "message"


def _recipients_of(message: EmailMessage) -> tuple[str, ...]:
    fields = [str(v) for v in message.get_all("To", [])]
    fields += [str(v) for v in message.get_all("Cc", [])]
    return tuple(addr for _, addr in getaddresses(fields) if addr)


def _file_stem(message: EmailMessage, now: datetime) -> str:
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    chain = message.get("X-Trainchain-Chain") or message.get("Subject") or "message"
    status = message.get("X-Trainchain-Status") or "message"
    return f"{stamp}-{_slug(str(chain))}-{_slug(str(status), 20)}"


def write_outbox(message: EmailMessage, outbox: Path, *, now: datetime | None = None) -> Path:
    """Write ``message`` as ``<UTC timestamp>-<chain>-<status>.eml`` in ``outbox``; return it.

    The file appears complete or not at all (written to a temporary name, then
    hard-linked into place), and an existing file is never overwritten: a second
    email in the same second gets ``-2``, ``-3``, ... appended.
    """
    outbox = Path(outbox)
    stem = _file_stem(message, now or datetime.now(UTC))
    data = message.as_bytes()
    staging = outbox / f".{stem}.{secrets.token_hex(8)}.staging"
    try:
        atomic_write_bytes(staging, data)
        try:
            for n in range(1, _MAX_NAME_TRIES + 1):
                path = outbox / (f"{stem}.eml" if n == 1 else f"{stem}-{n}.eml")
                if _claim(staging, path):
                    log.info("email kept in the outbox: %s", path)
                    return path
        finally:
            staging.unlink(missing_ok=True)
    except OSError as exc:
        raise NotifyError(
            f"could not write the email to the outbox {outbox}: {type(exc).__name__}: {exc}",
            hint="make the outbox folder writable, or set TRAINCHAIN_HOME to a writable folder",
        ) from exc
    raise NotifyError(
        f"could not find a free file name for {stem}.eml in {outbox} after {_MAX_NAME_TRIES} tries",
        hint="move old emails out of the outbox",
    )


def _claim(staging: Path, path: Path) -> bool:
    """Give the complete ``staging`` file the name ``path`` unless that name is taken."""
    try:
        os.link(staging, path)  # atomic, and fails instead of overwriting
    except FileExistsError:
        return False
    except OSError:
        # No hard links on this file system (some network or FUSE mounts): reserve the
        # name exclusively, then move the complete file onto the reservation.
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return False
        os.close(fd)
        os.replace(staging, path)
    return True


def _describe(exc: BaseException, password: str | None) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        raw = exc.smtp_error
        detail = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        text = f"{type(exc).__name__}: {exc.smtp_code} {detail}"
    elif isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = ", ".join(sorted(exc.recipients))
        text = f"{type(exc).__name__}: the server refused every recipient ({refused})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    if password:
        text = text.replace(password, "***")  # in case a server echoes it back
    return " ".join(text.split())


def _is_connection_error(exc: BaseException) -> bool:
    """Worth another try: the server could not be reached or hung up, not a refusal."""
    if isinstance(exc, smtplib.SMTPConnectError | smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, smtplib.SMTPException | ssl.SSLError):
        return False  # a refusal (auth, sender, recipients, data) or a TLS problem
    return isinstance(exc, OSError)  # refused, reset, timed out, name not resolved


def _hint(exc: BaseException, tls: TlsMode, path: Path | None) -> str:
    resend = f"; the email can be sent again from {path}" if path else ""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return "check TRAINCHAIN_SMTP_USER and TRAINCHAIN_SMTP_PASSWORD" + resend
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return (
            "the server does not offer what was asked (AUTH or STARTTLS): check "
            "TRAINCHAIN_SMTP_TLS and TRAINCHAIN_SMTP_USER" + resend
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS failed with TRAINCHAIN_SMTP_TLS={tls.value}: use ssl for port 465, "
            "starttls for 587, none for a plain relay" + resend
        )
    if isinstance(exc, smtplib.SMTPRecipientsRefused | smtplib.SMTPSenderRefused):
        return "check TRAINCHAIN_SMTP_FROM and TRAINCHAIN_SMTP_TO" + resend
    if _is_connection_error(exc):
        return (
            "check TRAINCHAIN_SMTP_HOST and TRAINCHAIN_SMTP_PORT and that the server is "
            "reachable from this machine" + resend
        )
    return "the server refused the email" + resend


def _connect(smtp: SmtpSettings) -> smtplib.SMTP:
    if smtp.tls is TlsMode.SSL:
        return smtplib.SMTP_SSL(
            smtp.host, smtp.port, timeout=smtp.timeout, context=ssl.create_default_context()
        )
    client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
    try:
        if smtp.tls is TlsMode.STARTTLS:
            client.starttls(context=ssl.create_default_context())
    except BaseException:
        client.close()
        raise
    return client


def _send_once(message: EmailMessage, smtp: SmtpSettings, recipients: Sequence[str]) -> None:
    with _connect(smtp) as client:
        if smtp.user:
            if smtp.tls is TlsMode.NONE and smtp.host not in _LOOPBACK:
                log.warning(
                    "logging in to %s:%d without TLS: the password crosses the network in clear;"
                    " set TRAINCHAIN_SMTP_TLS=starttls or ssl",
                    smtp.host,
                    smtp.port,
                )
            client.login(smtp.user, smtp.password or "")
        refused = client.send_message(message, from_addr=smtp.sender, to_addrs=list(recipients))
        if refused:
            log.warning("the server refused some recipients: %s", ", ".join(sorted(refused)))


def deliver(
    message: EmailMessage,
    smtp: SmtpSettings | None,
    outbox: Path,
    *,
    retry_delays: Sequence[float] = RETRY_DELAYS_S,
    sleep: Callable[[float], None] = time.sleep,
    recipients: Sequence[str] = (),
) -> Delivery:
    """Send ``message`` by SMTP when ``smtp`` is given; always keep a copy in ``outbox``.

    ``Date`` and ``Message-ID`` are added (to a copy) when the message has none.
    It goes to ``recipients`` when given (a person the message is for, whoever
    ``TRAINCHAIN_SMTP_TO`` names), else to ``smtp.recipients``, else to its ``To``.
    Connection errors are tried again after each of ``retry_delays`` (3 tries by
    default); refusals (authentication, sender, recipients) are not. Any failure
    raises :class:`NotifyError` naming ``host:port`` and the error, and where
    the copy was kept.
    """
    now = datetime.now(UTC)
    message = copy.deepcopy(message)
    if "Date" not in message:
        message["Date"] = format_datetime(now)
    if "Message-ID" not in message:
        message["Message-ID"] = make_msgid(domain="trainchain.local")

    if smtp is None:
        written = write_outbox(message, outbox, now=now)
        return Delivery(method="outbox", path=written, recipients=_recipients_of(message))

    path: Path | None
    try:
        path = write_outbox(message, outbox, now=now)
    except NotifyError as exc:
        # Sending still matters more than the copy; say why there is none.
        log.warning("%s; sending anyway", exc.message)
        path = None

    where = f"{smtp.host}:{smtp.port}"
    kept = f"the message was kept at {path}" if path else "no copy could be kept in the outbox"
    recipients = tuple(recipients) or smtp.recipients or _recipients_of(message)
    if not recipients:
        raise NotifyError(
            f"no recipients to send the email to through {where}; {kept}",
            hint="set TRAINCHAIN_SMTP_TO (comma-separated addresses)",
        )

    tries = len(retry_delays) + 1
    for attempt in range(1, tries + 1):
        failure: Exception | None = None
        try:
            _send_once(message, smtp, recipients)
        except Exception as exc:
            failure = exc
        if failure is None:
            log.info("email sent through %s to %s", where, ", ".join(recipients))
            return Delivery(method="smtp", path=path, recipients=tuple(recipients))
        described = _describe(failure, smtp.password)
        if _is_connection_error(failure) and attempt < tries:
            delay = retry_delays[attempt - 1]
            log.warning(
                "sending the email through %s failed (try %d of %d: %s); trying again in %.1fs",
                where,
                attempt,
                tries,
                described,
                delay,
            )
            sleep(delay)
            continue
        hint = _hint(failure, smtp.tls, path)
        # Raised outside the except block and without the cause: smtplib's frames hold
        # the password as a local, and tracebacks that show locals must not reach it.
        del failure
        after = f" after {attempt} tries" if attempt > 1 else ""
        raise NotifyError(
            f"could not send the email through {where}{after} ({described}); {kept}",
            hint=hint,
        )
    raise AssertionError("unreachable")  # pragma: no cover
