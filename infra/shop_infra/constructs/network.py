"""The VPC: 2 AZs, public / private-with-egress / isolated subnets, endpoints, flow logs.

Where there is a NAT gateway (stages 3+), the instances reach the AWS services they use to boot
and serve through VPC endpoints instead: ECR (api and docker), CloudWatch Logs, Secrets Manager
and SSM as interface endpoints, S3 (image layers, Amazon Linux packages, the assets bucket) and
DynamoDB (carts) as free gateway endpoints. That takes image pulls and logs off the NAT
gateway's per-GB charge, and keeps the instances of an AZ serving when the AZ that holds the
single NAT gateway of stages 3 to 5 is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

AZS = 2
CIDR = "10.0.0.0/16"


@dataclass(frozen=True)
class Endpoint:
    id: str
    service: ec2.InterfaceVpcEndpointAwsService
    why: str


INTERFACE_ENDPOINTS = (
    Endpoint("EcrApi", ec2.InterfaceVpcEndpointAwsService.ECR, "registry login"),
    Endpoint("EcrDocker", ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER, "image manifests"),
    Endpoint("Logs", ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS, "container logs"),
    Endpoint("SecretsManager", ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER, "secrets"),
    Endpoint("Ssm", ec2.InterfaceVpcEndpointAwsService.SSM, "SSM agent"),
)
"""One endpoint network interface per AZ each: the cost table counts them (cost.py)."""


class Network(Construct):
    def __init__(self, scope: Construct, id: str, *, nat_gateways: int) -> None:
        super().__init__(scope, id)
        subnets = [
            ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
            ec2.SubnetConfiguration(
                name="Data", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24
            ),
        ]
        if nat_gateways:
            # Without a NAT gateway there can be no private-with-egress subnet (stages 1-2,
            # where the one instance sits in a public subnet behind its Elastic IP).
            subnets.insert(
                1,
                ec2.SubnetConfiguration(
                    name="App", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=22
                ),
            )
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(CIDR),
            max_azs=AZS,
            nat_gateways=nat_gateways,
            subnet_configuration=subnets,
        )
        if nat_gateways:
            self._endpoints()
        flow_logs = logs.LogGroup(
            self,
            "FlowLogs",
            retention=logs.RetentionDays.ONE_WEEK,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )

    def _endpoints(self) -> None:
        app = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        for service, id in (
            (ec2.GatewayVpcEndpointAwsService.S3, "S3"),
            (ec2.GatewayVpcEndpointAwsService.DYNAMODB, "DynamoDb"),
        ):
            self.vpc.add_gateway_endpoint(id, service=service, subnets=[app])
        # HTTPS from inside the VPC only (the CIDR as a literal, which cdk-nag can check).
        security_group = ec2.SecurityGroup(
            self,
            "EndpointsSecurityGroup",
            vpc=self.vpc,
            description="VPC interface endpoints: HTTPS from inside the VPC only",
            allow_all_outbound=False,
        )
        security_group.add_ingress_rule(ec2.Peer.ipv4(CIDR), ec2.Port.tcp(443), "HTTPS")
        for endpoint in INTERFACE_ENDPOINTS:
            # Private DNS: the SDKs and the docker daemon use the usual names, unchanged.
            self.vpc.add_interface_endpoint(
                endpoint.id,
                service=endpoint.service,
                subnets=app,
                private_dns_enabled=True,
                security_groups=[security_group],
                open=False,
            )

    @property
    def app_subnets(self) -> ec2.SubnetSelection:
        """Where app instances go: private when there is a NAT gateway, else public."""
        if self.vpc.private_subnets:
            return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)

    @property
    def data_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
