"""cdk-nag (AwsSolutions, v3 API): the plugin, and how an acknowledgement is written.

Each acknowledgement names one rule (or one finding of a rule) on one construct, with the reason,
and sits next to the resource it is about, in the construct that builds it.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, App, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct


def add_checks(app: App) -> None:
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))


def acknowledge(construct: IConstruct, *, id: str, reason: str) -> None:
    """Acknowledge rule `id` (e.g. AwsSolutions-EC23, or RULE[finding]) on `construct`."""
    Validations.of(construct).acknowledge(Acknowledgment(id=id, reason=reason))
