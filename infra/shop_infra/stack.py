"""ShopStack: one stage of the ladder, composed from the catalog entry and the constructs.

Every decision is taken here, at synth time, from the `Stage` data; the constructs only build what
they are told. The stack's one contract with the load tests is its `TargetUrl` output, exported as
`<stack name>-TargetUrl`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from aws_cdk import (
    Aws,
    CfnCondition,
    CfnMapping,
    CfnOutput,
    CfnParameter,
    CfnRule,
    CfnRuleAssertion,
    Duration,
    Fn,
    RemovalPolicy,
    Stack,
    Token,
)
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_route53_targets as route53_targets
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from .constructs import agent
from .constructs.cache import Cache
from .constructs.compute import (
    WORKER_COMMAND,
    ContainerTier,
    instances,
    scaling_group,
    web_command,
)
from .constructs.database import Database
from .constructs.edge import Edge
from .constructs.load_balancer import LoadBalancer
from .constructs.network import Network
from .constructs.observability import Observability, add_cost_tag, metric, worst
from .constructs.proxy import ReverseProxy
from .constructs.queue import OrderQueue, check_mail_sender
from .constructs.teardown import leave_nothing_behind
from .nag import acknowledge
from .stages import (
    GRACEFUL_SHUTDOWN_S,
    HTTP_KEEPALIVE_S,
    LOAD_BALANCER_IDLE_TIMEOUT_S,
    Stage,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_EXCLUDES = [
    ".git",
    ".venv",
    "**/cdk.out",
    "**/__pycache__",
    "**/.pytest_cache",
    "**/.ruff_cache",
    "**/.mypy_cache",
    "**/node_modules",
    "infra",
    "tests",
    "loadtests",
]
"""Kept out of the image build context even without a .dockerignore (synth copies the context)."""

DOCKER_NETWORKS = "172.16.0.0/12"
"""Where docker puts the box's container networks (the proxy reaches the app from there)."""

COLOURS = ("blue", "green")
SHIFT_STEPS = (0, 10, 50, 100)
"""Percent of the traffic a blue/green shift may send to the idle colour, one deploy per step."""
ROLLBACK_MONITORING_MINUTES = 10
"""How long CloudFormation keeps watching a shift's rollback triggers after the step is done."""
CART_ACTIONS = [
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
]
"""What the web tier does with a cart: one item, by its key."""
WEB_ONLY_SETTINGS = (
    "SHOP_JWT_SECRET_ARN",
    "SHOP_CARTS_TABLE",
    "SHOP_ASSETS_BUCKET",
    "SHOP_ASSETS_BASE_URL",
)
"""Settings of the web tier's own resources, which workers are given no access to."""
DEFAULT_REGION = "us-east-1"
"""The region of the README's cost table, and of the tests' synth."""
REPLICA_LAG_ALARM_S = 5
"""Seconds a read replica may fall behind its primary before its alarm fires: the app's own
limit (SHOP_DATABASE_REPLICA_MAX_LAG_S), past which it takes the replica out of its reads."""


def _replica_lag(database: Database) -> list[cloudwatch.IMetric]:
    """ReplicaLag of each of the database's read replicas, in replica order."""
    return [
        metric("AWS/RDS", "ReplicaLag", {"DBInstanceIdentifier": r.instance_identifier})
        for r in database.replicas
    ]


def _words(construct_id: str) -> str:
    """A construct id as words: OrderShard2 -> order shard 2."""
    return " ".join(re.findall(r"[A-Z][a-z]*|[0-9]+", construct_id)).lower()


def _protocol(stage: Stage, *, https: bool) -> str:
    if stage.edge:
        certificate = "an ACM certificate" if https else "its default certificate"
        return (
            f"HTTPS at CloudFront ({certificate}); the load balancer is internal and "
            "reached only through CloudFront's VPC origin"
        )
    if https and stage.load_balanced:
        return "HTTPS with an ACM certificate; HTTP redirects to HTTPS"
    if https:
        return (
            "HTTPS from Caddy on the box, with a Let's Encrypt certificate it obtains once the "
            "DNS record resolves (minutes after the deploy); HTTP redirects to HTTPS"
        )
    if stage.load_balanced:
        return "plain HTTP: pass -c shop:hosted_zone=<zone> for HTTPS"
    return (
        "plain HTTP (Caddy on the box, port 80): pass -c shop:hosted_zone=<zone> for HTTPS "
        "with a Let's Encrypt certificate"
    )


