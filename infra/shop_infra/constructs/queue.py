"""Shift work off the request (stage 7): the order queue, its dead-letter queue, SES sending."""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_ses as ses
from aws_cdk import aws_sqs as sqs
from constructs import Construct

RESERVED_TOP_LEVEL = frozenset({"example", "invalid", "local", "localhost", "test"})
RESERVED_DOMAINS = frozenset({"example.com", "example.net", "example.org"})
"""Names reserved for documentation and tests (RFC 2606, RFC 6761; `local` is mDNS): no mail
is delivered to them, so SES can never verify a sender there."""


def check_mail_sender(address: str) -> None:
    """Refuse a sender SES can never verify: raises ValueError saying what to pass instead.

    SES verifies an e-mail identity by mailing a link to it; until that link is followed,
    nothing is sent from it.
    """
    domain = address.rpartition("@")[2].strip().rstrip(".").lower()
    labels = domain.split(".")
    reserved = (
        "@" not in address
        or labels[-1] in RESERVED_TOP_LEVEL
        or ".".join(labels[-2:]) in RESERVED_DOMAINS
    )
    if reserved:
        raise ValueError(
            f"shop:mail_sender {address!r} can never be verified: SES verifies a sender by "
            f"mailing a link to it, and {domain or 'that'} is a reserved test domain no mail "
            "reaches. Pass -c shop:mail_sender=<an address at a domain you control>, or leave "
            "it out: stage 7 then logs its mail instead of sending it."
        )


class OrderQueue(Construct):
    """The order queue and its dead-letter queue; with a sender, an SES identity for it.

    Without a sender (`mail_sender=None`) the workers are given no mail address and the app
    logs its mail instead of sending it.
    """

    def __init__(self, scope: Construct, id: str, *, mail_sender: str | None) -> None:
        super().__init__(scope, id)
        self.dead_letters = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=Duration.seconds(60),
            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=5, queue=self.dead_letters),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.mail_sender = mail_sender
        self.identity = None
        if mail_sender is not None:
            check_mail_sender(mail_sender)
            # An e-mail identity: SES sends a verification message to this address on deploy.
            self.identity = ses.EmailIdentity(
                self, "Sender", identity=ses.Identity.email(mail_sender)
            )

    def send_mail_statement(self) -> iam.PolicyStatement | None:
        """SES sending from the one verified sender address, and from nothing else; None
        without a sender."""
        if self.identity is None:
            return None
        return iam.PolicyStatement(
            actions=["ses:SendEmail", "ses:SendRawEmail"],
            resources=[
                f"arn:{Aws.PARTITION}:ses:{Aws.REGION}:{Aws.ACCOUNT_ID}:identity/"
                f"{self.identity.email_identity_name}"
            ],
            conditions={"StringEquals": {"ses:FromAddress": self.mail_sender}},
        )
