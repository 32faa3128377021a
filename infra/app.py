#!/usr/bin/env python3
"""Entry point of the CDK app: one stack per stage of STAGES.md, checked by cdk-nag.

Context (all optional; `cdk deploy -c key=value`):
  shop:hosted_zone   a Route 53 hosted zone name: adds <stage>.<zone> records (needs account/region)
  shop:mail_sender   SES sender address for stages 7-8, at a domain you control (SES mails it a
                     verification link; a reserved test domain such as example.com is
                     refused); without it, the workers log their mail instead of sending it
  shop:stages        comma-separated stage numbers or names to synthesize (default: the eight
                     stages); `loadgen` adds the optional load generator Shop-LoadGen, which
                     is made only when named (it needs a stage's URL), so that
                     `cdk deploy --all` deploys the stages alone
  shop:region        region to deploy to (default: $CDK_DEFAULT_REGION, else us-east-1)
  shop:alarm_email   an e-mail address subscribed to the stage's alarm topic (SNS asks it to
                     confirm the subscription first)
  shop:ami           {region: AMI id} of Amazon Linux 2023, pinned per region (cdk.json holds
                     us-east-1's); a region without one fails at synth with the command that
                     looks the current one up
  shop:first_deploy  true on a blue/green stage's (6-8) first deploy only: both colours may
                     then take the build; on any later deploy a Rule refuses to leave both
                     BlueImage and GreenImage empty (docs/aws.md, Blue/green)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from shop_infra.loadgen import LoadGenStack
from shop_infra.nag import add_checks
from shop_infra.stack import DEFAULT_REGION, ShopStack
from shop_infra.stages import STAGES, Stage, stage


def _context_without_the_cli() -> dict[str, Any]:
    """cdk.json's context (feature flags, the pinned AMIs) when app.py runs without the CDK CLI.

    The CLI passes cdk.json's context in CDK_CONTEXT_JSON; `python app.py` alone would otherwise
    synthesize without the feature flags and without any pinned AMI.
    """
    if "CDK_CONTEXT_JSON" in os.environ:
        return {}
    settings = json.loads((Path(__file__).resolve().parent / "cdk.json").read_text())
    return dict(settings.get("context", {}))


def chosen(wanted: str | None) -> tuple[list[Stage], bool]:
    """The stages named in `shop:stages` (all eight when it is empty), and whether the load
    generator is named: it is made only then, since it cannot deploy without a stage's URL."""
    keys = [key.strip() for key in wanted.split(",")] if wanted else []
    stages = [stage(key) for key in keys if key != "loadgen"]
    return (stages if keys else list(STAGES)), "loadgen" in keys


def main() -> None:
    app = cdk.App(context=_context_without_the_cli())
    zone = app.node.try_get_context("shop:hosted_zone")
    stages, loadgen = chosen(app.node.try_get_context("shop:stages"))
    # The region is fixed at synth time (load balancer log delivery and CloudFront certificates
    # depend on it); the account only when a hosted zone must be looked up.
    env = cdk.Environment(
        account=os.environ.get("CDK_DEFAULT_ACCOUNT") if zone else None,
        region=app.node.try_get_context("shop:region")
        or os.environ.get("CDK_DEFAULT_REGION")
        or DEFAULT_REGION,
    )
    for each in stages:
        ShopStack(
            app,
            stage=each,
            hosted_zone=zone,
            mail_sender=app.node.try_get_context("shop:mail_sender") or None,
            alarm_email=app.node.try_get_context("shop:alarm_email"),
            first_deploy=str(app.node.try_get_context("shop:first_deploy")).lower() == "true",
            env=env,
        )
    if loadgen:
        # Deployed beside a stage, in its region, with the stage's URL as TargetUrl.
        LoadGenStack(app, env=env)
    add_checks(app)
    app.synth()


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:  # a setting the stacks refuse; the message says what to change
        raise SystemExit(f"shop infra: {error}") from None
