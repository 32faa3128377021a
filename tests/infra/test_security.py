"""Secure by default, on every stage: what must never be in any template."""

import json
import re

import pytest
from shop_infra.stages import STAGES

ALL = [stage.number for stage in STAGES]
DATA_PORTS = {5432, 6379}


def _ingress_rules(synth):
    for resource in synth.resources("AWS::EC2::SecurityGroup").values():
        yield from resource["Properties"].get("SecurityGroupIngress", [])
    for resource in synth.resources("AWS::EC2::SecurityGroupIngress").values():
        yield resource["Properties"]


def _covers(rule, port):
    if rule.get("IpProtocol") in ("-1", -1):
        return True
    return rule.get("FromPort", 0) <= port <= rule.get("ToPort", 65535)


@pytest.mark.parametrize("number", ALL)
def test_nothing_is_open_to_the_internet_except_http(synthesized, number):
    for rule in _ingress_rules(synthesized[number]):
        if rule.get("CidrIp") == "0.0.0.0/0" or rule.get("CidrIpv6") == "::/0":
            assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 80, 80)


@pytest.mark.parametrize("number", ALL)
def test_database_and_cache_ports_admit_security_groups_only(synthesized, number):
    for rule in _ingress_rules(synthesized[number]):
        if any(_covers(rule, port) for port in DATA_PORTS) and rule.get("IpProtocol") != "-1":
            assert "SourceSecurityGroupId" in rule, rule
            assert "CidrIp" not in rule and "CidrIpv6" not in rule


@pytest.mark.parametrize("number", ALL)
def test_no_port_22_and_no_key_pair(synthesized, number):
    synth = synthesized[number]
    assert not any(_covers(rule, 22) for rule in _ingress_rules(synth))
    for resource in synth.resources("AWS::EC2::Instance").values():
        assert "KeyName" not in resource["Properties"]
    for resource in synth.resources("AWS::EC2::LaunchTemplate").values():
        assert "KeyName" not in resource["Properties"]["LaunchTemplateData"]
    assert not synth.resources("AWS::EC2::KeyPair")


def _metadata_options(synth):
    """The metadata options each instance boots with: its launch template's, or its own."""
    for resource in synth.resources("AWS::EC2::LaunchTemplate").values():
        yield resource["Properties"]["LaunchTemplateData"].get("MetadataOptions", {})
    for resource in synth.resources("AWS::EC2::Instance").values():
        props = resource["Properties"]
        if "MetadataOptions" in props or "LaunchTemplate" not in props:
            yield props.get("MetadataOptions", {})


@pytest.mark.parametrize("number", ALL)
def test_instances_require_imdsv2_and_encrypted_volumes(synthesized, number):
    options = list(_metadata_options(synthesized[number]))
    assert options
    assert all(option.get("HttpTokens") == "required" for option in options)
    volumes = [
        device["Ebs"]
        for kind in ("AWS::EC2::Instance", "AWS::EC2::LaunchTemplate")
        for resource in synthesized[number].resources(kind).values()
        for device in resource["Properties"].get(
            "BlockDeviceMappings",
            resource["Properties"].get("LaunchTemplateData", {}).get("BlockDeviceMappings", []),
        )
    ]
    assert volumes
    assert all(volume["Encrypted"] is True for volume in volumes)


@pytest.mark.parametrize("number", ALL)
def test_the_app_container_reaches_imdsv2_because_the_hop_limit_is_two(synthesized, number):
    # The app runs in a container on the docker bridge, one hop past the instance: IMDSv2's token
    # answer needs a hop limit of 2 to reach it, or the app cannot read its secrets with the
    # instance role (AWS's default limit is 1).
    options = list(_metadata_options(synthesized[number]))
    assert options
    for option in options:
        assert option.get("HttpEndpoint") == "enabled"
        assert option.get("HttpTokens") == "required"
        assert option.get("HttpPutResponseHopLimit") == 2


@pytest.mark.parametrize("number", ALL)
def test_storage_is_encrypted_everywhere(synthesized, number):
    synth = synthesized[number]
    for db in synth.resources("AWS::RDS::DBInstance").values():
        props = db["Properties"]
        # Replicas inherit encryption from their (encrypted) source; CloudFormation forbids it.
        assert props.get("StorageEncrypted") is True or "SourceDBInstanceIdentifier" in props
    for bucket in synth.resources("AWS::S3::Bucket").values():
        assert bucket["Properties"]["BucketEncryption"]
        assert bucket["Properties"]["PublicAccessBlockConfiguration"]["BlockPublicAcls"] is True
    for group in synth.resources("AWS::ElastiCache::ReplicationGroup").values():
        assert group["Properties"]["AtRestEncryptionEnabled"] is True
        assert group["Properties"]["TransitEncryptionEnabled"] is True
    for queue in synth.resources("AWS::SQS::Queue").values():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True
    for table in synth.resources("AWS::DynamoDB::Table").values():
        assert table["Properties"]["SSESpecification"]["SSEEnabled"] is True


@pytest.mark.parametrize("number", ALL)
def test_no_password_is_written_into_the_template(synthesized, number):
    text = json.dumps(synthesized[number].template)
    assert "POSTGRES_PASSWORD=" not in text
    assert not re.search(
        r'"(MasterUserPassword|AuthToken)": "(?!\{\{resolve:secretsmanager:)', text
    )
    for group in synthesized[number].resources("AWS::ElastiCache::ReplicationGroup").values():
        assert "{{resolve:secretsmanager:" in json.dumps(group["Properties"]["AuthToken"])


@pytest.mark.parametrize("number", ALL)
def test_log_groups_have_a_retention_and_the_vpc_has_flow_logs(synthesized, number):
    synth = synthesized[number]
    for group in synth.resources("AWS::Logs::LogGroup").values():
        assert group["Properties"]["RetentionInDays"] <= 30
    assert len(synth.resources("AWS::EC2::FlowLog")) == 1
