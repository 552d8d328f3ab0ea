"""A real SMTP server on loopback for tests (aiosmtpd): it keeps what it receives."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Inbox:
    """aiosmtpd handler: keeps every envelope it accepts."""

    envelopes: list[Envelope] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        with self.lock:
            contents = [e.content for e in self.envelopes]
        parsed = []
        for content in contents:
            assert isinstance(content, bytes)
            msg = email.message_from_bytes(content, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            parsed.append(msg)
        return parsed


class LoopbackController(Controller):
    """Controller bound to 127.0.0.1 on a port the OS picks (no race for a "free" port).

    aiosmtpd's Controller connects to ``self.port`` once the server is up, so port 0
    needs the bound port written back before that; ``_create_server`` is the hook
    aiosmtpd documents for subclasses.
    """

    def _create_server(self) -> Any:
        creating = super()._create_server()

        async def create_and_learn_port() -> Any:
            server = await creating
            assert isinstance(server, asyncio.Server)
            self.port = server.sockets[0].getsockname()[1]
            return server

        return create_and_learn_port()


def serve(handler: Inbox, **kwargs: Any) -> Iterator[LoopbackController]:
    controller = LoopbackController(handler, hostname="127.0.0.1", port=0, **kwargs)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()
