"""The Application Load Balancer: public, across the VPC's 2 AZs, health checks on /healthz."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_s3 as s3
from constructs import Construct

from ..nag import acknowledge
from ..stages import GRACEFUL_SHUTDOWN_S
from .compute import HOST_PORT


class LoadBalancer(Construct):
    def __init__(
        self, scope: Construct, id: str, *, vpc: ec2.IVpc, logs_bucket: s3.IBucket
    ) -> None:
        super().__init__(scope, id)
        self._vpc = vpc
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Load balancer: HTTP from anywhere, to the app port only",
            allow_all_outbound=False,
        )
        self.security_group.add_ingress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(80), "HTTP")
        acknowledge(
            self.security_group,
            id="AwsSolutions-EC23",
            reason="The load balancer is the public entry point of the shop: port 80 must be "
            "open to every client of the load test.",
        )
        self.alb = elbv2.ApplicationLoadBalancer(
            self,
            "Alb",
            vpc=vpc,
            internet_facing=True,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
            security_group=self.security_group,
            drop_invalid_header_fields=True,
        )
        self.alb.log_access_logs(logs_bucket, prefix="alb")
        self.listener = self.alb.add_listener("Http", port=80, open=False)

    def target_group(self, id: str) -> elbv2.ApplicationTargetGroup:
        """A target group whose deregistration delay matches the app's graceful shutdown.

        The health check is the liveness route: readiness (/readyz) fails when the database
        is down, and an Auto Scaling group that trusted it would replace every healthy
        instance during a database failover.
        """
        return elbv2.ApplicationTargetGroup(
            self,
            id,
            vpc=self._vpc,
            port=HOST_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            target_type=elbv2.TargetType.INSTANCE,
            deregistration_delay=Duration.seconds(GRACEFUL_SHUTDOWN_S),
            health_check=elbv2.HealthCheck(
                path="/healthz",
                healthy_http_codes="200",
                interval=Duration.seconds(10),
                timeout=Duration.seconds(5),
                healthy_threshold_count=2,
                unhealthy_threshold_count=3,
            ),
        )

    @property
    def url(self) -> str:
        return f"http://{self.alb.load_balancer_dns_name}"