def _scale_on_backlog(
    group: autoscaling.AutoScalingGroup, *, queue: sqs.IQueue, backlog_per_instance: int
) -> None:
    """Target tracking on the backlog per worker, the EC2 Auto Scaling guide's recipe for SQS.

    (visible + in-flight messages) / in-service instances is held at `backlog_per_instance`:
    in-flight messages count, so workers busy with a burst are not removed under it, and
    target tracking scales in only after its own low alarm has held for 15 minutes, instead of
    a scale-in alarm that fires whenever the workers keep up. aws-cdk-lib's target tracking
    takes no metric math, so the policy is written at the CloudFormation level.
    """
    policy = autoscaling.CfnScalingPolicy

    def statistic(
        query_id: str, namespace: str, name: str, dimension: str, value: str, stat: str
    ) -> autoscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty:
        return policy.TargetTrackingMetricDataQueryProperty(
            id=query_id,
            metric_stat=policy.TargetTrackingMetricStatProperty(
                metric=policy.MetricProperty(
                    namespace=namespace,
                    metric_name=name,
                    dimensions=[policy.MetricDimensionProperty(name=dimension, value=value)],
                ),
                stat=stat,
            ),
            return_data=False,
        )

    queue_name = queue.queue_name
    group_name = group.auto_scaling_group_name
    policy(
        group,
        "BacklogPerInstance",
        auto_scaling_group_name=group_name,
        policy_type="TargetTrackingScaling",
        target_tracking_configuration=policy.TargetTrackingConfigurationProperty(
            target_value=backlog_per_instance,
            customized_metric_specification=policy.CustomizedMetricSpecificationProperty(
                metrics=[
                    statistic(
                        "visible",
                        "AWS/SQS",
                        "ApproximateNumberOfMessagesVisible",
                        "QueueName",
                        queue_name,
                        "Sum",
                    ),
                    statistic(
                        "inflight",
                        "AWS/SQS",
                        "ApproximateNumberOfMessagesNotVisible",
                        "QueueName",
                        queue_name,
                        "Sum",
                    ),
                    statistic(
                        "workers",
                        "AWS/AutoScaling",
                        "GroupInServiceInstances",
                        "AutoScalingGroupName",
                        group_name,
                        "Average",
                    ),
                    policy.TargetTrackingMetricDataQueryProperty(
                        id="backlog",
                        expression="(visible + inflight) / workers",
                        label="Orders queued or in flight per in-service worker",
                        return_data=True,
                    ),
                ]
            ),
        ),
    )


