#!/usr/bin/env python3
"""Before `cdk deploy`: will this stage deploy in this account and region on the first try?

    make preflight STAGE=7 [REGION=eu-west-1] [SENDER=orders@shop.example.org]
    python infra/preflight.py --stage 7 [--region eu-west-1] [--mail-sender orders@...]

Read-only calls with the operator's credentials (sts, ssm, ec2, rds, service-quotas, ses). Each
check prints ok, FAIL or "cannot tell" (the call was refused or is not offered) with what to do,
and the command exits 1 when any check fails. What no API can tell is listed after the checks:
CloudFront's verification of a new account, and the Caddy image tag on ECR Public.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from botocore.parsers import ResponseParserError

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shop_infra.constructs.proxy import CADDY_IMAGE
from shop_infra.stages import Stage, stage, vcpus

CDK_JSON = Path(__file__).resolve().parent / "cdk.json"
BOOTSTRAP_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
MIN_BOOTSTRAP_VERSION = 6
"""What the synthesized templates' CheckBootstrapVersion rule asks for."""
POSTGRES_MAJOR = "17"
LOADGEN_VCPUS = 2 * 5
"""Shop-LoadGen with 4 workers: five c7i.large."""
# Service Quotas codes: VPCs per region, EC2-VPC Elastic IPs, running On-Demand standard vCPUs.
VPC_QUOTA = ("vpc", "L-F678F1CE", 5)
EIP_QUOTA = ("ec2", "L-0263D0A3", 5)
VCPU_QUOTA = ("ec2", "L-1216C47A", None)
RESERVED_DOMAINS = ("example.com", "example.net", "example.org", ".test", ".invalid", ".localhost")

OK, FAIL, UNKNOWN = "ok", "FAIL", "cannot tell"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _aws_error(error: Exception) -> str:
    """One short line of what AWS (or an emulator) answered."""
    said = str(error) or type(error).__name__
    if isinstance(error, botocore.exceptions.ClientError):
        said = str(error.response.get("Error", {}).get("Message") or error)
    if "<html" in said.lower():
        said = "an error page instead of an AWS answer (is this endpoint AWS?)"
    first = said.strip().splitlines()[0] if said.strip() else type(error).__name__
    return first[:160]


def _guarded(name: str, fix: str, check: Callable[[], Check]) -> Check:
    """Run a check; a refused or unsupported call says so instead of failing the whole run."""
    try:
        return check()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        return Check(name, UNKNOWN, f"the call failed: {_aws_error(error)}", fix)
    except (NotImplementedError, ResponseParserError) as error:  # an emulator that does not
        return Check(name, UNKNOWN, f"not offered here: {type(error).__name__}", fix)  # model it


def pinned_ami(region: str) -> str | None:
    amis: dict[str, str] = json.loads(CDK_JSON.read_text())["context"].get("shop:ami", {})
    return amis.get(region)


def peak_vcpus(of: Stage) -> int:
    """On-Demand vCPUs the stage runs at its maximum size, in the middle of a blue/green shift:
    the idle colour then has the live colour's size (IdleSize), at most the maximum."""
    web = of.fleet.max_size * (2 if of.fleet.blue_green else 1)
    total = web * vcpus(of.fleet.instance_type)
    if of.workers:
        total += of.workers.max_size * vcpus(of.workers.instance_type)
    return total


def elastic_ips(of: Stage) -> int:
    """Elastic IPs the stage allocates: the box's (stages 1-2) and one per NAT gateway."""
    return (0 if of.load_balanced else 1) + of.nat_gateways


def _quota(quotas: Any, code: tuple[str, str, int | None]) -> float:
    service, quota, default = code
    try:
        return float(
            quotas.get_service_quota(ServiceCode=service, QuotaCode=quota)["Quota"]["Value"]
        )
    except botocore.exceptions.ClientError:
        if default is None:
            raise
        return float(default)


