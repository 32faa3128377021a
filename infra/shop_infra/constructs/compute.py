"""Compute: plain EC2 instances that run the app's container with docker, started by user data.

A `ContainerTier` is what every instance of one tier shares (role, security group, log group, the
boot script); the tier is then placed as one box, a fixed group of instances, or Auto Scaling
groups. Nothing listens on port 22 and there is no key pair: shell access is SSM Session Manager.
Every instance requires IMDSv2 with a hop limit of 2 (see `_metadata_options`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from ..nag import acknowledge
from ..stages import GRACEFUL_SHUTDOWN_S

HOST_PORT = 80
"""The host port the container's port 8000 is published on (the box's URL, the ALB target)."""

WEB_COMMAND = 'sh -c "shop migrate && exec shop serve --host 0.0.0.0 --port 8000"'
WORKER_COMMAND = "shop worker"
POSTGRES_IMAGE = "public.ecr.aws/docker/library/postgres:17"
REDIS_IMAGE = "public.ecr.aws/docker/library/redis:7"


class ContainerTier(Construct):
    """Role, security group, log group and boot script shared by the instances of one tier."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc: ec2.IVpc,
        repository: ecr.IRepository,
        environment: Mapping[str, str],
        command: str,
        publish: bool,
        on_box_secret: secretsmanager.ISecret | None = None,
    ) -> None:
        super().__init__(scope, id)
        self._environment = dict(environment)
        self._command = command
        self._publish = publish
        self._on_box_secret = on_box_secret
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description=f"{id}: no inbound except the paths the stack opens; no port 22",
            allow_all_outbound=True,
        )
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=logs.RetentionDays.TWO_WEEKS,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description=f"{id} instances: SSM sessions, image pull, logs, and the app's own grants",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")
            ],
        )
        repository.grant_pull(self.role)
        self.log_group.grant_write(self.role)
        if on_box_secret is not None:
            on_box_secret.grant_read(self.role)
        acknowledge(
            self.role,
            id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
            "AmazonSSMManagedInstanceCore]",
            reason="AmazonSSMManagedInstanceCore is the AWS-maintained minimum for SSM Session "
            "Manager, which replaces SSH (no key pair, nothing open on port 22).",
        )
        acknowledge(
            self.role,
            id="AwsSolutions-IAM5[Resource::*]",
            reason="ecr:GetAuthorizationToken only exists on resource '*' (the registry login); "
            "the image pull itself is limited to the one asset repository.",
        )

    def user_data(self, image_uri: str) -> ec2.UserData:
        """The boot script: install docker, pull the image, run it under systemd."""
        region = Aws.REGION
        env_file = "\n".join(f"{key}={value}" for key, value in self._environment.items())
        publish = f"-p {HOST_PORT}:8000 " if self._publish else ""
        name = "shop"
        lines = [
            "set -euo pipefail",
            "dnf install -y docker",
            "systemctl enable --now docker",
            f"IMAGE='{image_uri}'",
            f"aws ecr get-login-password --region {region}"
            ' | docker login --username AWS --password-stdin "${IMAGE%%/*}"',
            'docker pull "$IMAGE"',
            "docker network create shop || true",
            "install -d -m 0700 /etc/shop",
            # Addresses and secret ARNs only: no password is ever in this file.
            f"cat > /etc/shop/app.env <<'ENV'\n{env_file}\nENV",
            "chmod 0600 /etc/shop/app.env",
        ]
        if self._on_box_secret is not None:
            lines += self._on_box_data(region, self._on_box_secret.secret_arn)
        unit = f"""[Unit]
Description=shop {self.node.id.lower()} container
After=docker.service network-online.target
Requires=docker.service
[Service]
Restart=always
RestartSec=5
ExecStartPre=-/usr/bin/docker rm -f {name}
ExecStart=/usr/bin/docker run --rm --name {name} --network shop --env-file /etc/shop/app.env \
{publish}--log-driver awslogs --log-opt awslogs-region={region} \
--log-opt awslogs-group={self.log_group.log_group_name} --log-opt awslogs-stream=%H \
--stop-timeout {GRACEFUL_SHUTDOWN_S + 5} {image_uri} {self._command}
ExecStop=/usr/bin/docker stop {name}
TimeoutStopSec={GRACEFUL_SHUTDOWN_S + 15}
[Install]
WantedBy=multi-user.target"""
        lines += [
            f"cat > /etc/systemd/system/shop.service <<'UNIT'\n{unit}\nUNIT",
            "systemctl daemon-reload",
            "systemctl enable --now shop",
        ]
        user_data = ec2.UserData.for_linux()
        user_data.add_commands(*lines)
        return user_data

    @staticmethod
    def _on_box_data(region: str, secret_arn: str) -> list[str]:
        """Stage 1: PostgreSQL and Redis as containers on the same box, on the private network.

        The PostgreSQL password is read from Secrets Manager into a root-owned file mounted
        into the database container, so it is in no template, user data or environment.
        """
        return [
            "install -m 0400 -o 999 -g 999 /dev/null /etc/shop/pgpass",
            f"aws secretsmanager get-secret-value --region {region} --secret-id '{secret_arn}'"
            " --query SecretString --output text"
            ' | python3 -c \'import json,sys; print(json.load(sys.stdin)["password"], end="")\''
            " > /etc/shop/pgpass",
            "docker run -d --name postgres --network shop --restart always"
            " -v pgdata:/var/lib/postgresql/data -v /etc/shop/pgpass:/run/secrets/pgpass:ro"
            " -e POSTGRES_USER=shop -e POSTGRES_DB=shop"
            f" -e POSTGRES_PASSWORD_FILE=/run/secrets/pgpass {POSTGRES_IMAGE}",
            "docker run -d --name redis --network shop --restart always"
            f" {REDIS_IMAGE} redis-server --save '' --appendonly no",
            "until docker exec postgres pg_isready -U shop; do sleep 2; done",
        ]

    def grant(self, statement: iam.PolicyStatement) -> None:
        self.role.add_to_principal_policy(statement)


