"""checkov, a second policy engine beside cdk-nag, on every synthesized template.

checkov pins an older boto3 than the shop's, so it gets its own virtualenv (`.venv-checkov`, git
-ignored), synced from its own lock, tools/checkov/uv.lock. Every finding must be in
ALLOWED below, keyed by rule and the logical-id prefix of the resource it is about, with the
reason it does not hold for these stacks; an entry that no longer matches anything fails too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKOV_VENV = ROOT / ".venv-checkov"

_CDK_HELPER = (
    "aws-cdk-lib's own custom resource function (it empties the default security group, the "
    "demo buckets on destroy, or looks up the VPC origin's security group): it runs for seconds "
    "at deploy time, outside the VPC by design (it calls AWS APIs only); CloudFormation retries "
    "it, so a dead-letter queue or a concurrency limit would hold nothing."
)
_AWS_MANAGED_KEYS = (
    "Encrypted at rest with the AWS managed key; a customer managed KMS key per stage would cost "
    "a monthly key fee and KMS calls on every read for a disposable stack of generated data, "
    "and would add a key policy to get right for every reader."
)
_LOG_GROUPS = (
    "CloudWatch Logs encrypts every log group at rest with its own key; a customer managed KMS "
    "key would only add a key policy for the logs service, for logs kept two weeks at most."
)
_PLAIN_HTTP_LISTENER = (
    "The port-80 listener: stages 3-4 without a hosted zone have no certificate (the Protocol "
    "output says so and how to get HTTPS), with one it only redirects to HTTPS; stages 5-7 "
    "serve HTTPS at CloudFront and the load balancer is internal, reached only by CloudFront's "
    "VPC origin over AWS's network."
)
_ENHANCED_MONITORING = (
    "Performance Insights is on for every instance (which statements the database waits on), "
    "and the dashboard graphs CPU and connections; Enhanced Monitoring's per-process OS metrics "
    "would add a monitoring role and log ingestion for nothing the load test reads."
)
_REPLICA_ENCRYPTION = (
    "False positive: a read replica inherits the storage encryption of its (encrypted) "
    "primary, and CloudFormation rejects StorageEncrypted on a replica (cfn-lint F3020)."
)
_REPLICA_MULTI_AZ = (
    "Read capacity is made redundant by several replicas over both AZs (and the Multi-AZ primary "
    "takes reads if they all fail); a standby per replica would double the cost of reads."
)
_SHARD_REPLICA_MULTI_AZ = (
    "Each order shard has one replica: while it lags or is down the app reads the shard from its "
    "Multi-AZ primary, and RDS replaces a lost replica; a standby for it would double the cost."
)
_PASSWORD_FROM_SECRETS_MANAGER = (
    "The app signs in with the generated password it reads from Secrets Manager with its "
    "instance role; IAM database tokens expire every 15 minutes and would need a refresh "
    "in every pooled connection of the app, for no gain over a secret no one sees."
)
_PUBLIC_ENTRY = (
    "Stages 1-4 have no CDN: the box (1-2) or the load balancer (3-4) is the shop's public "
    "entry point and must take HTTP from every load-test client (HTTPS too with a domain)."
)
_NO_VERSIONING = (
    "Versioning would keep every overwritten object of a disposable stack: the access logs "
    "expire after 30 days and the assets are rebuilt from the image on every deploy."
)

ALLOWED: dict[tuple[str, str], str] = {
    # (rule, logical id prefix): why it does not apply here
    **{
        (rule, helper): _CDK_HELPER
        for rule in ("CKV_AWS_115", "CKV_AWS_116", "CKV_AWS_117")
        for helper in (
            "AWS679f53fac002430cb0da5b7982bd2287",
            "CustomS3AutoDeleteObjectsCustomResourceProviderHandler",
            "CustomVpcRestrictDefaultSGCustomResourceProviderHandler",
        )
    },
    ("CKV_AWS_16", "DatabaseReplica"): _REPLICA_ENCRYPTION,
    ("CKV_AWS_27", "Orders"): (
        "False positive: the queues use SQS-managed encryption (SqsManagedSseEnabled: true), "
        "which this rule, looking for a KMS key id, does not recognise."
    ),
    ("CKV_AWS_118", "DatabasePrimary"): _ENHANCED_MONITORING,
    ("CKV_AWS_118", "DatabaseReplica"): _ENHANCED_MONITORING,
    ("CKV_AWS_157", "DatabaseReplica"): _REPLICA_MULTI_AZ,
    ("CKV_AWS_157", "DatabasePrimary"): (
        "Stage 2 is a single-AZ database by definition (STAGES.md): its lack of redundancy is "
        "what the stage demonstrates; Multi-AZ is stage 3."
    ),
    ("CKV_AWS_161", "DatabasePrimary"): _PASSWORD_FROM_SECRETS_MANAGER,
    # Stage 8's federated databases and order shards: the same construct as the main database,
    # Multi-AZ primaries, so the same reasons and no others ...
    **{
        (rule, f"{database}{part}"): reason
        for database in ("AccountingDatabase", "DeliveryDatabase", "OrderShard1", "OrderShard2")
        for rule, part, reason in (
            ("CKV_AWS_118", "Primary", _ENHANCED_MONITORING),
            ("CKV_AWS_161", "Primary", _PASSWORD_FROM_SECRETS_MANAGER),
            ("CKV_AWS_149", "Secret", _AWS_MANAGED_KEYS),
            ("CKV_AWS_158", "PostgresqlLogs", _LOG_GROUPS),
        )
    },
    # ... and each order shard's one replica, as main's replicas.
    **{
        (rule, f"{shard}Replica"): reason
        for shard in ("OrderShard1", "OrderShard2")
        for rule, reason in (
            ("CKV_AWS_16", _REPLICA_ENCRYPTION),
            ("CKV_AWS_118", _ENHANCED_MONITORING),
            ("CKV_AWS_157", _SHARD_REPLICA_MULTI_AZ),
        )
    },
    ("CKV_AWS_119", "EdgeCarts"): _AWS_MANAGED_KEYS,
    ("CKV_AWS_149", "CacheAuthToken"): _AWS_MANAGED_KEYS,
    ("CKV_AWS_149", "DatabaseCredentials"): _AWS_MANAGED_KEYS,
    ("CKV_AWS_149", "DatabaseSecret"): _AWS_MANAGED_KEYS,
    ("CKV_AWS_149", "JwtSecret"): _AWS_MANAGED_KEYS,
    ("CKV_AWS_158", "EdgeVpcOriginSecurityGroupLogs"): _LOG_GROUPS,
    ("CKV_AWS_158", "NetworkFlowLogs"): _LOG_GROUPS,
    ("CKV_AWS_158", "FlowLogs"): _LOG_GROUPS,  # Shop-LoadGen's own VPC
    ("CKV_AWS_158", "WebLogs"): _LOG_GROUPS,
    ("CKV_AWS_158", "WorkersLogs"): _LOG_GROUPS,
    ("CKV_AWS_158", "WebAppMetrics"): _LOG_GROUPS,  # the CloudWatch agent's embedded metrics
    ("CKV_AWS_158", "WorkersAppMetrics"): _LOG_GROUPS,
    ("CKV_AWS_158", "DatabasePostgresqlLogs"): _LOG_GROUPS,  # RDS log, made by the stack
    ("CKV_AWS_158", "FunctionLogs"): _LOG_GROUPS,  # aws-cdk-lib's helper functions' logs
    ("CKV_AWS_26", "ObservabilityAlarms"): (
        "The alarm topic carries alarm names and thresholds, no customer data; CloudWatch "
        "alarms cannot publish to a topic encrypted with the AWS managed SNS key, so encryption "
        "would need a customer managed key for this topic alone."
    ),
    ("CKV_AWS_68", "EdgeDistribution"): (
        "No WAF web ACL on a disposable load-test stage: WAF bills every request it inspects, "
        "which a load test multiplies, and a CloudFront web ACL must be made in us-east-1 (the "
        "same reason as the AwsSolutions-CFR2 acknowledgement in edge.py)."
    ),
    ("CKV_AWS_174", "EdgeDistribution"): (
        "Without a domain the distribution uses the default *.cloudfront.net certificate, whose "
        "TLS floor CloudFront fixes; with a hosted zone an ACM certificate and TLSv1.2_2021 are "
        "used (the AwsSolutions-CFR4 acknowledgement in edge.py)."
    ),
    ("CKV_AWS_2", "LoadBalancerAlbHttp"): _PLAIN_HTTP_LISTENER,
    ("CKV_AWS_103", "LoadBalancerAlbHttp"): _PLAIN_HTTP_LISTENER,
    ("CKV_AWS_260", "LoadBalancerSecurityGroup"): _PUBLIC_ENTRY,
    ("CKV_AWS_260", "WebSecurityGroup"): _PUBLIC_ENTRY,
    ("CKV_AWS_18", "AccessLogs"): (
        "This is the access-log bucket itself (load balancer, CloudFront and S3 access logs land "
        "here); logging it into itself would loop (AwsSolutions-S1 in stack.py)."
    ),
    ("CKV_AWS_21", "AccessLogs"): _NO_VERSIONING,
    ("CKV_AWS_21", "EdgeAssets"): _NO_VERSIONING,
}


UV = ROOT / ".venv-uv" / "bin" / "uv"
"""The locked uv that `make` installs (tools/uv/requirements.txt)."""


@pytest.fixture(scope="session")
def checkov() -> Path:
    """The checkov executable of its own virtualenv, synced from tools/checkov/uv.lock: exactly the
    locked versions, every run (quick when nothing changed), and an error if the lock is stale."""
    if not UV.exists():
        pytest.fail(f"no uv at {UV}: `make install` installs it from tools/uv/requirements.txt")
    command = [str(UV), "sync", "--locked", "--quiet", "--project", str(ROOT / "tools" / "checkov")]
    environment = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(CHECKOV_VENV)}
    environment.setdefault("UV_PYTHON", sys.executable)
    environment.setdefault("UV_PYTHON_DOWNLOADS", "never")
    made = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if made.returncode != 0:
        pytest.fail(f"could not install checkov: {' '.join(command)}\n{made.stderr}")
    return CHECKOV_VENV / "bin" / "checkov"


def _run(checkov: Path, templates: list[Path]) -> list[dict[str, Any]]:
    files = [arg for template in templates for arg in ("--file", str(template))]
    run = subprocess.run(
        [str(checkov), *files, "--framework", "cloudformation", "--output", "json", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode in (0, 1), run.stderr  # 1: findings; anything else: checkov broke
    reports = json.loads(run.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    return [
        {
            "rule": check["check_id"],
            "resource": check["resource"].split(".", 1)[1],
            "template": Path(check["file_path"]).name,
            "name": check["check_name"],
        }
        for report in reports
        if report.get("results")
        for check in report["results"]["failed_checks"]
    ]


def _allowed_by(finding: dict[str, Any]) -> tuple[str, str] | None:
    for rule, prefix in ALLOWED:
        if finding["rule"] == rule and finding["resource"].startswith(prefix):
            return rule, prefix
    return None


@pytest.fixture(scope="module")
def findings(checkov, synthesized, with_hosted_zone, assembly) -> list[dict[str, Any]]:
    templates = [each.path for each in [*synthesized.values(), *with_hosted_zone.values()]]
    return _run(checkov, [*templates, assembly / "Shop-LoadGen.template.json"])


def test_checkov_finds_nothing_but_the_justified_exceptions(findings):
    unexpected = [
        (f["rule"], f["resource"], f["template"], f["name"])
        for f in findings
        if _allowed_by(f) is None
    ]
    assert unexpected == []


def test_every_checkov_exception_still_matches_a_finding(findings):
    used = {_allowed_by(finding) for finding in findings}
    assert set(ALLOWED) - used == set(), "remove the exceptions that no longer hold"


def test_every_checkov_exception_gives_a_reason():
    for (rule, prefix), reason in ALLOWED.items():
        assert re.fullmatch(r"CKV_AWS_\d+", rule) and prefix
        assert len(reason) > 80, f"{rule} on {prefix}: give a reason a reviewer would accept"


def test_checkov_does_fail_a_template_that_breaks_a_rule(checkov, tmp_path):
    careless = tmp_path / "careless.template.json"
    careless.write_text(
        json.dumps(
            {
                "Resources": {
                    "Open": {
                        "Type": "AWS::EC2::SecurityGroup",
                        "Properties": {
                            "GroupDescription": "ssh from anywhere",
                            "SecurityGroupIngress": [
                                {
                                    "IpProtocol": "tcp",
                                    "FromPort": 22,
                                    "ToPort": 22,
                                    "CidrIp": "0.0.0.0/0",
                                }
                            ],
                        },
                    }
                }
            }
        )
    )
    rules = {finding["rule"] for finding in _run(checkov, [careless])}
    assert "CKV_AWS_24" in rules  # no SSH from 0.0.0.0/0