def checks(session: Any, *, of: Stage, region: str, mail_sender: str | None) -> list[Check]:
    sts, ssm, ec2 = session.client("sts"), session.client("ssm"), session.client("ec2")
    rds, quotas = session.client("rds"), session.client("service-quotas")
    found: list[Check] = []

    def identity() -> Check:
        account = sts.get_caller_identity()["Account"]
        return Check("credentials", OK, f"account {account}, region {region}")

    who = _guarded("credentials", "aws configure, or set AWS_PROFILE", identity)
    if who.status != OK:  # nothing else can be asked: a failure, never "cannot tell"
        return [Check(who.name, FAIL, who.detail, who.fix)]
    found.append(who)

    def bootstrap() -> Check:
        try:
            value = ssm.get_parameter(Name=BOOTSTRAP_PARAMETER)["Parameter"]["Value"]
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ParameterNotFound":
                raise
            return Check(
                "CDK bootstrap",
                FAIL,
                f"{region} is not bootstrapped",
                f"cdk bootstrap (in {region})",
            )
        if int(value) < MIN_BOOTSTRAP_VERSION:
            return Check(
                "CDK bootstrap",
                FAIL,
                f"version {value}, the templates need {MIN_BOOTSTRAP_VERSION}+",
                "cdk bootstrap (upgrades the bootstrap stack)",
            )
        return Check("CDK bootstrap", OK, f"version {value}")

    found.append(_guarded("CDK bootstrap", f"cdk bootstrap (in {region})", bootstrap))

    def image() -> Check:
        ami = pinned_ami(region)
        if ami is None:
            return Check(
                "machine image",
                FAIL,
                f"infra/cdk.json pins no AMI for {region}",
                "pass -c shop:ami='{\"" + region + '": "ami-..."}\' (docs/aws.md, '
                '"The machine image is pinned")',
            )
        images = ec2.describe_images(ImageIds=[ami])["Images"]
        if not images or images[0].get("State") != "available":
            return Check(
                "machine image", FAIL, f"{ami} is not available in {region}", "refresh the pin"
            )
        return Check("machine image", OK, f"{ami} ({images[0].get('Name', 'unnamed')})")

    found.append(_guarded("machine image", "check the AMI pin in infra/cdk.json", image))

    if of.database is not None:

        def engine() -> Check:
            offered = rds.describe_db_engine_versions(
                Engine="postgres", EngineVersion=POSTGRES_MAJOR
            )["DBEngineVersions"]
            if not offered:
                return Check(
                    "RDS PostgreSQL",
                    FAIL,
                    f"PostgreSQL {POSTGRES_MAJOR} is not offered in {region}",
                    "deploy in another region",
                )
            versions = ", ".join(v["EngineVersion"] for v in offered[-3:])
            return Check("RDS PostgreSQL", OK, f"{POSTGRES_MAJOR} offered (newest: {versions})")

        found.append(_guarded("RDS PostgreSQL", "aws rds describe-db-engine-versions", engine))

    def vpcs() -> Check:
        used = len(ec2.describe_vpcs()["Vpcs"])
        limit = _quota(quotas, VPC_QUOTA)
        status = OK if used + 1 <= limit else FAIL
        return Check(
            "VPCs",
            status,
            f"{used} of {limit:.0f} used; the stage adds 1",
            "destroy a stage you no longer use, or ask for a higher VPC quota",
        )

    found.append(_guarded("VPCs", "Service Quotas: VPCs per Region", vpcs))

    def addresses() -> Check:
        used = len(ec2.describe_addresses()["Addresses"])
        limit = _quota(quotas, EIP_QUOTA)
        needed = elastic_ips(of)
        status = OK if used + needed <= limit else FAIL
        return Check(
            "Elastic IPs",
            status,
            f"{used} of {limit:.0f} used; the stage adds {needed}",
            "release unused addresses, or ask for a higher EC2-VPC Elastic IPs quota",
        )

    found.append(_guarded("Elastic IPs", "Service Quotas: EC2-VPC Elastic IPs", addresses))

    def cpus() -> Check:
        limit = _quota(quotas, VCPU_QUOTA)
        needed = peak_vcpus(of)
        status = OK if needed + LOADGEN_VCPUS <= limit else FAIL
        return Check(
            "On-Demand vCPUs",
            status,
            f"quota {limit:.0f}; the stage at its maximum {needed}, Shop-LoadGen "
            f"with 4 workers {LOADGEN_VCPUS} more",
            "ask for a higher 'Running On-Demand Standard instances' quota",
        )

    found.append(_guarded("On-Demand vCPUs", "Service Quotas: Running On-Demand Standard", cpus))

    if of.workers is not None:
        found.extend(mail_checks(session, mail_sender))
    return found


