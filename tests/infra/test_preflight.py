"""`make preflight`: the read-only checks before a first deploy, against moto's server where moto
models the call (STS, SSM, EC2 images, VPCs and addresses, the VPC quota, SES identities); the
calls it does not model are reported as "cannot tell", never as a pass."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import boto3
import preflight
import pytest
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh moto server per test: an empty account each time."""
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", REGION),
    ):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def client(endpoint: str, name: str) -> Any:
    return boto3.client(name, endpoint_url=endpoint, region_name=REGION)


def run(endpoint: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = preflight.main(["--region", REGION, *argv], endpoint_url=endpoint)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def line(output: str, name: str) -> str:
    [found] = [text for text in output.splitlines() if f" {name}:" in text]
    return found


def test_an_account_never_bootstrapped_fails_and_says_to_run_cdk_bootstrap(endpoint, capsys):
    code, output = run(endpoint, capsys, "--stage", "3")
    assert code == 1
    assert line(output, "CDK bootstrap").split()[0] == "FAIL"
    assert "cdk bootstrap (in us-east-1)" in output
    assert "credentials: account 123456789012" in output
    assert "preflight: 1 check(s) failed: CDK bootstrap" in output


def test_a_bootstrapped_account_with_room_passes_what_moto_can_tell(endpoint, capsys):
    client(endpoint, "ssm").put_parameter(
        Name=preflight.BOOTSTRAP_PARAMETER, Value="28", Type="String"
    )
    code, output = run(endpoint, capsys, "--stage", "3")
    assert line(output, "CDK bootstrap").split()[0] == "ok"
    assert line(output, "VPCs").split()[0] == "ok"  # moto's default VPC: 1 of 5, plus 1
    # moto does not model RDS engine versions or the EC2 quotas: said, not passed.
    assert line(output, "RDS PostgreSQL").startswith("  cannot tell")
    assert "CloudFront" in output and "caddy" in output  # what no API can tell is listed
    assert code == 0


def test_a_region_at_its_vpc_quota_fails_before_the_deploy_would(endpoint, capsys):
    ec2 = client(endpoint, "ec2")
    for n in range(4):  # the default VPC plus four: the default quota of five is used up
        ec2.create_vpc(CidrBlock=f"10.{n + 1}.0.0/16")
    code, output = run(endpoint, capsys, "--stage", "1")
    assert code == 1
    assert "5 of 5 used; the stage adds 1" in line(output, "VPCs")
    assert "ask for a higher VPC quota" in output


def test_stage_7_refuses_a_sender_that_can_never_be_verified(endpoint, capsys):
    code, output = run(endpoint, capsys, "--stage", "7", "--mail-sender", "orders@example.com")
    assert code == 1
    assert "example.com is reserved for examples" in line(output, "SES sender")


def test_stage_7_checks_that_the_sender_is_verified_in_ses(endpoint, capsys):
    code, output = run(endpoint, capsys, "--stage", "7", "--mail-sender", "orders@shop.test.org")
    assert code == 1
    assert "is not verified" in line(output, "SES sender")
    client(endpoint, "ses").verify_email_identity(EmailAddress="orders@shop.test.org")
    _, output = run(endpoint, capsys, "--stage", "7", "--mail-sender", "orders@shop.test.org")
    assert line(output, "SES sender").split()[0] == "ok"


def test_the_peak_vcpus_and_addresses_come_from_the_stage_catalog():
    from shop_infra.stages import stage

    assert preflight.elastic_ips(stage(1)) == 1  # the box's own address, no NAT gateway
    assert preflight.peak_vcpus(stage(7)) > preflight.peak_vcpus(stage(5))


def test_the_peak_vcpus_of_blue_green_hold_both_colours_at_their_maximum_during_a_shift():
    """Before a shift, IdleSize raises the idle colour to the live colour's size: up to the
    fleet's maximum, so both colours may run max_size instances at once."""
    from shop_infra.stages import stage, vcpus

    for number in (6, 7):
        of = stage(number)
        web = 2 * of.fleet.max_size * vcpus(of.fleet.instance_type)
        workers = of.workers.max_size * vcpus(of.workers.instance_type) if of.workers else 0
        assert preflight.peak_vcpus(of) == web + workers


def test_without_credentials_preflight_fails_instead_of_saying_cannot_tell(capsys, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code = preflight.main(["--region", REGION, "--stage", "3"])
    output = capsys.readouterr()
    assert code == 1
    assert line(output.out, "credentials").split()[0] == "FAIL"
    assert "preflight: 1 check(s) failed: credentials" in output.err


def test_an_unknown_stage_is_one_plain_line(capsys):
    assert preflight.main(["--region", REGION, "--stage", "9"]) == 2
    assert capsys.readouterr().err.startswith("preflight: no stage 9; known:")
