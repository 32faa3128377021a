"""Shift work off the request (stage 7): the order queue, its dead-letter queue, SES sending."""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_ses as ses
from aws_cdk import aws_sqs as sqs
from constructs import Construct


class OrderQueue(Construct):
    def __init__(self, scope: Construct, id: str, *, mail_sender: str) -> None:
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
        # An e-mail identity: SES sends a verification message to this address on deploy.
        self.identity = ses.EmailIdentity(self, "Sender", identity=ses.Identity.email(mail_sender))

    def send_mail_statement(self) -> iam.PolicyStatement:
        """SES sending from the one verified sender address, and from nothing else."""
        return iam.PolicyStatement(
            actions=["ses:SendEmail", "ses:SendRawEmail"],
            resources=[
                f"arn:{Aws.PARTITION}:ses:{Aws.REGION}:{Aws.ACCOUNT_ID}:identity/"
                f"{self.identity.email_identity_name}"
            ],
            conditions={"StringEquals": {"ses:FromAddress": self.mail_sender}},
        )
