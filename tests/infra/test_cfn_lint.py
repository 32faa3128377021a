"""cfn-lint on every synthesized template: no errors, and only the warnings listed here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

CFN_LINT = Path(sys.executable).with_name("cfn-lint")

_REDUNDANT_DEPENDS_ON_LISTENER = (
    "aws-cdk-lib makes a request-count scaling policy depend on the listener (the target group "
    "must be attached before its metric exists) and also refers to it in the ResourceLabel: "
    "the explicit DependsOn is redundant and harmless."
)
_MAJOR_VERSION_ONLY = (
    "EngineVersion is the major version alone ('17') on purpose: RDS then creates the "
    "instance at a recent minor and upgrades it, where a pinned minor fails once RDS retires "
    "it. RDS documents major-only versions, and cfn-lint's E3691 accepts them (cfn-lint "
    "#3849); its deprecation list for W3691 wrongly holds the major versions too."
)
ALLOWED_WARNINGS = {
    # (rule, logical id prefix of the resource the warning is about): reason
    ("W3005", "CustomVpcRestrictDefaultSGCustomResourceProviderHandler"): (
        "aws-cdk-lib's own custom resource provider (which empties the VPC's default security "
        "group) declares a DependsOn on its role next to a GetAtt of it: redundant, not ours."
    ),
    ("W3005", "CustomS3AutoDeleteObjectsCustomResourceProviderHandler"): (
        "The same CDK helper pattern, for the provider that empties the demo's buckets on destroy."
    ),
    ("W3005", "AWS679f53fac002430cb0da5b7982bd2287"): (
        "The same CDK helper pattern, for aws-cdk-lib's AwsCustomResource function (the look-up "
        "of the CloudFront VPC origin's security group)."
    ),
    # Every primary: main's, and stage 8's federated databases and order shards.
    **{
        ("W3691", f"{database}Primary"): _MAJOR_VERSION_ONLY
        for database in (
            "Database",
            "AccountingDatabase",
            "DeliveryDatabase",
            "OrderShard1",
            "OrderShard2",
        )
    },
    ("W3005", "BlueGroupScalingPolicyRequestsPerTarget"): _REDUNDANT_DEPENDS_ON_LISTENER,
    ("W3005", "GreenGroupScalingPolicyRequestsPerTarget"): _REDUNDANT_DEPENDS_ON_LISTENER,
}


@pytest.fixture(scope="module")
def findings(synthesized, assembly) -> list[dict]:
    loadgen = assembly / "Shop-LoadGen.template.json"
    return _lint([str(each.path) for each in synthesized.values()] + [str(loadgen)])


@pytest.fixture(scope="module")
def zone_findings(with_hosted_zone) -> list[dict]:
    return _lint([str(each.path) for each in with_hosted_zone.values()])


def _lint(templates: list[str]) -> list[dict]:
    run = subprocess.run(
        [str(CFN_LINT), "--format", "json", "--", *templates],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode & 1 == 0, run.stderr  # bit 1: cfn-lint itself failed
    return json.loads(run.stdout or "[]")


def _resource(finding: dict) -> str:
    path = finding["Location"]["Path"]
    return path[1] if len(path) > 1 and path[0] == "Resources" else ""


def test_cfn_lint_reports_no_errors_on_any_stage_or_the_load_generator(findings):
    errors = [f for f in findings if f["Level"] == "Error"]
    assert errors == []


def test_cfn_lint_warnings_are_only_the_allowed_ones(findings):
    unexpected = [
        (f["Rule"]["Id"], _resource(f), f["Message"])
        for f in findings
        if f["Level"] != "Error"
        and not any(
            f["Rule"]["Id"] == rule and _resource(f).startswith(prefix)
            for rule, prefix in ALLOWED_WARNINGS
        )
    ]
    assert unexpected == []


def test_cfn_lint_finds_nothing_new_in_the_stages_with_a_hosted_zone(zone_findings):
    # HTTPS listeners and their rules, the single box's port 443. The test's zone synth names an
    # account without context for its availability zones, so CDK writes placeholder AZs (W3010);
    # anything else is a finding.
    unexpected = [
        (f["Rule"]["Id"], _resource(f), f["Message"])
        for f in zone_findings
        if f["Rule"]["Id"] != "W3010"
        and not any(
            f["Rule"]["Id"] == rule and _resource(f).startswith(prefix)
            for rule, prefix in ALLOWED_WARNINGS
        )
    ]
    assert unexpected == []
