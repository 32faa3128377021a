"""Shop-LoadGen: a Locust master and a group of workers, for loads one laptop cannot send.

Optional, and independent of the stage stacks: it is deployed beside a stage (same region) with
that stage's URL as its `TargetUrl` parameter, and destroyed after the run. It has a VPC of its
own with public subnets only: the load goes out to the stage's public URL directly, not through
a NAT gateway that would bill every gigabyte of responses. Nothing is reachable from outside:
no security group admits any address range, there is no key pair and no port 22; the web UI
(bound to the master's loopback) is opened through an SSM port forward, and shells are SSM
sessions. Workers reach the master on Locust's port 5557 inside the workers' security group.

The Locust suite (the repository's `loadtests/` folder) is shipped as an S3 asset; each instance
reads that one object and installs Locust, pinned, from PyPI at boot. The suite's SHOP_LOAD_*
settings (the admin's password among them) come from one SecureString parameter, read at boot.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import (
    Aws,
    CfnOutput,
    CfnParameter,
    RemovalPolicy,
    Stack,
    Token,
)
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from .constructs.compute import pinned_machine_image
from .constructs.teardown import leave_nothing_behind
from .nag import acknowledge

STACK_ID = "Shop-LoadGen"
LOCUST_VERSION = "2.47.0"
"""Locust as pinned on the load-generator instances (the version the suite is tested with)."""
MASTER_PORT = 5557
WEB_UI_PORT = 8089
INSTANCE_TYPE = "c7i.large"
"""2 vCPUs: the master, or two worker processes (`--processes -1`, one per vCPU)."""
MAX_WORKERS = 20
LOADTESTS = Path(__file__).resolve().parents[2] / "loadtests"
ASSET_EXCLUDES = ["__pycache__", "*.pyc", "ladder-results"]
URL_PATTERN = r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~/-]*)?$"
"""What TargetUrl may be: a plain http(s) URL; it is written into a shell script and a unit."""
ENV_FILE = "/etc/shop-load.env"
"""SHOP_LOAD_* settings of the suite (shape, steps, admin credentials), read by every Locust."""
SETTINGS_PARAMETER = "/shop/loadgen/settings"
"""Default name of the SecureString parameter that holds ENV_FILE's lines (optional)."""
SETTINGS_SCRIPT = "/usr/local/sbin/shop-load-settings"
PARAMETER_PATTERN = r"^/[A-Za-z0-9/_.-]+$"
CIDR = "10.90.0.0/16"


