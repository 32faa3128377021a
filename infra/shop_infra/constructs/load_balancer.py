"""The Application Load Balancer across the VPC's 2 AZs, health checks on /healthz.

Public (stages 3-4: it is the shop's entry point), with HTTPS and a redirect from HTTP when the
stack has a certificate; internal (stages 5-7: CloudFront's VPC origin is the only way in, so the
CDN cannot be bypassed and no request crosses the internet between CloudFront and the origin).

Every listener answers 404 for the app's Prometheus endpoint, ahead of its forward or redirect:
/metrics is scraped from the instance itself (SSM port forwarding), never through the internet.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_s3 as s3
from constructs import Construct

from ..nag import acknowledge
from ..stages import GRACEFUL_SHUTDOWN_S, METRICS_PATH
from .compute import HOST_PORT

PRIVATE_METRICS_PRIORITY = 1
PRIVATE_METRICS_PATTERNS = [METRICS_PATH, f"{METRICS_PATH}/*"]

ENCODED_METRICS_PRIORITY = 2
ENCODED_METRICS_REGEX = "^/(m|%6[dD])(e|%65)(t|%74)(r|%72)(i|%69)(c|%63)(s|%73)(/.*|%2[fF].*)?$"
"""/metrics with any of its letters (or the slash after it) percent-encoded. The app's server
decodes the path before routing, so /%6Detrics reaches /metrics; a listener rule compares the
path as sent, and its plain path patterns allow no '%', so a regular expression catches these."""

NOT_FOUND = "Not Found"


class LoadBalancer(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc: ec2.IVpc,
        logs_bucket: s3.IBucket,
        internet_facing: bool,
        subnets: ec2.SubnetSelection,
        certificate: acm.ICertificate | None = None,
    ) -> None:
        super().__init__(scope, id)
        self._vpc = vpc
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description=(
                "Load balancer: HTTP(S) from anywhere, to the app port only"
                if internet_facing
                else "Load balancer: from the CloudFront VPC origin only, to the app port only"
            ),
            allow_all_outbound=False,
        )
        if internet_facing:
            ports = [80, 443] if certificate else [80]
            for port in ports:
                self.security_group.add_ingress_rule(
                    ec2.Peer.any_ipv4(), ec2.Port.tcp(port), "HTTPS" if port == 443 else "HTTP"
                )
            acknowledge(
                self.security_group,
                id="AwsSolutions-EC23",
                reason="Stages 3-4 have no CDN: the load balancer is the shop's public entry "
                "point and must take every load-test client; only 80 (a redirect when there is "
                "a certificate) and 443 are open, and it forwards to the app port only.",
            )
        self.alb = elbv2.ApplicationLoadBalancer(
            self,
            "Alb",
            vpc=vpc,
            internet_facing=internet_facing,
            vpc_subnets=subnets,
            security_group=self.security_group,
            drop_invalid_header_fields=True,
        )
        self.alb.log_access_logs(logs_bucket, prefix="alb")
        self.https = certificate is not None
        if certificate is None:
            self.listener = self.alb.add_listener("Http", port=80, open=False)
            self.listeners = [self.listener]
        else:
            self.listener = self.alb.add_listener(
                "Https",
                port=443,
                certificates=[certificate],
                ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
                open=False,
            )
            redirect = self.alb.add_listener(
                "Http",
                port=80,
                open=False,
                default_action=elbv2.ListenerAction.redirect(
                    protocol="HTTPS", port="443", permanent=True
                ),
            )
            self.listeners = [self.listener, redirect]
        for listener in self.listeners:
            _hide_metrics(listener)

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
        """The load balancer's own name (a certificate names the stage's record instead)."""
        return f"http://{self.alb.load_balancer_dns_name}"


def _hide_metrics(listener: elbv2.ApplicationListener) -> None:
    """Answer 404 for /metrics on `listener`, ahead of its default action (forward, redirect)."""
    listener.add_action(
        "PrivateMetrics",
        priority=PRIVATE_METRICS_PRIORITY,
        conditions=[elbv2.ListenerCondition.path_patterns(PRIVATE_METRICS_PATTERNS)],
        action=elbv2.ListenerAction.fixed_response(
            404, content_type="text/plain", message_body=NOT_FOUND
        ),
    )
    # The L2 condition has no regular expressions: the rule is written at the CloudFormation level.
    elbv2.CfnListenerRule(
        listener,
        "EncodedMetricsRule",
        listener_arn=listener.listener_arn,
        priority=ENCODED_METRICS_PRIORITY,
        conditions=[
            elbv2.CfnListenerRule.RuleConditionProperty(
                field="path-pattern",
                path_pattern_config=elbv2.CfnListenerRule.PathPatternConfigProperty(
                    regex_values=[ENCODED_METRICS_REGEX]
                ),
            )
        ],
        actions=[
            elbv2.CfnListenerRule.ActionProperty(
                type="fixed-response",
                fixed_response_config=elbv2.CfnListenerRule.FixedResponseConfigProperty(
                    status_code="404", content_type="text/plain", message_body=NOT_FOUND
                ),
            )
        ],
    )