def _metadata_options(
    tokens: type[ec2.HttpTokens] | type[ec2.LaunchTemplateHttpTokens],
) -> dict[str, Any]:
    """Instance metadata: IMDSv2 only, reachable from the app's container.

    The app reads its secrets with the instance role, through the metadata service, from a
    container on the docker bridge: one hop past the instance. IMDSv2's token answer must be
    allowed that second hop (AWS's default limit is 1), or the app cannot start. `ec2.Instance`
    and `ec2.LaunchTemplate` take the same properties but each its own `tokens` enum.
    """
    return {
        "http_endpoint": True,
        "http_tokens": tokens.REQUIRED,
        "http_put_response_hop_limit": 2,
    }


def _root_volume(size_gib: int) -> ec2.BlockDevice:
    return ec2.BlockDevice(
        device_name="/dev/xvda",
        volume=ec2.BlockDeviceVolume.ebs(
            size_gib, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3
        ),
    )


def instances(
    scope: Construct,
    *,
    tier: ContainerTier,
    vpc: ec2.IVpc,
    subnets: ec2.SubnetSelection,
    instance_type: str,
    count: int,
    volume_gib: int,
    image_uri: str,
) -> list[ec2.Instance]:
    """A fixed group of instances, spread round-robin over the subnets' AZs."""
    chosen = vpc.select_subnets(subnet_type=subnets.subnet_type).subnets
    created = []
    for index in range(count):
        instance = ec2.Instance(
            scope,
            f"Instance{index + 1}",
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnets=[chosen[index % len(chosen)]]),
            instance_type=ec2.InstanceType(instance_type),
            machine_image=ec2.MachineImage.latest_amazon_linux2023(),
            role=tier.role,
            security_group=tier.security_group,
            user_data=tier.user_data(image_uri),
            user_data_causes_replacement=True,
            **_metadata_options(ec2.HttpTokens),
            detailed_monitoring=True,
            block_devices=[_root_volume(volume_gib)],
        )
        acknowledge(
            instance,
            id="AwsSolutions-EC29",
            reason="Termination protection is off so that 'cdk destroy' tears the demo stage "
            "down in one step; the instance holds no state that is not rebuilt by user data.",
        )
        created.append(instance)
    return created


def scaling_group(
    scope: Construct,
    id: str,
    *,
    tier: ContainerTier,
    vpc: ec2.IVpc,
    subnets: ec2.SubnetSelection,
    instance_type: str,
    min_size: int | float,
    max_size: int,
    volume_gib: int,
    image_uri: str,
    elb_health_check: bool,
) -> autoscaling.AutoScalingGroup:
    """An Auto Scaling group over the subnets' AZs, from a launch template."""
    template = ec2.LaunchTemplate(
        scope,
        f"{id}Template",
        instance_type=ec2.InstanceType(instance_type),
        machine_image=ec2.MachineImage.latest_amazon_linux2023(),
        role=tier.role,
        security_group=tier.security_group,
        user_data=tier.user_data(image_uri),
        **_metadata_options(ec2.LaunchTemplateHttpTokens),
        detailed_monitoring=True,
        block_devices=[_root_volume(volume_gib)],
    )
    health = (
        autoscaling.HealthChecks.with_additional_checks(
            additional_types=[autoscaling.AdditionalHealthCheckType.ELB],
            grace_period=Duration.minutes(5),
        )
        if elb_health_check
        else autoscaling.HealthChecks.ec2(grace_period=Duration.minutes(5))
    )
    group = autoscaling.AutoScalingGroup(
        scope,
        id,
        vpc=vpc,
        vpc_subnets=subnets,
        launch_template=template,
        min_capacity=min_size,
        max_capacity=max_size,
        health_checks=health,
        cooldown=Duration.minutes(3),
        default_instance_warmup=Duration.minutes(3),
        group_metrics=[autoscaling.GroupMetrics.all()],
        update_policy=autoscaling.UpdatePolicy.rolling_update(
            max_batch_size=1, min_instances_in_service=1
        ),
    )
    acknowledge(
        group,
        id="AwsSolutions-AS3",
        reason="Scaling events are shown on the stage's dashboard (group metrics) and in the "
        "Auto Scaling activity history; a demo stack has nobody subscribed to notifications.",
    )
    return group