def boot_script(
    *,
    role: str,
    region: str,
    bucket: str,
    key: str,
    target_url: str,
    settings_parameter: str,
    master_host: str | None = None,
) -> list[str]:
    """The lines of an instance's boot script: Locust, the suite, and a unit running `role`.

    The suite's settings (ENV_FILE) are read from the SecureString parameter
    `settings_parameter` by SETTINGS_SCRIPT, at boot and whenever it is run again (with
    --restart it then restarts Locust): every worker, including one the group replaces, runs
    with the same settings, and the admin's password is in no template or user data.
    Every path is under $SHOP_BOOT_ROOT (empty on an instance) so that tests can run the script
    with stand-in commands. Steps that reach the network are retried with backoff.
    """
    if role == "master":
        command = (
            f"/opt/locust/bin/locust -f loadtests/locustfile.py --master --host {target_url} "
            f"--master-bind-port {MASTER_PORT} --web-host 127.0.0.1 --web-port {WEB_UI_PORT}"
        )
    elif role == "worker" and master_host is not None:
        command = (
            "/opt/locust/bin/locust -f loadtests/locustfile.py --worker --processes -1 "
            f"--master-host {master_host} --master-port {MASTER_PORT}"
        )
    else:
        raise ValueError("role is master, or worker with a master_host")
    unit = "\n".join(
        [
            "[Unit]",
            f"Description=Locust {role} (shop load test)",
            "Wants=network-online.target",
            "After=network-online.target",
            "[Service]",
            "User=locust",
            "WorkingDirectory=/opt/shop",
            "Environment=PYTHONPATH=/opt/shop",
            f"EnvironmentFile=-{ENV_FILE}",
            f"ExecStart={command}",
            # A worker whose master restarts (a new headless run) starts again and reconnects.
            "Restart=always",
            "RestartSec=5",
            "LimitNOFILE=65536",
            "[Install]",
            "WantedBy=multi-user.target",
        ]
    )
    settings = "\n".join(
        [
            "#!/bin/bash",
            "# The suite's SHOP_LOAD_* settings from Parameter Store; --restart: restart Locust.",
            "set -euo pipefail",
            'ROOT="${SHOP_BOOT_ROOT:-}"',
            "umask 077",
            f"if aws ssm get-parameter --region {region} --name '{settings_parameter}' \\",
            "    --with-decryption --query Parameter.Value --output text \\",
            f'    > "$ROOT{ENV_FILE}.new"; then',
            f'  mv "$ROOT{ENV_FILE}.new" "$ROOT{ENV_FILE}"',
            "else",
            f'  rm -f "$ROOT{ENV_FILE}.new"',
            f"  echo 'no parameter {settings_parameter}: the suite runs on its defaults' >&2",
            f'  [ -e "$ROOT{ENV_FILE}" ] || : > "$ROOT{ENV_FILE}"',
            "fi",
            'if [ "${1:-}" = --restart ]; then systemctl restart locust; fi',
        ]
    )
    return [
        "set -euo pipefail",
        'ROOT="${SHOP_BOOT_ROOT:-}"',
        "retry() {",
        "  local attempt=1",
        '  until "$@"; do',
        "    if [ $attempt -ge 5 ]; then return 1; fi",
        "    sleep $((5 * 2 ** (attempt - 1)))",
        "    attempt=$((attempt + 1))",
        "  done",
        "}",
        "retry dnf install -y python3.11 python3.11-pip unzip",
        'python3.11 -m venv "$ROOT/opt/locust"',
        f"retry \"$ROOT/opt/locust/bin/pip\" install --no-cache-dir 'locust=={LOCUST_VERSION}'",
        'install -d "$ROOT/opt/shop/loadtests" "$ROOT/etc/systemd/system"',
        f"retry aws s3 cp 's3://{bucket}/{key}' \"$ROOT/opt/shop/loadtests.zip\" --region {region}",
        'unzip -o -q "$ROOT/opt/shop/loadtests.zip" -d "$ROOT/opt/shop/loadtests"',
        f'install -d "$ROOT{SETTINGS_SCRIPT.rsplit("/", 1)[0]}"',
        f"cat > \"$ROOT{SETTINGS_SCRIPT}\" <<'SETTINGS'\n{settings}\nSETTINGS",
        f'chmod 0700 "$ROOT{SETTINGS_SCRIPT}"',
        f'"$ROOT{SETTINGS_SCRIPT}"',
        "id locust >/dev/null 2>&1 || useradd --system --no-create-home locust",
        f"cat > \"$ROOT/etc/systemd/system/locust.service\" <<'UNIT'\n{unit}\nUNIT",
        "systemctl daemon-reload",
        "systemctl enable --now locust",
    ]