class ShopStack(Stack):
    def __init__(
        self,
        scope: Construct,
        *,
        stage: Stage,
        image_directory: Path = REPO_ROOT,
        hosted_zone: str | None = None,
        mail_sender: str | None = None,
        alarm_email: str | None = None,
        first_deploy: bool = False,
        **kwargs: object,
    ) -> None:
        """`first_deploy` (context shop:first_deploy) drops the Rule that refuses to leave both
        blue/green colours unpinned: only a stack that runs nothing yet may do that."""
        if stage.workers is not None and mail_sender is not None:
            check_mail_sender(mail_sender)  # before anything is built: one clear error
        super().__init__(
            scope,
            stage.stack_id,
            description=f"Shop stage {stage.number} ({stage.name}): {stage.summary}",
            **kwargs,  # type: ignore[arg-type]
        )
        self.stage = stage
        self.first_deploy = first_deploy
        self.target_groups: list[tuple[elbv2.ApplicationTargetGroup, str]] = []
        """The blue/green colours' target groups, each with its group's minimum size (a token):
        their health gates a shift."""
        add_cost_tag(self, stage.name)  # every taggable resource says which stage it is
        network = Network(self, "Network", nat_gateways=stage.nat_gateways)
        vpc = network.vpc
        image = ecr_assets.DockerImageAsset(
            self,
            "Image",
            directory=str(image_directory),
            platform=ecr_assets.Platform.LINUX_AMD64,
            exclude=IMAGE_EXCLUDES,
        )
        jwt_secret = secretsmanager.Secret(
            self,
            "JwtSecret",
            description="JWT signing key (SHOP_JWT_SECRET_ARN)",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=64, exclude_punctuation=True
            ),
        )
        env: dict[str, str] = {
            "SHOP_ENV": "production",
            "SHOP_AWS_REGION": Aws.REGION,
            "SHOP_JWT_SECRET_ARN": jwt_secret.secret_arn,
            "SHOP_GRACEFUL_SHUTDOWN_S": str(GRACEFUL_SHUTDOWN_S),
            # Above the load balancer's idle timeout, so that the load balancer closes idle
            # connections first (else a request racing the app's close is answered 502).
            "SHOP_HTTP_KEEPALIVE_S": str(HTTP_KEEPALIVE_S),
            # Whatever talks to the app from inside the VPC is a proxy of ours (the load
            # balancer, CloudFront's VPC origin, Caddy on the box's docker network), so the
            # client address is the last X-Forwarded-For entry none of them added: what the
            # sign-in limit counts failures by, instead of one budget for the whole proxy.
            "SHOP_FORWARDED_ALLOW_IPS": Fn.join(
                ",", [vpc.vpc_cidr_block, DOCKER_NETWORKS, "127.0.0.1"]
            ),
        }
        secrets: list[secretsmanager.ISecret] = [jwt_secret]

        # --- data tier -----------------------------------------------------------------------
        on_box_secret = None
        database = cache = None
        if stage.database is None:
            on_box_secret = secretsmanager.Secret(
                self,
                "DatabaseCredentials",
                description="PostgreSQL on the box (SHOP_DATABASE_SECRET_ARN, RDS format)",
                generate_secret_string=secretsmanager.SecretStringGenerator(
                    secret_string_template=json.dumps(
                        {
                            "engine": "postgres",
                            "host": "postgres",
                            "port": 5432,
                            "username": "shop",
                            "dbname": "shop",
                        }
                    ),
                    generate_string_key="password",
                    exclude_punctuation=True,
                    password_length=32,
                ),
            )
            secrets.append(on_box_secret)
            env["SHOP_DATABASE_SECRET_ARN"] = on_box_secret.secret_arn
            env["SHOP_REDIS_URL"] = "redis://redis:6379/0"
        else:
            database = Database(
                self, "Database", spec=stage.database, vpc=vpc, subnets=network.data_subnets
            )
            secrets.append(database.secret)
            env["SHOP_DATABASE_SECRET_ARN"] = database.secret.secret_arn
            if database.replicas:
                env["SHOP_DATABASE_REPLICA_HOSTS"] = Fn.join(",", database.replica_hosts)
        split = self._split_databases(vpc=vpc, subnets=network.data_subnets)
        for each in split.values():
            secrets.append(each.secret)
        if "AccountingDatabase" in split:
            accounting, delivery = split["AccountingDatabase"], split["DeliveryDatabase"]
            env["SHOP_ACCOUNTING_DATABASE_SECRET_ARN"] = accounting.secret.secret_arn
            env["SHOP_DELIVERY_DATABASE_SECRET_ARN"] = delivery.secret.secret_arn
        shards = [each for key, each in split.items() if key.startswith("OrderShard")]
        if shards:
            # In shard order: the app numbers the shards by their place in this list.
            env["SHOP_ORDER_SHARD_SECRET_ARNS"] = Fn.join(
                ",", [s.secret.secret_arn for s in shards]
            )
        if any(s.replicas for s in shards):
            # One group per shard, in the same order, of its replicas' host:port; they share
            # their shard's secret's credentials, as main's replicas share main's.
            env["SHOP_ORDER_SHARD_REPLICA_HOSTS"] = Fn.join(
                ";", [Fn.join(",", s.replica_endpoints) for s in shards]
            )
        # Every database the app tiers reach. Referencing each database's secret attachment in
        # the boot script makes the instances (and so `shop migrate`) wait for all of them, and
        # referencing each replica's endpoint (main's, the shards') waits for the replicas.
        databases = [*([database] if database else []), *split.values()]
        if stage.cache is not None:
            cache = Cache(self, "Cache", spec=stage.cache, vpc=vpc, subnets=network.data_subnets)
            secrets.append(cache.auth_secret)
            env["SHOP_REDIS_URL"] = cache.url
            env["SHOP_REDIS_AUTH_SECRET_ARN"] = cache.auth_secret.secret_arn
        for secret in [jwt_secret, on_box_secret, cache.auth_secret if cache else None]:
            if secret is None:
                continue
            acknowledge(
                secret,
                id="AwsSolutions-SMG4",
                reason="A stage stack lives for one load-test session (hours) and is destroyed; "
                "a rotation schedule (30 days at most) would never fire, and rotating the "
                "on-box or cache secret needs a rotation Lambda inside the VPC for nothing.",
            )

        # --- entry point: DNS, load balancer, CDN ---------------------------------------------
        zone = record_name = certificate = None
        if hosted_zone:
            zone = route53.HostedZone.from_lookup(self, "Zone", domain_name=hosted_zone)
            record_name = f"{stage.name}.{hosted_zone}"
            # The single box (stages 1-2) has no load balancer or CDN to hold an ACM certificate:
            # its reverse proxy gets one from Let's Encrypt (see proxy.py).
            if stage.load_balanced:
                if stage.edge and self.region != "us-east-1":
                    raise ValueError("a CloudFront certificate must be in us-east-1")
                certificate = acm.Certificate(
                    self,
                    "Certificate",
                    domain_name=record_name,
                    validation=acm.CertificateValidation.from_dns(zone),
                )
        load_balancer = logs_bucket = None
        if stage.load_balanced:
            logs_bucket = s3.Bucket(
                self,
                "AccessLogs",
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                encryption=s3.BucketEncryption.S3_MANAGED,
                enforce_ssl=True,
                # CloudFront's standard logs are delivered with an ACL.
                object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
                lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(30))],
                removal_policy=RemovalPolicy.DESTROY,
                auto_delete_objects=True,
            )
            acknowledge(
                logs_bucket,
                id="AwsSolutions-S1",
                reason="This is the access-log bucket itself (load balancer, CloudFront and S3 "
                "access logs land here); logging it into itself would loop.",
            )
            # Behind CloudFront (stages 5-7) the load balancer is internal: the CDN is the only
            # way in. Before that it is the public entry point, with HTTPS when there is a zone.
            load_balancer = LoadBalancer(
                self,
                "LoadBalancer",
                vpc=vpc,
                logs_bucket=logs_bucket,
                internet_facing=not stage.edge,
                subnets=network.app_subnets
                if stage.edge
                else ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
                certificate=None if stage.edge else certificate,
            )
            # Explicit, and derived with the app's keep-alive from one constant (stages.py).
            load_balancer.alb.set_attribute(
                "idle_timeout.timeout_seconds", str(LOAD_BALANCER_IDLE_TIMEOUT_S)
            )
        edge = None
        if stage.edge:
            assert load_balancer is not None and logs_bucket is not None
            edge = Edge(
                self,
                "Edge",
                vpc=vpc,
                load_balancer=load_balancer.alb,
                logs_bucket=logs_bucket,
                domain_name=record_name if certificate else None,
                certificate=certificate,
            )
            env["SHOP_CARTS_TABLE"] = edge.carts.table_name
            env["SHOP_ASSETS_BUCKET"] = edge.assets.bucket_name
            env["SHOP_ASSETS_BASE_URL"] = f"https://{record_name}" if zone else edge.url
        queue = None
        if stage.workers is not None:
            queue = OrderQueue(self, "Orders", mail_sender=mail_sender)
            env["SHOP_QUEUE_URL"] = queue.queue.queue_url
            if mail_sender is not None:  # else the app logs its mail instead of sending it
                env["SHOP_MAIL_SENDER"] = mail_sender

        # --- web tier --------------------------------------------------------------------------
        # A single box's only public listener is its reverse proxy: TLS with a hosted zone, and
        # no /metrics (the load balancer's listener rules do that from stage 3).
        proxy = None if stage.load_balanced else ReverseProxy(domain=record_name)
        web = ContainerTier(
            self,
            "Web",
            vpc=vpc,
            repository=image.repository,
            environment=env,
            command=web_command(stage.fleet.workers, publish_assets=stage.edge),
            publish=True,
            on_box_secret=on_box_secret,
            proxy=proxy,
        )
        self._grant_app(web, secrets=secrets, edge=edge)
        if queue is not None:
            # The web tier enqueues orders; the mail is sent by the workers, not here.
            queue.queue.grant_send_messages(web.role)
        fleet = stage.fleet
        observability = Observability(
            self,
            "Observability",
            title=f"Shop stage {stage.number}: {stage.name}",
            alarm_email=alarm_email,
        )
        web_cpu = []
        web_groups: list[autoscaling.AutoScalingGroup] = []
        hosts: list[dict[str, str]] = []
        """The dimensions of each group's (or the box's) memory and disk metrics."""
        target_url: str
        if load_balancer is None:
            [box] = instances(
                self,
                tier=web,
                vpc=vpc,
                subnets=network.app_subnets,
                instance_type=fleet.instance_type,
                count=1,
                volume_gib=fleet.volume_gib,
                image_uri=image.image_uri,
            )
            assert proxy is not None
            for port in proxy.ports:
                web.security_group.add_ingress_rule(
                    ec2.Peer.any_ipv4(),
                    ec2.Port.tcp(port),
                    "HTTPS (Caddy)" if port == 443 else "HTTP (Caddy)",
                )
            acknowledge(
                web.security_group,
                id="AwsSolutions-EC23",
                reason="Stages 1-2 have no load balancer: the box's reverse proxy is the public "
                "entry point and must take every load-test client. Only port 80 is open, and "
                "443 with a hosted zone (HTTPS; 80 then redirects and answers the certificate "
                "challenge); the app's own port is bound to the instance's loopback.",
            )
            address = ec2.CfnEIP(self, "Address", domain="vpc", instance_id=box.instance_id)
            target_url = f"http://{address.ref}"
            if zone is not None:
                route53.ARecord(
                    self,
                    "Record",
                    zone=zone,
                    record_name=record_name,
                    target=route53.RecordTarget.from_ip_addresses(address.ref),
                    ttl=Duration.minutes(1),
                )
                target_url = f"https://{record_name}"
            web_cpu.append(metric("AWS/EC2", "CPUUtilization", {"InstanceId": box.instance_id}))
            hosts.append({"InstanceId": box.instance_id})
        else:
            web.security_group.connections.allow_from(
                load_balancer.alb, ec2.Port.tcp(80), "HTTP from the load balancer"
            )
            if not fleet.auto_scaling:
                # A group of fixed size rather than plain instances: its rolling update
                # replaces one instance at a time behind its /healthz signal, while plain
                # instances were replaced together and swapped in the target group at once.
                fixed = scaling_group(
                    self,
                    "WebGroup",
                    tier=web,
                    vpc=vpc,
                    subnets=network.app_subnets,
                    instance_type=fleet.instance_type,
                    min_size=fleet.min_size,
                    max_size=fleet.max_size,
                    volume_gib=fleet.volume_gib,
                    image_uri=image.image_uri,
                    elb_health_check=True,
                )
                target_group = load_balancer.target_group("Targets")
                fixed.attach_to_application_target_group(target_group)
                load_balancer.listener.add_target_groups("Default", target_groups=[target_group])
                web_groups = [fixed]
                web_cpu.append(
                    metric(
                        "AWS/EC2",
                        "CPUUtilization",
                        {"AutoScalingGroupName": fixed.auto_scaling_group_name},
                    )
                )
            else:
                groups = web_groups = self._blue_green(
                    web=web,
                    load_balancer=load_balancer,
                    network=network,
                    image=image,
                    blue_green=fleet.blue_green,
                )
                for asg in groups:
                    web_cpu.append(
                        metric(
                            "AWS/EC2",
                            "CPUUtilization",
                            {"AutoScalingGroupName": asg.auto_scaling_group_name},
                        )
                    )
                observability.alarm(
                    "FleetAtMaximum",
                    worst(
                        "In-service instances (highest group)",
                        [
                            metric(
                                "AWS/AutoScaling",
                                "GroupInServiceInstances",
                                {"AutoScalingGroupName": asg.auto_scaling_group_name},
                                statistic="Maximum",
                            )
                            for asg in groups
                        ],
                    ),
                    threshold=fleet.max_size,
                    description="The web fleet is at its maximum size: scaling out no longer "
                    "helps, the next bottleneck is behind it.",
                    evaluation_periods=5,
                )
            target_url = edge.url if edge else load_balancer.url
            if zone is not None:
                alias: route53.IAliasRecordTarget = (
                    route53_targets.CloudFrontTarget(edge.distribution)
                    if edge
                    else route53_targets.LoadBalancerTarget(load_balancer.alb)
                )
                route53.ARecord(
                    self,
                    "Record",
                    zone=zone,
                    record_name=record_name,
                    target=route53.RecordTarget.from_alias(alias),
                )
                target_url = f"{'https' if certificate else 'http'}://{record_name}"
        hosts += [{"AutoScalingGroupName": g.auto_scaling_group_name} for g in web_groups]
        for each in databases:
            each.allow_from(web.security_group)
        if cache is not None:
            cache.allow_from(web.security_group)

        # --- workers (stage 7) ----------------------------------------------------------------
        if stage.workers is not None:
            assert queue is not None
            spec = stage.workers
            workers = ContainerTier(
                self,
                "Workers",
                vpc=vpc,
                repository=image.repository,
                environment={k: v for k, v in env.items() if k not in WEB_ONLY_SETTINGS},
                command=WORKER_COMMAND,
                publish=False,
            )
            # Workers consume orders and send mail; the web tier's grants (the JWT key, carts,
            # assets, enqueueing) are not theirs.
            for secret in secrets:
                if secret is not jwt_secret:
                    secret.grant_read(workers.role)
            queue.queue.grant_consume_messages(workers.role)
            send_mail = queue.send_mail_statement()
            if send_mail is not None:
                workers.grant(send_mail)
            for each in databases:
                each.allow_from(workers.security_group)
            if cache is not None:
                cache.allow_from(workers.security_group)
            worker_group = scaling_group(
                self,
                "WorkerGroup",
                tier=workers,
                vpc=vpc,
                subnets=network.app_subnets,
                instance_type=spec.instance_type,
                min_size=spec.min_size,
                max_size=spec.max_size,
                volume_gib=stage.fleet.volume_gib,
                image_uri=self._pinned_image("Worker", image, what="the workers"),
                elb_health_check=False,
            )
            # The schema first: each web group's creation and rolling update wait for an
            # instance that has run `shop migrate` and answers /healthz, and workers of the new
            # version start only after that, rather than racing the migration and exiting.
            worker_group.node.add_dependency(*web_groups)
            hosts.append({"AutoScalingGroupName": worker_group.auto_scaling_group_name})
            CfnOutput(self, "WorkerLogGroup", value=workers.log_group.log_group_name)
            _scale_on_backlog(
                worker_group, queue=queue.queue, backlog_per_instance=spec.messages_per_instance
            )

        self._observe(
            observability,
            web_cpu=web_cpu,
            load_balancer=load_balancer,
            database=database,
            split=split,
            cache=cache,
            queue=queue,
        )
        self._observe_agent(observability, hosts=hosts, workers=stage.workers is not None)
        if edge is not None:
            observability.edge(edge.distribution)
        CfnOutput(
            self,
            "TargetUrl",
            value=target_url,
            description="The URL to load-test (locust --host)",
            export_name=f"{self.stack_name}-TargetUrl",
        )
        CfnOutput(
            self,
            "Protocol",
            value=_protocol(
                stage, https=certificate is not None or (proxy is not None and proxy.https)
            ),
            description="How TargetUrl is served, and how to get HTTPS where it is not",
        )
        CfnOutput(self, "Dashboard", value=observability.dashboard.dashboard_name)
        CfnOutput(self, "AppLogGroup", value=web.log_group.log_group_name)
        leave_nothing_behind(self)

    # --- helpers ---------------------------------------------------------------------------------

    def _split_databases(
        self, *, vpc: ec2.IVpc, subnets: ec2.SubnetSelection
    ) -> dict[str, Database]:
        """Stage 8's databases beside main, by construct id: accounting and delivery (each
        module's own), then the order shards in shard order. Empty before stage 8.

        Each is built by the same construct as main, replicas included: each order shard has
        `stage.shard.read_replicas` of them (its customers' order reads); accounting and
        delivery have none (the catalog refuses them: the app reads those from their primaries).
        """
        stage = self.stage
        found: dict[str, Database] = {}
        if stage.federated is not None:
            for function in ("Accounting", "Delivery"):
                found[f"{function}Database"] = Database(
                    self,
                    f"{function}Database",
                    spec=stage.federated,
                    vpc=vpc,
                    subnets=subnets,
                    function=function,
                )
        if stage.shard is not None:
            for number in range(1, stage.order_shards + 1):
                found[f"OrderShard{number}"] = Database(
                    self,
                    f"OrderShard{number}",
                    spec=stage.shard,
                    vpc=vpc,
                    subnets=subnets,
                    function=f"orders-{number}",
                    first_zone=number - 1,
                )
        return found

    def _grant_app(
        self,
        tier: ContainerTier,
        *,
        secrets: list[secretsmanager.ISecret],
        edge: Edge | None,
    ) -> None:
        """What the web app may do: read its secrets, use the carts table and assets bucket.

        Carts are items read and written by key: no Scan, no Query, no stream reads.
        """
        for secret in secrets:
            secret.grant_read(tier.role)
        if edge is not None:
            tier.grant(
                iam.PolicyStatement(
                    actions=CART_ACTIONS,
                    resources=[edge.carts.table_arn],
                )
            )
            tier.grant(
                iam.PolicyStatement(
                    actions=["s3:GetObject", "s3:PutObject"],
                    resources=[edge.assets.arn_for_objects("*")],
                )
            )
            # `shop assets publish` lists what is already there, at every boot.
            tier.grant(
                iam.PolicyStatement(actions=["s3:ListBucket"], resources=[edge.assets.bucket_arn])
            )
            acknowledge(
                tier.role,
                id=f"AwsSolutions-IAM5[Resource::<{self._logical_id(edge.assets)}.Arn>/*]",
                reason="The app reads and writes the objects of the one assets bucket it serves "
                "static files from; object keys are not known in advance.",
            )

    def _logical_id(self, construct: Construct) -> str:
        return str(self.resolve(self.get_logical_id(construct.node.default_child)))  # type: ignore[arg-type]

    def _pinned_image(self, name: str, image: ecr_assets.DockerImageAsset, *, what: str) -> str:
        """`<name>Image`: the image URI `what` runs; empty means the image built by this deploy.

        CloudFormation keeps the previous value on the next `cdk deploy`; the output
        `<name>ImageInUse` says what runs now, ready to be passed back as the pin.
        """
        pinned = CfnParameter(
            self,
            f"{name}Image",
            default="",
            description=f"Image URI {what} runs; empty: the image built by this deploy",
        )
        builds = CfnCondition(
            self,
            f"{name}RunsBuild",
            expression=Fn.condition_equals(pinned.value_as_string, ""),
        )
        image_uri = Token.as_string(
            Fn.condition_if(builds.logical_id, image.image_uri, pinned.value_as_string)
        )
        CfnOutput(
            self,
            f"{name}ImageInUse",
            value=image_uri,
            description=f"Image {what} runs (pin it with {name}Image)",
        )
        return image_uri

    def _blue_green(
        self,
        *,
        web: ContainerTier,
        load_balancer: LoadBalancer,
        network: Network,
        image: ecr_assets.DockerImageAsset,
        blue_green: bool,
    ) -> list[autoscaling.AutoScalingGroup]:
        """Two colours behind one weighted listener; parameters move traffic and pin images.

        `LiveColour` (blue | green) is the colour that serves; the other is idle and keeps
        `IdleSize` instances. `ShiftPercent` (0, 10, 50, 100) sends that share of the traffic
        to the idle colour. `BlueImage` / `GreenImage` pin a colour to an image URI (empty: the
        image built by this deploy), and unless this is the stack's first deploy a Rule refuses
        to leave both empty, so that one build never rolls both colours. See docs/aws.md,
        'Blue/green'.
        """
        fleet = self.stage.fleet
        assert fleet.requests_per_target_per_minute is not None
        colours = COLOURS if blue_green else COLOURS[:1]
        live = CfnParameter(
            self,
            "LiveColour",
            allowed_values=list(COLOURS),
            default="blue",
            description="The colour that serves; the other one is idle (or takes ShiftPercent)",
        )
        shift = CfnParameter(
            self,
            "ShiftPercent",
            allowed_values=[str(step) for step in SHIFT_STEPS],
            default="0",
            description="Percent of the traffic sent to the idle colour, in steps",
        )
        idle_size = CfnParameter(
            self,
            "IdleSize",
            # A string, as MinSize is (a Number parameter would be coerced into it).
            allowed_values=[str(size) for size in range(1, fleet.max_size + 1)],
            default="1",
            description="Minimum size of the idle colour: before a shift, the live colour's "
            "desired capacity",
        )
        weights = CfnMapping(
            self,
            "ShiftWeights",
            mapping={str(step): {"live": 100 - step, "idle": step} for step in SHIFT_STEPS},
        )
        is_live = {
            name: CfnCondition(
                self, f"{name.title()}IsLive", expression=Fn.condition_equals(live, name)
            )
            for name in COLOURS
        }
        if blue_green and not self.first_deploy:
            images = [Fn.condition_equals(Fn.ref(f"{c.title()}Image"), "") for c in COLOURS]
            CfnRule(
                self,
                "OneColourTakesTheBuild",
                assertions=[
                    CfnRuleAssertion(
                        assert_=Fn.condition_not(Fn.condition_and(*images)),
                        assert_description="BlueImage and GreenImage are both empty, so this "
                        "build would roll both colours: pin the live colour to its "
                        "<colour>ImageInUse output (docs/aws.md, Blue/green). Only the first "
                        "deploy may leave both empty (-c shop:first_deploy=true).",
                    )
                ],
            )
        weighted = []
        groups = []
        for colour in colours:
            other = next(name for name in COLOURS if name != colour)
            image_uri = self._pinned_image(colour.title(), image, what=f"the {colour} colour")
            idle = is_live[other].logical_id
            minimum = Fn.condition_if(idle, idle_size.value_as_string, str(fleet.min_size))
            group = scaling_group(
                self,
                f"{colour.title()}Group",
                tier=web,
                vpc=network.vpc,
                subnets=network.app_subnets,
                instance_type=fleet.instance_type,
                min_size=Token.as_number(minimum),
                max_size=fleet.max_size,
                volume_gib=fleet.volume_gib,
                image_uri=image_uri,
                elb_health_check=True,
            )
            target_group = load_balancer.target_group(f"{colour.title()}Targets")
            group.attach_to_application_target_group(target_group)
            weight = Fn.condition_if(
                idle,
                weights.find_in_map(shift.value_as_string, "idle"),
                weights.find_in_map(shift.value_as_string, "live"),
            )
            weighted.append(
                elbv2.WeightedTargetGroup(target_group=target_group, weight=Token.as_number(weight))
            )
            groups.append(group)
            self.target_groups.append((target_group, Token.as_string(minimum)))
        load_balancer.listener.add_action(
            "Default", action=elbv2.ListenerAction.weighted_forward(weighted)
        )
        for group in groups:  # request count per target needs the listener in place
            group.scale_on_request_count(
                "RequestsPerTarget",
                target_requests_per_minute=fleet.requests_per_target_per_minute,
            )
        return groups

    def _rollback_triggers(
        self, observability: Observability, errors: list[cloudwatch.Alarm]
    ) -> None:
        """The health gate of a blue/green shift: alarms CloudFormation watches as it goes.

        The app's and the load balancer's 5xx, and per colour: a target failing its health
        checks, or fewer healthy targets than the group's minimum (so a shift to an idle colour
        that has not reached `IdleSize` healthy instances is rolled back). The CDK CLI cannot
        pass rollback triggers, so the output `RollbackTriggers` is the text of
        `aws cloudformation update-stack --rollback-configuration` (docs/aws.md, Blue/green).
        """
        unhealthy = []
        for group, minimum in self.target_groups:
            health = {
                "unhealthy": group.metrics.unhealthy_host_count(statistic="Maximum"),
                "healthy": group.metrics.healthy_host_count(statistic="Minimum"),
            }
            unhealthy.append(
                observability.alarm(
                    f"{group.node.id}Unhealthy",
                    cloudwatch.MathExpression(
                        expression=Fn.join("", ["MAX([unhealthy, ", minimum, " - healthy])"]),
                        using_metrics=health,
                        label=f"{group.node.id}: unhealthy, or missing below the minimum",
                        period=Duration.minutes(1),
                    ),
                    threshold=1,
                    evaluation_periods=2,
                    description=f"{group.node.id}: a target has failed its /healthz checks, or "
                    "fewer targets are healthy than the group's minimum, for 2 minutes (a "
                    "blue/green shift's rollback trigger).",
                )
            )
        parts: list[str] = ["RollbackTriggers=["]
        for index, alarm in enumerate([*errors, *unhealthy]):
            separator = "," if index else ""
            parts += [f"{separator}{{Arn=", alarm.alarm_arn, ",Type=AWS::CloudWatch::Alarm}"]
        parts.append(f"],MonitoringTimeInMinutes={ROLLBACK_MONITORING_MINUTES}")
        CfnOutput(
            self,
            "RollbackTriggers",
            value=Fn.join("", parts),
            description="aws cloudformation update-stack --rollback-configuration for a shift",
        )

    def _observe_agent(
        self, observability: Observability, *, hosts: list[dict[str, str]], workers: bool
    ) -> None:
        """Graphs of what the CloudWatch agents publish (agent.py): memory and root disk of the
        busiest instance of each group (or the box), and the app's own figures summed over the
        instances of a tier."""
        namespace = agent.NAMESPACE
        observability.graph(
            "Memory % and root disk % (busiest instance)",
            [metric(namespace, "mem_used_percent", host, statistic="Maximum") for host in hosts]
            + [
                # Amazon Linux 2023's root file system is XFS.
                metric(
                    namespace,
                    "disk_used_percent",
                    {**host, "path": "/", "fstype": "xfs"},
                    statistic="Maximum",
                )
                for host in hosts
            ],
        )
        web = {"Stack": Aws.STACK_NAME, "Tier": "web"}
        observability.graph(
            "Requests in flight; requests waiting for a database connection",
            [
                metric(namespace, "shop_requests_in_flight", web, statistic="Sum"),
                metric(
                    namespace,
                    "shop_db_pool_connections",
                    {**web, "state": "waiting"},
                    statistic="Sum",
                ),
            ],
        )
        if workers:
            worker = {"Stack": Aws.STACK_NAME, "Tier": "worker"}
            observability.graph(
                "Worker events handled and failed / min",
                [
                    metric(
                        namespace, "shop_worker_events_processed_total", worker, statistic="Sum"
                    ),
                    metric(namespace, "shop_worker_events_failed_total", worker, statistic="Sum"),
                ],
            )

    def _observe(
        self,
        observability: Observability,
        *,
        web_cpu: list,
        load_balancer: LoadBalancer | None,
        database: Database | None,
        split: dict[str, Database],
        cache: Cache | None,
        queue: OrderQueue | None,
    ) -> None:
        """Graphs for every component present; an alarm on each figure that names a bottleneck."""
        observability.graph("Web CPU %", web_cpu)
        observability.alarm(
            "WebCpuHigh",
            worst("Web CPU % (busiest)", web_cpu),
            threshold=80,
            description="The web tier's CPU is saturated (stages 1-2: the box / the instance).",
        )
        if load_balancer is not None:
            alb = load_balancer.alb.metrics
            p95 = alb.target_response_time(statistic="p95", period=Duration.minutes(1))
            errors = alb.http_code_target(
                elbv2.HttpCodeTarget.TARGET_5XX_COUNT, period=Duration.minutes(1)
            )
            # The load balancer's own 5xx (502: a target closed the connection; 503: no healthy
            # target; 504: a target too slow) are not in the targets' count.
            balancer_errors = alb.http_code_elb(
                elbv2.HttpCodeElb.ELB_5XX_COUNT, period=Duration.minutes(1)
            )
            observability.graph("Requests / min", [alb.request_count(period=Duration.minutes(1))])
            observability.graph("Latency p95 (s) and 5xx", [p95, errors, balancer_errors])
            observability.alarm(
                "LatencyHigh",
                p95,
                threshold=0.5,
                description="p95 latency at the load balancer is above 500 ms.",
            )
            app_5xx = observability.alarm(
                "ServerErrors",
                errors,
                threshold=10,
                description="The app answers 5xx (10 or more a minute).",
            )
            balancer_5xx = observability.alarm(
                "LoadBalancerErrors",
                balancer_errors,
                threshold=10,
                description="The load balancer itself answers 5xx (10 or more a minute): "
                "targets closing connections, none healthy, or too slow.",
            )
            if self.target_groups:
                self._rollback_triggers(observability, [app_5xx, balancer_5xx])
        if database is not None:
            primary = database.primary
            observability.graph(
                "Database CPU %",
                [primary.metric_cpu_utilization(period=Duration.minutes(1))]
                + [r.metric_cpu_utilization(period=Duration.minutes(1)) for r in database.replicas],
            )
            observability.graph(
                "Database connections",
                [primary.metric_database_connections(period=Duration.minutes(1))],
            )
            observability.alarm(
                "DatabaseCpuHigh",
                primary.metric_cpu_utilization(period=Duration.minutes(1)),
                threshold=80,
                description="The database primary's CPU is saturated (stage 3's bottleneck).",
            )
            if database.replicas:
                lag = _replica_lag(database)
                observability.graph("Replica lag (s)", lag)
                observability.alarm(
                    "ReplicaLagHigh",
                    worst("Replica lag (s, worst replica)", lag),
                    threshold=REPLICA_LAG_ALARM_S,
                    description="A read replica is more than 5 s behind the primary.",
                )
        if split:
            # Stage 8: the primaries beside main, each a write primary of its own (the figure
            # the stage measures: which of them, if any, saturates after main), and the order
            # shards' replicas, watched as main's are.
            observability.graph(
                "Federated and shard databases CPU %",
                [
                    instance.metric_cpu_utilization(period=Duration.minutes(1))
                    for each in split.values()
                    for instance in (each.primary, *each.replicas)
                ],
            )
            observability.graph(
                "Federated and shard databases connections",
                [
                    each.primary.metric_database_connections(period=Duration.minutes(1))
                    for each in split.values()
                ],
            )
            for key, each in split.items():
                observability.alarm(
                    f"{key}CpuHigh",
                    each.primary.metric_cpu_utilization(period=Duration.minutes(1)),
                    threshold=80,
                    description=f"The {_words(key)} primary's CPU is saturated.",
                )
            replicated = {key: each for key, each in split.items() if each.replicas}
            if replicated:
                observability.graph(
                    "Shard replica lag (s)",
                    [lag for each in replicated.values() for lag in _replica_lag(each)],
                )
            for key, each in replicated.items():
                observability.alarm(
                    f"{key}ReplicaLagHigh",
                    worst(f"{_words(key).capitalize()} replica lag (s)", _replica_lag(each)),
                    threshold=REPLICA_LAG_ALARM_S,
                    description=f"A read replica of {_words(key)} is more than "
                    f"{REPLICA_LAG_ALARM_S} s behind its primary.",
                )
        if cache is not None:
            node = {"CacheClusterId": f"{cache.id_for_metrics}-001"}
            engine_cpu = metric("AWS/ElastiCache", "EngineCPUUtilization", node)
            observability.graph(
                "Cache hit rate % and engine CPU %",
                [metric("AWS/ElastiCache", "CacheHitRate", node), engine_cpu],
            )
            observability.alarm(
                "CacheCpuHigh",
                engine_cpu,
                threshold=80,
                description="The Redis primary's engine thread is saturated.",
            )
        if queue is not None:
            age = queue.queue.metric_approximate_age_of_oldest_message(period=Duration.minutes(1))
            observability.graph(
                "Queue depth and age (s)",
                [
                    queue.queue.metric_approximate_number_of_messages_visible(
                        period=Duration.minutes(1)
                    ),
                    age,
                ],
            )
            observability.alarm(
                "QueueAgeHigh",
                age,
                threshold=300,
                description="Orders wait more than 5 minutes for a worker.",
            )
            observability.alarm(
                "DeadLetters",
                queue.dead_letters.metric_approximate_number_of_messages_visible(
                    period=Duration.minutes(1), statistic="Maximum"
                ),
                threshold=1,
                evaluation_periods=1,
                description="A message failed 5 times and is in the dead-letter queue.",
            )
