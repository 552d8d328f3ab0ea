"""The SMTP adapter against a real SMTP server on loopback (aiosmtpd), and the outbox."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import functools
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.sample_reports import not_reached, report
from tests.smtp_server import Inbox, LoopbackController, serve
from trainchain.adapters.mailer import Delivery, deliver, write_outbox
from trainchain.core.errors import NotifyError
from trainchain.core.notify import render
from trainchain.core.plots import metric_plot
from trainchain.core.report import ChainReport
from trainchain.core.settings import SmtpSettings, TlsMode

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
USER = "trainchain-bot"
PASSWORD = "Sup3r-Secret-pw!"


# --- a real SMTP server on loopback ------------------------------------------------------


@dataclass
class Authenticator:
    """aiosmtpd authenticator: one user, one password; records which sessions tried."""

    sessions: set[int] = field(default_factory=set)

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        self.sessions.add(id(session))
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == USER.encode()
            and auth_data.password == PASSWORD.encode()
        )
        # handled=False: aiosmtpd then answers 235 or 535 itself.
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def server(inbox: Inbox) -> Iterator[LoopbackController]:
    yield from serve(inbox)


@pytest.fixture
def authenticator() -> Authenticator:
    return Authenticator()


@pytest.fixture
def auth_server(inbox: Inbox, authenticator: Authenticator) -> Iterator[LoopbackController]:
    # auth_require_tls=False: the test server speaks plain SMTP on loopback, and AUTH
    # would otherwise be refused before STARTTLS. auth_required stays False, so
    # aiosmtpd does not warn about "AUTH without TLS".
    yield from serve(inbox, authenticator=authenticator, auth_require_tls=False)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connections are refused, and
    no other process can take the port while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def smtp_settings(port: int, **changes: Any) -> SmtpSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "sender": "trainchain@example.org",
        "recipients": ("ml-team@example.org",),
        "timeout": 10.0,
    }
    values.update(changes)
    return SmtpSettings(**values)


# --- reports ----------------------------------------------------------------------------


def success_report() -> ChainReport:
    return report()


def failure_report() -> ChainReport:
    return not_reached(
        log_tail="\n".join(f"epoch {i}: val_accuracy=0.{60 + i}" for i in range(12))
        + "\nbudget exhausted: 4 of 4 trials",
    )


@functools.cache
def success_plot() -> bytes:
    return metric_plot(success_report())


def success_message(sender: str = "trainchain@example.org") -> EmailMessage:
    return render(
        success_report(), sender=sender, recipients=["ml-team@example.org"], plot_png=success_plot()
    )


def plain_body(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, str)
    return content


def outbox_files(outbox: Path) -> list[Path]:
    return sorted(outbox.glob("*.eml"))


# --- end to end through the server -------------------------------------------------------


def test_success_email_arrives_with_subject_facts_and_a_real_png(
    server: LoopbackController, inbox: Inbox, tmp_path: Path
) -> None:
    """A success email sent through SMTP arrives with its subject, facts and the PNG plot."""
    delivery = deliver(success_message(), smtp_settings(server.port), tmp_path / "outbox")

    assert delivery.method == "smtp"
    assert delivery.recipients == ("ml-team@example.org",)
    [received] = inbox.messages()
    assert received["Subject"] == (
        "[trainchain] eeg-motor-imagery: goal reached (val_accuracy 0.84 >= 0.8), v3 is champion"
    )
    assert received["X-Trainchain-Status"] == "succeeded"
    assert received["Date"] and received["Message-ID"]
    body = plain_body(received)
    assert "Registry version:  3" in body
    assert "Champion:          yes" in body
    assert "C = 3.5" in body and "kernel = rbf" in body
    assert "9f1c2e3d4b5a69788796a5b4c3d2e1f0a9b8c7d6" in body
    [attachment] = [p for p in received.walk() if p.get_content_type() == "image/png"]
    assert attachment.get_filename() == "metric-per-trial.png"
    assert attachment.get_content_type() == "image/png"
    png = attachment.get_content()
    assert isinstance(png, bytes)
    assert png.startswith(PNG_MAGIC)


def test_failure_email_arrives_with_the_last_log_lines(
    server: LoopbackController, inbox: Inbox, tmp_path: Path
) -> None:
    """A goal-not-reached email sent through SMTP carries the last log lines and no promotion."""
    report = failure_report()
    msg = render(
        report, sender="trainchain@example.org", recipients=["a@example.org"], plot_png=None
    )
    deliver(msg, smtp_settings(server.port), tmp_path / "outbox")

    [received] = inbox.messages()
    assert received["Subject"] == (
        "[trainchain] eeg-motor-imagery: goal NOT reached "
        "(best val_accuracy 0.84 < 0.999 after 4 trials)"
    )
    body = plain_body(received)
    assert "epoch 11: val_accuracy=0.71" in body
    assert "budget exhausted: 4 of 4 trials" in body
    assert "Nothing was promoted" in body


def test_smtp_recipients_come_from_settings_before_the_to_header(
    server: LoopbackController, inbox: Inbox, tmp_path: Path
) -> None:
    """SmtpSettings.recipients decide the envelope; the To header is the fallback."""
    settings = smtp_settings(server.port, recipients=("ops@example.org", "lead@example.org"))
    deliver(success_message(), settings, tmp_path / "outbox")
    deliver(success_message(), smtp_settings(server.port, recipients=()), tmp_path / "outbox")

    first, second = inbox.envelopes
    assert first.rcpt_tos == ["ops@example.org", "lead@example.org"]
    assert first.mail_from == "trainchain@example.org"
    assert second.rcpt_tos == ["ml-team@example.org"]


def test_a_sent_email_also_keeps_a_copy_in_the_outbox(
    server: LoopbackController, tmp_path: Path
) -> None:
    """Sending through SMTP still writes the .eml copy into the outbox."""
    delivery = deliver(success_message(), smtp_settings(server.port), tmp_path / "outbox")

    assert delivery.path is not None
    assert outbox_files(tmp_path / "outbox") == [delivery.path]


def test_smtp_without_any_recipient_is_a_notifyerror(
    server: LoopbackController, inbox: Inbox, tmp_path: Path
) -> None:
    """No recipient in the settings nor in To: NotifyError that says how to fix it."""
    report = success_report()
    msg = render(report, sender="trainchain@example.org", recipients=[], plot_png=None)
    with pytest.raises(NotifyError) as info:
        deliver(msg, smtp_settings(server.port, recipients=()), tmp_path / "outbox")

    assert "TRAINCHAIN_SMTP_TO" in str(info.value)
    assert inbox.envelopes == []
    assert len(outbox_files(tmp_path / "outbox")) == 1


# --- the outbox -------------------------------------------------------------------------


def test_without_smtp_the_email_is_a_parseable_eml_in_the_outbox(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No SMTP settings: an .eml is written (outbox created), logged, returned, and parses back."""
    caplog.set_level(logging.INFO, logger="trainchain")
    outbox = tmp_path / "home" / "outbox"
    delivery = deliver(success_message(), None, outbox)

    assert delivery == Delivery(
        method="outbox", path=delivery.path, recipients=("ml-team@example.org",)
    )
    assert delivery.path is not None
    assert delivery.path.parent == outbox
    assert delivery.path.name.endswith("-eeg-motor-imagery-20250101T120000Z-1a2b3c-succeeded.eml")
    assert str(delivery.path) in caplog.text
    parsed = email.message_from_bytes(delivery.path.read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["Subject"].startswith("[trainchain] eeg-motor-imagery: goal reached")
    assert "Champion:          yes" in plain_body(parsed)
    [attachment] = [p for p in parsed.walk() if p.get_content_type() == "image/png"]
    assert attachment.get_content().startswith(PNG_MAGIC)
    assert [p.name for p in outbox.iterdir()] == [delivery.path.name]  # no staging files left


def test_two_emails_in_the_same_second_get_two_files(tmp_path: Path) -> None:
    """The same timestamp, chain and status never overwrite: the second file gets a suffix."""
    outbox = tmp_path / "outbox"
    now = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    first = write_outbox(success_message(), outbox, now=now)
    second = write_outbox(success_message(sender="other@example.org"), outbox, now=now)

    assert first != second
    assert first.name == "20250101T120000Z-eeg-motor-imagery-20250101T120000Z-1a2b3c-succeeded.eml"
    assert second.name == (
        "20250101T120000Z-eeg-motor-imagery-20250101T120000Z-1a2b3c-succeeded-2.eml"
    )
    assert b"From: trainchain@example.org" in first.read_bytes()
    assert b"From: other@example.org" in second.read_bytes()


def test_concurrent_writers_in_the_same_second_never_overwrite(tmp_path: Path) -> None:
    """Eight threads writing the same chain's email at the same instant leave eight files."""
    now = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    messages = [success_message(sender=f"writer{i}@example.org") for i in range(8)]
    paths: list[Path] = []
    lock = threading.Lock()

    def write(msg: EmailMessage) -> None:
        path = write_outbox(msg, tmp_path, now=now)
        with lock:
            paths.append(path)

    threads = [threading.Thread(target=write, args=(m,)) for m in messages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(set(paths)) == 8
    assert outbox_files(tmp_path) == sorted(paths)
    senders = {email.message_from_bytes(p.read_bytes())["From"] for p in paths}
    assert senders == {f"writer{i}@example.org" for i in range(8)}
    assert [p for p in tmp_path.iterdir() if p.suffix != ".eml"] == []  # no staging left


def test_without_hard_links_the_outbox_still_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system without hard links the fallback also keeps both same-second emails."""

    def no_links(src: object, dst: object) -> None:
        # Stands in for a network or FUSE mount that refuses link(2); cannot be made here.
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("trainchain.adapters.mailer.os.link", no_links)
    now = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    first = write_outbox(success_message(), tmp_path, now=now)
    second = write_outbox(success_message(sender="other@example.org"), tmp_path, now=now)

    assert first != second
    assert b"From: other@example.org" in second.read_bytes()
    assert b"From: trainchain@example.org" in first.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name])


def test_deliver_twice_without_smtp_keeps_both_emails(tmp_path: Path) -> None:
    """Two deliveries of the same chain's email back to back leave two .eml files."""
    a = deliver(success_message(), None, tmp_path)
    b = deliver(success_message(), None, tmp_path)

    assert a.path != b.path
    assert outbox_files(tmp_path) == sorted(p for p in (a.path, b.path) if p is not None)


def test_an_outbox_that_cannot_be_written_is_a_notifyerror(tmp_path: Path) -> None:
    """Outbox mode with an unusable outbox path: NotifyError naming the path."""
    blocker = tmp_path / "outbox"
    blocker.write_text("a file where the outbox folder should be")
    with pytest.raises(NotifyError) as info:
        deliver(success_message(), None, blocker)

    assert str(blocker) in info.value.message


def test_smtp_still_sends_when_the_outbox_cannot_be_written(
    server: LoopbackController, inbox: Inbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The copy is a safety net: an unwritable outbox is a warning, the email still goes out."""
    blocker = tmp_path / "outbox"
    blocker.write_text("a file where the outbox folder should be")
    delivery = deliver(success_message(), smtp_settings(server.port), blocker)

    assert delivery.method == "smtp"
    assert delivery.path is None
    assert len(inbox.envelopes) == 1
    assert "sending anyway" in caplog.text


# --- authentication ---------------------------------------------------------------------


def test_smtp_login_with_the_right_password_delivers(
    auth_server: LoopbackController, inbox: Inbox, tmp_path: Path
) -> None:
    """With user and the right password the server accepts the login and the email."""
    settings = smtp_settings(auth_server.port, user=USER, password=PASSWORD)
    delivery = deliver(success_message(), settings, tmp_path / "outbox")

    assert delivery.method == "smtp"
    assert len(inbox.envelopes) == 1


def test_smtp_login_with_a_wrong_password_is_a_clear_notifyerror_without_the_password(
    auth_server: LoopbackController,
    inbox: Inbox,
    authenticator: Authenticator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rejected login: NotifyError names host:port and the error, not the password; no retry."""
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-" + PASSWORD
    settings = smtp_settings(auth_server.port, user=USER, password=wrong)
    sleeps: list[float] = []
    with pytest.raises(NotifyError) as info:
        deliver(success_message(), settings, tmp_path / "outbox", sleep=sleeps.append)

    text = str(info.value)  # message and hint
    assert f"127.0.0.1:{auth_server.port}" in text
    assert "SMTPAuthenticationError" in text and "535" in text
    assert "TRAINCHAIN_SMTP_PASSWORD" in text
    [kept] = outbox_files(tmp_path / "outbox")
    assert f"kept at {kept}" in text
    for secret in (wrong, PASSWORD):
        assert secret not in text
        assert secret not in repr(info.value)
        assert secret not in caplog.text
        assert secret.encode() not in kept.read_bytes()
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert inbox.envelopes == []
    assert len(authenticator.sessions) == 1  # one connection: auth errors are not retried
    assert sleeps == []


def test_smtp_settings_repr_hides_the_password() -> None:
    """SmtpSettings in a log line or traceback does not show the password."""
    assert PASSWORD not in repr(smtp_settings(25, user=USER, password=PASSWORD))


# --- connection errors ------------------------------------------------------------------


def test_a_closed_port_is_retried_then_a_notifyerror_naming_host_port_and_the_copy(
    closed_port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Connection refused: 3 tries with backoff, then NotifyError naming host:port; copy kept."""
    caplog.set_level(logging.WARNING, logger="trainchain")
    sleeps: list[float] = []
    settings = smtp_settings(closed_port, user=USER, password=PASSWORD)
    with pytest.raises(NotifyError) as info:
        deliver(success_message(), settings, tmp_path / "outbox", sleep=sleeps.append)

    message = info.value.message
    assert f"127.0.0.1:{closed_port}" in message
    assert "ConnectionRefusedError" in message
    assert "after 3 tries" in message
    [kept] = outbox_files(tmp_path / "outbox")
    assert f"the message was kept at {kept}" in message
    assert sleeps == [0.5, 1.5]
    assert caplog.text.count("trying again") == 2
    assert PASSWORD not in str(info.value) and PASSWORD not in caplog.text
    assert email.message_from_bytes(kept.read_bytes())["X-Trainchain-Status"] == "succeeded"


def test_starttls_against_a_server_without_it_is_a_notifyerror_with_a_tls_hint(
    server: LoopbackController, inbox: Inbox, tmp_path: Path
) -> None:
    """TlsMode.STARTTLS is honoured: a server that offers no STARTTLS is refused, not used."""
    settings = smtp_settings(server.port, tls=TlsMode.STARTTLS)
    with pytest.raises(NotifyError) as info:
        deliver(success_message(), settings, tmp_path / "outbox", sleep=lambda _: None)

    assert "STARTTLS" in str(info.value)
    assert "TRAINCHAIN_SMTP_TLS" in str(info.value)
    assert inbox.envelopes == []


# --- TLS with a real certificate --------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA and a server certificate for 127.0.0.1."""
    x509 = pytest.importorskip("cryptography.x509", reason="cryptography makes the test CA")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("trainchain test CA"))
        .issuer_name(name("trainchain test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("pki")
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (folder / "server.pem").write_bytes(cert.public_bytes(pem))
    (folder / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")


@pytest.fixture
def starttls_server(inbox: Inbox, pki: Pki) -> Iterator[LoopbackController]:
    yield from serve(inbox, tls_context=pki.server_context(), require_starttls=True)


@pytest.fixture
def ssl_server(inbox: Inbox, pki: Pki) -> Iterator[LoopbackController]:
    yield from serve(inbox, ssl_context=pki.server_context())


@pytest.fixture
def trusted_test_ca(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """ssl.create_default_context() reads SSL_CERT_FILE: make the test CA the trusted store."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))


@pytest.mark.usefixtures("trusted_test_ca")
@pytest.mark.parametrize("mode", [TlsMode.STARTTLS, TlsMode.SSL])
def test_tls_modes_deliver_to_a_server_whose_certificate_is_trusted(
    mode: TlsMode, request: pytest.FixtureRequest, inbox: Inbox, tmp_path: Path
) -> None:
    """starttls and ssl both deliver, verifying the server against the default CA store."""
    controller = request.getfixturevalue(
        "starttls_server" if mode is TlsMode.STARTTLS else "ssl_server"
    )
    delivery = deliver(success_message(), smtp_settings(controller.port, tls=mode), tmp_path)

    assert delivery.method == "smtp"
    assert len(inbox.envelopes) == 1


def test_ssl_to_a_server_with_an_untrusted_certificate_is_refused(
    ssl_server: LoopbackController, inbox: Inbox, tmp_path: Path
) -> None:
    """The certificate is verified: an unknown CA gives a NotifyError, not a delivery."""
    sleeps: list[float] = []
    settings = smtp_settings(ssl_server.port, tls=TlsMode.SSL)
    with pytest.raises(NotifyError) as info:
        deliver(success_message(), settings, tmp_path, sleep=sleeps.append)

    assert "SSLCertVerificationError" in info.value.message
    assert "TRAINCHAIN_SMTP_TLS" in str(info.value)
    assert inbox.envelopes == []
    assert sleeps == []  # a TLS refusal is not a connection error: no retry