def mail_checks(session: Any, mail_sender: str | None) -> list[Check]:
    """Stage 7 sends order confirmations through SES: a sender you own, verified, out of the
    sandbox (in the sandbox every recipient must be verified too)."""
    ses = session.client("ses")
    if not mail_sender:
        return [
            Check(
                "SES sender",
                FAIL,
                "no sender given",
                "pass SENDER=orders@<a domain you control> (cdk: -c shop:mail_sender=...)",
            )
        ]
    domain = mail_sender.rpartition("@")[2].lower()
    if any(
        domain == d or domain.endswith(d if d.startswith(".") else "." + d)
        for d in RESERVED_DOMAINS
    ):
        return [
            Check(
                "SES sender",
                FAIL,
                f"{domain} is reserved for examples: it can never be verified",
                "use an address at a domain you control",
            )
        ]
    found: list[Check] = []

    def identity() -> Check:
        attributes = ses.get_identity_verification_attributes(Identities=[mail_sender, domain])
        states = {
            name: value.get("VerificationStatus")
            for name, value in attributes["VerificationAttributes"].items()
        }
        if "Success" in states.values():
            return Check("SES sender", OK, f"{mail_sender} verified")
        return Check(
            "SES sender",
            FAIL,
            f"{mail_sender} is not verified ({states or 'unknown to SES'})",
            "deploy stage 7 (SES e-mails a verification link), or verify the domain in SES",
        )

    found.append(_guarded("SES sender", "aws ses get-identity-verification-attributes", identity))

    def production() -> Check:
        account = session.client("sesv2").get_account()
        if not account.get("SendingEnabled", True):
            return Check(
                "SES sending", FAIL, "sending is paused for this account", "see the SES console"
            )
        if not account.get("ProductionAccessEnabled"):
            return Check(
                "SES sending",
                FAIL,
                "the account is in the SES sandbox: only verified recipients",
                "request production access (docs/aws.md, 'Leaving the SES sandbox')",
            )
        return Check("SES sending", OK, "production access")

    found.append(_guarded("SES sending", "aws sesv2 get-account", production))
    return found


NOT_CHECKABLE = (
    "CloudFront (stages 5-7): a new account may have to be verified by AWS Support before it can "
    "create a distribution; the deploy then fails at the distribution with an access error.",
    f"The Caddy image (stages 1-2), {CADDY_IMAGE}: ECR Public has no API for library images; "
    "open https://gallery.ecr.aws/docker/library/caddy to see that the tag is still offered.",
)


def main(argv: list[str] | None = None, *, endpoint_url: str | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True, help="1-8, or a stage name")
    parser.add_argument("--region", help="default: the AWS profile's region")
    parser.add_argument("--mail-sender", help="stage 7's SES sender (cdk's shop:mail_sender)")
    options = parser.parse_args(argv)
    try:
        of = stage(int(options.stage) if options.stage.isdigit() else options.stage)
    except (KeyError, ValueError) as error:
        print(f"preflight: {error.args[0]}", file=sys.stderr)
        return 2
    session = boto3.session.Session(region_name=options.region)
    region = session.region_name
    if not region:
        print("preflight: no AWS region: pass REGION=... or set AWS_REGION", file=sys.stderr)
        return 2

    class _Clients:
        def client(self, name: str) -> Any:
            return session.client(name, endpoint_url=endpoint_url)  # type: ignore[call-overload]

    found = checks(_Clients(), of=of, region=region, mail_sender=options.mail_sender)
    print(f"preflight for stage {of.number} ({of.name}) in {region}:")
    for check in found:
        print(f"  {check.status:<11} {check.name}: {check.detail}")
        if check.status != OK and check.fix:
            print(f"  {'':<11} -> {check.fix}")
    print("not checkable from here:")
    for line in NOT_CHECKABLE:
        print(f"  - {line}")
    failed = [check.name for check in found if check.status == FAIL]
    if failed:
        print(f"preflight: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
