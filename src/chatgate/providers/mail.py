"""Sending email over SMTP (the standard library's client, on a worker thread): verification and
password-reset links. Failures become MailFailed; the server's own words are logged, not shown."""

import asyncio
import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Literal, Protocol

from chatgate.errors import MailFailed

log = logging.getLogger("chatgate.mail")


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = None
    security: Literal["starttls", "tls", "none"] = "starttls"
    timeout: float = 10.0


class Mailer(Protocol):
    async def send(self, to: str, subject: str, text: str) -> None: ...


class SmtpMailer:
    def __init__(self, config: SmtpConfig) -> None:
        self._config = config

    async def send(self, to: str, subject: str, text: str) -> None:
        message = EmailMessage()
        message["From"] = self._config.sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=self._config.sender.rpartition("@")[2].strip("> ") or None)
        message.set_content(text)
        try:
            await asyncio.to_thread(self._deliver, message)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("could not send mail to the SMTP server %s: %s", self._config.host, exc)
            raise MailFailed("The email could not be sent; try again later.") from exc

    def _deliver(self, message: EmailMessage) -> None:
        c = self._config
        context = ssl.create_default_context()
        client: smtplib.SMTP
        if c.security == "tls":
            client = smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout, context=context)
        else:
            client = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
        with client:
            if c.security == "starttls":
                client.starttls(context=context)
            if c.username:
                client.login(c.username, c.password or "")
            client.send_message(message)
