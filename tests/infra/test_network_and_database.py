"""Operations: VPC endpoints where there is a NAT gateway, Performance Insights on RDS."""

from __future__ import annotations

import json

import pytest
from shop_infra.constructs.network import CIDR, INTERFACE_ENDPOINTS
from shop_infra.stages import STAGES

WITH_NAT = [s.number for s in STAGES if s.nat_gateways]
WITHOUT_NAT = [s.number for s in STAGES if not s.nat_gateways]
WITH_RDS = [s.number for s in STAGES if s.database]
INTERFACES = {"ecr.api", "ecr.dkr", "logs", "secretsmanager", "ssm"}
GATEWAYS = {"s3", "dynamodb"}


def _service(endpoint) -> str:
    """The service part of an endpoint's name: com.amazonaws.<region>.<service>."""
    name = endpoint["Properties"]["ServiceName"]
    if isinstance(name, dict):  # gateways: com.amazonaws.${AWS::Region}.<service>
        return str(name["Fn::Join"][1][-1]).lstrip(".")
    return str(name).split(".", 3)[3]


def _app_subnets(synth) -> set[str]:
    return {k for k in synth.resources("AWS::EC2::Subnet") if "App" in k}


@pytest.mark.parametrize("number", WITH_NAT)
def test_instances_reach_aws_services_through_endpoints_not_the_nat_gateway(synthesized, number):
    synth = synthesized[number]
    endpoints = list(synth.resources("AWS::EC2::VPCEndpoint").values())
    interfaces = [e for e in endpoints if e["Properties"]["VpcEndpointType"] == "Interface"]
    gateways = [e for e in endpoints if e["Properties"]["VpcEndpointType"] == "Gateway"]
    assert (
        {_service(e) for e in interfaces}
        == INTERFACES
        == {e.service.short_name for e in INTERFACE_ENDPOINTS}
    )
    assert {_service(e) for e in gateways} == GATEWAYS
    app = _app_subnets(synth)
    for endpoint in interfaces:
        props = endpoint["Properties"]
        assert props["PrivateDnsEnabled"] is True  # the usual names resolve to the endpoint
        assert {ref["Ref"] for ref in props["SubnetIds"]} == app  # one interface per AZ
    app_route_tables = {k for k in synth.resources("AWS::EC2::RouteTable") if "App" in k}
    for endpoint in gateways:
        tables = {ref["Ref"] for ref in endpoint["Properties"]["RouteTableIds"]}
        assert tables == app_route_tables


@pytest.mark.parametrize("number", WITH_NAT)
def test_the_endpoints_take_https_from_inside_the_vpc_only(synthesized, number):
    synth = synthesized[number]
    groups = {
        ref["Fn::GetAtt"][0]
        for e in synth.resources("AWS::EC2::VPCEndpoint").values()
        for ref in e["Properties"].get("SecurityGroupIds", [])
    }
    assert len(groups) == 1
    [group] = groups
    rules = synth.template["Resources"][group]["Properties"]["SecurityGroupIngress"]
    assert rules == [
        {
            "CidrIp": CIDR,
            "Description": "HTTPS",
            "FromPort": 443,
            "IpProtocol": "tcp",
            "ToPort": 443,
        }
    ]


@pytest.mark.parametrize("number", WITHOUT_NAT)
def test_stages_without_a_nat_gateway_pay_for_no_endpoint(synthesized, number):
    assert not synthesized[number].resources("AWS::EC2::VPCEndpoint")


@pytest.mark.parametrize("number", WITH_RDS)
def test_every_database_instance_has_performance_insights(synthesized, number):
    instances = synthesized[number].resources("AWS::RDS::DBInstance").values()
    assert instances
    for instance in instances:
        props = instance["Properties"]
        assert props["EnablePerformanceInsights"] is True
        assert props["PerformanceInsightsRetentionPeriod"] == 7  # the free tier


@pytest.mark.parametrize("number", WITH_RDS)
def test_the_database_secret_names_the_database_rds_creates(synthesized, number):
    """Every primary's: main's, and from stage 8 those of the federated databases and shards."""
    synth = synthesized[number]
    primaries = {
        logical_id: r["Properties"]
        for logical_id, r in synth.resources("AWS::RDS::DBInstance").items()
        if "SourceDBInstanceIdentifier" not in r["Properties"]
    }
    attachments = synth.resources("AWS::SecretsManager::SecretTargetAttachment").values()
    assert len(attachments) == len(primaries)
    for attachment in attachments:
        primary = primaries[attachment["Properties"]["TargetId"]["Ref"]]
        secret = synth.template["Resources"][attachment["Properties"]["SecretId"]["Ref"]]
        template = json.loads(secret["Properties"]["GenerateSecretString"]["SecretStringTemplate"])
        assert template == {"username": "shop", "dbname": primary["DBName"]}
        assert primary["DBName"] == "shop"


@pytest.mark.parametrize("number", WITH_RDS)
def test_postgresql_is_pinned_to_its_major_version_only(synthesized, number):
    """RDS retires minor versions on a schedule; a pinned minor would fail a later deploy."""
    instances = synthesized[number].resources("AWS::RDS::DBInstance").values()
    versions = {
        instance["Properties"].get("EngineVersion")
        for instance in instances
        if "SourceDBInstanceIdentifier" not in instance["Properties"]
    }
    assert versions == {"17"}
    for instance in instances:  # replicas take the primary's version, and name no other
        assert instance["Properties"].get("EngineVersion") in (None, "17")