class LoadGenStack(Stack):
    """The Locust master (one instance) and its workers (an Auto Scaling group)."""

    def __init__(
        self,
        scope: Construct,
        *,
        loadtests_directory: Path = LOADTESTS,
        **kwargs: object,
    ) -> None:
        super().__init__(
            scope,
            STACK_ID,
            description="Shop load generator: a Locust master and workers (SSM access only)",
            **kwargs,  # type: ignore[arg-type]
        )
        target_url = CfnParameter(
            self,
            "TargetUrl",
            type="String",
            allowed_pattern=URL_PATTERN,
            constraint_description="an http(s) URL: the TargetUrl output of a stage stack",
            description="The stage to load (python -m loadtests.deployed url <stage stack>)",
        )
        workers = CfnParameter(
            self,
            "WorkerCount",
            type="Number",
            default=2,
            min_value=1,
            max_value=MAX_WORKERS,
            description=f"Worker instances ({INSTANCE_TYPE}: two Locust processes each)",
        )
        settings = CfnParameter(
            self,
            "SettingsParameter",
            type="String",
            default=SETTINGS_PARAMETER,
            allowed_pattern=PARAMETER_PATTERN,
            description="SecureString parameter with the suite's SHOP_LOAD_* lines (optional)",
        )
        vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(CIDR),
            max_azs=2,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24
                )
            ],
        )
        flow_logs = logs.LogGroup(
            self,
            "FlowLogs",
            retention=logs.RetentionDays.ONE_WEEK,
            removal_policy=RemovalPolicy.DESTROY,
        )
        vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        suite = s3_assets.Asset(
            self, "Suite", path=str(loadtests_directory), exclude=ASSET_EXCLUDES
        )
        role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Locust instances: SSM sessions, and reading the suite's asset",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")
            ],
        )
        # The one object of the asset, not the bootstrap bucket (which holds every asset).
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"],
                resources=[
                    f"arn:{Aws.PARTITION}:s3:::{suite.s3_bucket_name}/{suite.s3_object_key}"
                ],
            )
        )
        # The suite's settings: that one parameter (decrypted with the account's aws/ssm key,
        # whose key policy admits callers through SSM).
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["ssm:GetParameter"],
                resources=[
                    f"arn:{Aws.PARTITION}:ssm:{Aws.REGION}:{Aws.ACCOUNT_ID}:parameter"
                    f"{settings.value_as_string}"
                ],
            )
        )
        acknowledge(
            role,
            id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
            "AmazonSSMManagedInstanceCore]",
            reason="AmazonSSMManagedInstanceCore is the AWS-maintained minimum for SSM Session "
            "Manager and port forwarding, which replace SSH and an open web UI port here.",
        )
        master_group = ec2.SecurityGroup(
            self,
            "MasterSecurityGroup",
            vpc=vpc,
            description="Locust master: port 5557 from the workers only; no port 22",
            allow_all_outbound=True,
        )
        worker_group = ec2.SecurityGroup(
            self,
            "WorkerSecurityGroup",
            vpc=vpc,
            description="Locust workers: no inbound at all",
            allow_all_outbound=True,
        )
        master_group.add_ingress_rule(
            worker_group, ec2.Port.tcp(MASTER_PORT), "Locust workers to their master"
        )
        image = pinned_machine_image(self)
        public = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)
        master_boot = ec2.UserData.for_linux()
        master = ec2.Instance(
            self,
            "Master",
            vpc=vpc,
            vpc_subnets=public,
            instance_type=ec2.InstanceType(INSTANCE_TYPE),
            machine_image=image,
            role=role,
            security_group=master_group,
            user_data=master_boot,
            require_imdsv2=True,
            detailed_monitoring=True,
            block_devices=[_root_volume()],
            propagate_tags_to_volume_on_creation=True,
        )
        master_boot.add_commands(
            *boot_script(
                role="master",
                region=Aws.REGION,
                bucket=suite.s3_bucket_name,
                key=suite.s3_object_key,
                target_url=target_url.value_as_string,
                settings_parameter=settings.value_as_string,
            )
        )
        worker_boot = ec2.UserData.for_linux()
        worker_boot.add_commands(
            *boot_script(
                role="worker",
                region=Aws.REGION,
                bucket=suite.s3_bucket_name,
                key=suite.s3_object_key,
                target_url=target_url.value_as_string,
                settings_parameter=settings.value_as_string,
                master_host=master.instance_private_ip,
            )
        )
        template = ec2.LaunchTemplate(
            self,
            "WorkerTemplate",
            instance_type=ec2.InstanceType(INSTANCE_TYPE),
            machine_image=image,
            role=role,
            security_group=worker_group,
            user_data=worker_boot,
            require_imdsv2=True,
            detailed_monitoring=True,
            block_devices=[_root_volume()],
        )
        count = Token.as_number(workers.value_as_number)
        group = autoscaling.AutoScalingGroup(
            self,
            "WorkerGroup",
            vpc=vpc,
            vpc_subnets=public,
            launch_template=template,
            min_capacity=count,
            max_capacity=count,
        )
        acknowledge(
            group,
            id="AwsSolutions-AS3",
            reason="A fixed group of load-generator workers for one test session: nobody is "
            "subscribed to scaling notifications, and its size only changes by a stack update.",
        )
        acknowledge(
            master,
            id="AwsSolutions-EC29",
            reason="Termination protection is off so that 'cdk destroy' removes the load "
            "generator in one step; it holds nothing that is not rebuilt by its boot script.",
        )
        acknowledge(
            master,
            id="CloudFormation-Validate::W9010",
            reason="The AMI is pinned per region on purpose (context shop:ami, as the stage "
            "stacks): a deploy must not replace the master because AWS published an image. "
            "The template takes it from a mapping; this check resolves the mapping.",
        )
        CfnOutput(
            self,
            "MasterInstanceId",
            value=master.instance_id,
            description="aws ssm start-session --target <this>",
        )
        CfnOutput(self, "WorkerGroupName", value=group.auto_scaling_group_name)
        CfnOutput(
            self,
            "WebUi",
            value=(
                f"aws ssm start-session --region {Aws.REGION} --target {master.instance_id} "
                "--document-name AWS-StartPortForwardingSession --parameters "
                f"portNumber={WEB_UI_PORT},localPortNumber={WEB_UI_PORT}"
            ),
            description=f"Then open http://localhost:{WEB_UI_PORT}",
        )
        leave_nothing_behind(self)


def _root_volume() -> ec2.BlockDevice:
    return ec2.BlockDevice(
        device_name="/dev/xvda",
        volume=ec2.BlockDeviceVolume.ebs(
            8, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3
        ),
    )
