"""Outgoing e-mail: through Amazon SES when a sender is configured (stage 7), else to the log."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.kernel.settings import Settings

log = logging.getLogger("shop.mail")


@dataclass(frozen=True, slots=True)
class Mail:
    to: str
    subject: str
    text: str


class MailRefused(Exception):
    """The mail service refused this message for a reason that sending it again cannot change
    (an unverified sender or recipient in SES's sandbox, a malformed address): give it up."""


class Mailer(Protocol):
    async def send(self, mail: Mail) -> None:
        """Hand the message over for delivery. Raises MailRefused when it was refused for good,
        any other exception when it was not accepted this time (a retry may succeed)."""


class LogMailer:
    """Writes each message to the log (logger `shop.mail`): development and stages 1-6."""

    async def send(self, mail: Mail) -> None:
        log.info("mail to %s: %s\n%s", mail.to, mail.subject, mail.text)


REFUSED_FOR_GOOD = frozenset(
    {
        "MessageRejected",  # SES's sandbox: sender or recipient not verified; content refused
        "MailFromDomainNotVerified",
        "MailFromDomainNotVerifiedException",
        "ConfigurationSetDoesNotExist",
        "InvalidParameterValue",  # e.g. an address SES cannot parse
    }
)
"""SES error codes a retry cannot change. Throttling, paused sending and server errors are not
here: they pass, and the message is tried again."""


class SesMailer:
    """Sends through SES from one verified sender address; raises MailRefused for the errors of
    REFUSED_FOR_GOOD."""

    def __init__(
        self, sender: str, *, region: str | None = None, endpoint_url: str | None = None
    ) -> None:
        self.sender = sender
        self._client: Any = boto3.client(
            "ses",
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(
                connect_timeout=2, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}
            ),
        )

    async def send(self, mail: Mail) -> None:
        try:
            await asyncio.to_thread(
                self._client.send_email,
                Source=self.sender,
                Destination={"ToAddresses": [mail.to]},
                Message={
                    "Subject": {"Data": mail.subject, "Charset": "UTF-8"},
                    "Body": {"Text": {"Data": mail.text, "Charset": "UTF-8"}},
                },
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in REFUSED_FOR_GOOD:
                raise MailRefused(f"{code}: {error.get('Message', '')}") from exc
            raise


def mailer_for(settings: Settings) -> Mailer:
    """SES when SHOP_MAIL_SENDER is set, the log otherwise."""
    if settings.mail_sender:
        return SesMailer(
            settings.mail_sender,
            region=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
        )
    return LogMailer()
