"""A real SMTP server for the tests (aiosmtpd, on a thread of its own, on loopback) that keeps what
it receives, so a test can read the message chatgate sent and follow its link."""

import contextlib
import email
import email.policy
import re
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller

from tests.e2e import infra


class Mailbox:
    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        with self._lock:
            return [m for m in self.messages if m["To"] == address]

    def wait(self, address: str, count: int = 1, seconds: float = 20) -> list[EmailMessage]:
        """The messages to ``address`` once there are ``count`` of them (a bound on waiting)."""
        deadline = time.monotonic() + seconds
        while len(found := self.to(address)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return found


def token_of(url: str) -> str:
    """A link's secret (the console's links carry it in the fragment: ``/#/verify?token=...``)."""
    return parse_qs(urlsplit(url).fragment.partition("?")[2])["token"][0]


def smtp_env(box: Mailbox) -> dict[str, str]:
    """A chatgate server's settings to send its email to ``box``, with verification at sign-up."""
    return {
        "CHATGATE_EMAIL_VERIFICATION": "true",
        "CHATGATE_SMTP_HOST": "127.0.0.1",
        "CHATGATE_SMTP_PORT": str(box.port),
        "CHATGATE_SMTP_SECURITY": "none",
        "CHATGATE_SMTP_FROM": "chatgate <noreply@example.com>",
    }


def link(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    found = re.search(r"https?://\S+", body.get_content())
    assert found is not None, body.get_content()
    return found.group(0)


@contextlib.contextmanager
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(infra.free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()
