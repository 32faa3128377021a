"""Compute: plain EC2 instances that run the app's container with docker, started by user data.

A `ContainerTier` is what every instance of one tier shares (role, security group, log group, the
boot script); the tier is then placed as one box (stages 1-2) or as Auto Scaling groups (of
fixed size on stages 3-5, whose rolling update replaces one instance at a time). Nothing listens
on port 22 and there is no key pair: shell access is SSM Session Manager.
Behind a load balancer the app's container is published on port 80 (the target port); a single
box publishes it on its loopback only, behind a reverse proxy (`proxy.py`) that owns the public
ports. Every web instance also has the app on 127.0.0.1:8000, for scraping /metrics from it.
Every instance requires IMDSv2 with a hop limit of 2 (see `_metadata_options`), and runs the
CloudWatch agent (`agent.py`): boot logs, memory and disk, the app's named metrics, and its traces,
which the containers send to the agent at the gateway of the instance's docker network `shop`.

Deploys wait for health: every instance and Auto Scaling group has a creation policy (and every
group a rolling update) that waits for the boot script's `cfn-signal`. The boot script retries
each step that reaches the network, signals success only once the app answers `/healthz` on the
instance, and signals failure from its exit trap on any error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aws_cdk import (
    Aws,
    CfnCreationPolicy,
    CfnMapping,
    CfnResource,
    CfnResourceSignal,
    Duration,
    RemovalPolicy,
    Stack,
    Token,
)
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from ..nag import acknowledge
from ..stages import APP_PORT, GRACEFUL_SHUTDOWN_S
from . import agent
from .proxy import CADDY_IMAGE, CADDYFILE, ReverseProxy
from .proxy import CONTAINER as PROXY_CONTAINER
from .proxy import UNIT as PROXY_UNIT

HOST_PORT = 80
"""The host port the container's port 8000 is published on behind a load balancer (its target
port). A single box publishes no app port on it: its reverse proxy listens there."""

LOOPBACK_PORT = APP_PORT
"""Every web instance also publishes the app on 127.0.0.1:8000, reachable from the instance
only: the single box's health check, and scraping /metrics through SSM port forwarding."""

POSTGRES_IMAGE = "public.ecr.aws/docker/library/postgres:17"
REDIS_IMAGE = "public.ecr.aws/docker/library/redis:7"

WORKER_COMMAND = "shop worker"
"""Stage 7's queue consumer. systemd restarts it for as long as it exits (a worker whose
database has no schema yet exits, and waits that way); one that stays silent on its metrics
port makes the instance report itself unhealthy so that its group replaces it (see
`_health_report`)."""

WORKER_METRICS_PORT = 9102
"""The worker's Prometheus port (SHOP_WORKER_METRICS_PORT's default), published on the
instance's loopback only: the boot script waits for it before signalling, and an SSM port
forward scrapes it. The worker opens it once its database has passed the schema check."""

BOOT_TIMEOUT = Duration.minutes(15)
"""How long CloudFormation waits for an instance's signal: docker install, image pull,
migrations and the first `/healthz` take 3 to 5 minutes; the rest is room for retries."""

BOOT_ATTEMPTS = 5
"""Attempts of each boot step that reaches the network, 5, 10, 20 and 40 s apart."""

HEALTH_CHECKS = 60
HEALTH_CHECK_INTERVAL_S = 5
"""The boot script polls `/healthz` this often, this many seconds apart, before giving up."""

WORKER_SILENT_CHECKS = 10
"""Consecutive checks, a minute apart, in which a worker that has answered once does not answer
on its metrics port (it keeps exiting, or hangs) before its instance reports itself unhealthy.
systemd itself never gives up restarting it: a worker that starts before its schema exists
exits, and must be started again until the schema is there."""

LOG_BUFFER = "4m"
ASSETS_VOLUME = "shop-assets"
IMAGE_ASSETS_DIR = "/srv/shop/assets"
"""Where the image keeps uploaded product images (its SHOP_ASSETS_DIR; see the Dockerfile)."""
"""Docker's in-memory log buffer per container (non-blocking mode): if CloudWatch Logs is slow
or unreachable, lines beyond it are dropped instead of blocking the app's writes to stdout."""

AMI_CONTEXT_KEY = "shop:ami"
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
"""The public SSM parameter that names the current Amazon Linux 2023 AMI of a region."""


def web_command(workers: int, *, publish_assets: bool = False) -> str:
    """Migrate, publish the static files to the assets bucket when there is one (stage 5 on:
    CloudFront serves them from there; files already published are skipped), then serve with
    `workers` processes (one per vCPU of the instance)."""
    publish = "shop assets publish && " if publish_assets else ""
    serve = f"exec shop serve --host 0.0.0.0 --port 8000 --workers {workers}"
    return f'sh -c "shop migrate && {publish}{serve}"'


def pinned_machine_image(scope: Construct) -> ec2.IMachineImage:
    """The AMI pinned for the stack's region in context `shop:ami` ({region: ami-id}).

    A pinned image changes only when someone moves the pin, so a deploy never replaces instances
    because AWS published a new AMI. Raises ValueError, saying how to pin one, when the region
    has none.
    """
    region = Stack.of(scope).region
    if Token.is_unresolved(region):
        raise ValueError("the stack needs an explicit region to pick its pinned AMI")
    pins = scope.node.try_get_context(AMI_CONTEXT_KEY) or {}
    if isinstance(pins, str):  # -c shop:ami='{"eu-west-1": "ami-..."}' arrives as a string
        pins = json.loads(pins)
    ami = pins.get(region)
    if not ami:
        raise ValueError(
            f"no AMI pinned for region {region} (context {AMI_CONTEXT_KEY!r} has "
            f"{sorted(pins) or 'none'}). Look up the current Amazon Linux 2023 AMI with\n"
            f"  aws ssm get-parameters --names {AMI_PARAMETER} --region {region} "
            "--query 'Parameters[0].Value' --output text\n"
            f'and add "{region}": "<ami id>" under "{AMI_CONTEXT_KEY}" in infra/cdk.json '
            f'(or pass -c \'{AMI_CONTEXT_KEY}={{"{region}": "<ami id>"}}\').'
        )
    # A mapping of every pinned region rather than the bare id: the template then says where
    # its AMIs come from, and fails plainly if deployed to a region that has none.
    stack = Stack.of(scope)
    mapping = stack.node.try_find_child("PinnedAmi")
    if not isinstance(mapping, CfnMapping):
        mapping = CfnMapping(
            stack, "PinnedAmi", mapping={name: {"ami": pins[name]} for name in sorted(pins)}
        )
    return ec2.MachineImage.generic_linux({region: mapping.find_in_map(Aws.REGION, "ami")})


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
        proxy: ReverseProxy | None = None,
    ) -> None:
        super().__init__(scope, id)
        # Every container reaches the CloudWatch agent on its own instance for its traces.
        self._environment = {**environment, **agent.app_environment()}
        self._command = command
        self._publish = publish
        self._on_box_secret = on_box_secret
        self.proxy = proxy
        """A single box's reverse proxy (stages 1-2); None behind a load balancer."""
        self.machine_image = pinned_machine_image(self)
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
        self.metrics_log_group = logs.LogGroup(
            self,
            "AppMetrics",
            retention=logs.RetentionDays.TWO_WEEKS,
            removal_policy=RemovalPolicy.DESTROY,
        )
        """The app's scraped metrics as embedded metric format (the agent's Prometheus
        pipeline), apart from the app's own log lines."""
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
        agent.grant_agent(self.role, log_groups=[self.log_group, self.metrics_log_group])
        self._describes_tags = False
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
            "the image pull itself is limited to the one asset repository. A worker's "
            "autoscaling:SetInstanceHealth is on '*' too, but only for the group that carries "
            "this stack's id and the group's logical id as CloudFormation tags: the group's ARN "
            "holds a generated id, and naming it would make the role depend on the group. The "
            "CloudWatch agent's xray:PutTraceSegments, xray:PutTelemetryRecords, "
            "cloudwatch:PutMetricData (held to the shop's namespace by its condition) and, in a "
            "group, ec2:DescribeTags (its AutoScalingGroupName dimension) have no resource-level "
            "permissions at all.",
        )

    def boot(
        self,
        user_data: ec2.UserData,
        *,
        image_uri: str,
        signal: CfnResource,
        report_health: bool,
        in_group: bool,
    ) -> None:
        """Write the boot script into `user_data`: docker, the image, the CloudWatch agent,
        the app under systemd.

        `signal` is the resource whose creation policy (or rolling update) waits for this
        instance. With `report_health` (queue workers), a worker that has answered once and then
        stays silent on its metrics port makes the instance report itself unhealthy to its Auto
        Scaling group (there is no load balancer health check to notice it), and so does a
        failed boot. `in_group`: the instance is in an Auto Scaling group (its agent's memory and
        disk metrics carry the group's name).
        """
        region = Aws.REGION
        resource = Stack.of(self).get_logical_id(signal)
        env_file = "\n".join(f"{key}={value}" for key, value in self._environment.items())
        lines = [
            "set -euo pipefail",
            "# Each step that reaches the network is retried with backoff; CloudFormation hears",
            "# success only once the app is healthy here, and failure from the exit trap.",
            f'export PATH="$PATH:/opt/aws/bin:{agent.AGENT_DIR}/bin"',
            "# Empty on an instance; the tests walk this script with files under a scratch folder.",
            'ROOT="${SHOP_BOOT_ROOT:-}"',
            f"REGION='{region}'",
            f"STACK='{Aws.STACK_NAME}'",
            f"RESOURCE='{resource}'",
            f"IMAGE='{image_uri}'",
            "STEP=start",
            _SIGNAL,
            _on_exit(report_health),
            "trap on_exit EXIT",
            _RETRY,
            _WAIT_UNTIL,
        ]
        if report_health:
            lines += [
                "STEP='install the health report'",
                'install -d "$ROOT/usr/local/sbin" "$ROOT/etc/systemd/system"',
                f"cat > \"$ROOT/usr/local/sbin/shop-health\" <<'HEALTH'\n"
                f"{_health_report(region)}\nHEALTH",
                'chmod 0755 "$ROOT/usr/local/sbin/shop-health"',
                f"cat > \"$ROOT/etc/systemd/system/shop-health.service\" <<'UNIT'\n"
                f"{_HEALTH_SERVICE}\nUNIT",
                f"cat > \"$ROOT/etc/systemd/system/shop-health.timer\" <<'UNIT'\n"
                f"{_HEALTH_TIMER}\nUNIT",
            ]
        lines += [
            "STEP='install docker'",
            "retry dnf install -y docker aws-cfn-bootstrap",
            "retry systemctl enable --now docker",
            "STEP='pull the app image'",
            "ecr_login() {",
            '  aws ecr get-login-password --region "$REGION" \\',
            '    | docker login --username AWS --password-stdin "${IMAGE%%/*}"',
            "}",
            "retry ecr_login",
            'retry docker pull "$IMAGE"',
        ]
        if self.proxy is not None:
            lines.append(f"retry docker pull {CADDY_IMAGE}")
        lines += [
            # A fixed subnet: the agent listens for traces on its gateway (agent.HOST_ADDRESS).
            "docker network inspect shop >/dev/null 2>&1 || docker network create "
            f"--subnet {agent.CONTAINER_NETWORK} --gateway {agent.HOST_ADDRESS} shop",
            *self._agent(in_group=in_group),
            "STEP='write the configuration'",
            'install -d -m 0700 "$ROOT/etc/shop"',
            # Addresses and secret ARNs only: no password is ever in this file.
            f"cat > \"$ROOT/etc/shop/app.env\" <<'ENV'\n{env_file}\nENV",
            'chmod 0600 "$ROOT/etc/shop/app.env"',
        ]
        if self.proxy is not None:
            lines += [
                f"cat > \"$ROOT{CADDYFILE}\" <<'CADDY'\n{self.proxy.caddyfile()}CADDY",
                f'chmod 0644 "$ROOT{CADDYFILE}"',
            ]
        if self._on_box_secret is not None:
            lines += self._on_box_data(self._on_box_secret.secret_arn)
        lines += [
            "STEP='start the app'",
            'install -d "$ROOT/etc/systemd/system"',
            f"cat > \"$ROOT/etc/systemd/system/shop.service\" <<'UNIT'\n"
            f"{self._unit(image_uri)}\nUNIT",
            "systemctl daemon-reload",
            "systemctl enable --now shop",
        ]
        if self.proxy is not None:
            lines += [
                "STEP='start the reverse proxy'",
                f"cat > \"$ROOT/etc/systemd/system/{PROXY_UNIT}.service\" <<'UNIT'\n"
                f"{self._proxy_unit(self.proxy)}\nUNIT",
                "systemctl daemon-reload",
                f"systemctl enable --now {PROXY_UNIT}",
            ]
        if self._publish:
            # The app itself, on the instance: behind a proxy, not through it (with HTTPS, its
            # certificate can only be issued once the stack has made the DNS record).
            port = LOOPBACK_PORT if self.proxy is not None else HOST_PORT
            lines += [
                "STEP='wait for /healthz'",
                f"wait_until {HEALTH_CHECKS} {HEALTH_CHECK_INTERVAL_S} "
                f"curl -fsS --max-time 2 -o /dev/null http://127.0.0.1:{port}/healthz",
            ]
        if self.proxy is not None:
            # Then the proxy's public port: a redirect to HTTPS (any 3xx passes) when it serves a
            # domain, else the app's answer through it.
            host = f"-H 'Host: {self.proxy.domain}' " if self.proxy.domain else ""
            lines += [
                "STEP='wait for the reverse proxy'",
                f"wait_until {HEALTH_CHECKS} {HEALTH_CHECK_INTERVAL_S} "
                f"curl -fsS --max-time 2 -o /dev/null {host}http://127.0.0.1:80/healthz",
            ]
        elif not self._publish:
            # A queue worker has no web port: its metrics answer once it has opened its
            # database and passed the schema check, so that is what the signal waits for.
            lines += [
                "STEP='wait for the worker'",
                f"wait_until {HEALTH_CHECKS} {HEALTH_CHECK_INTERVAL_S} {_WORKER_ANSWERS}",
            ]
        if report_health:
            # From here on a worker that stops answering is reported; before, the boot's own
            # wait and its failure signal do that.
            lines += [
                "STEP='start the health report'",
                "systemctl enable --now shop-health.timer",
            ]
        lines += ['echo "boot: healthy; signalling success"', "signal 0"]
        user_data.add_commands(*lines)

    def _agent(self, *, in_group: bool) -> list[str]:
        """The boot step that installs and starts the CloudWatch agent (never fatal)."""
        if self._publish:
            scrape = agent.Scrape(
                "web", f"127.0.0.1:{LOOPBACK_PORT}", "/metrics", agent.WEB_METRICS
            )
        else:
            scrape = agent.Scrape(
                "worker", f"127.0.0.1:{WORKER_METRICS_PORT}", "/metrics", agent.WORKER_METRICS
            )
        config = agent.agent_config(
            log_group=self.log_group.log_group_name,
            metrics_log_group=self.metrics_log_group.log_group_name,
            stack_name=Aws.STACK_NAME,
            scrape=scrape,
            in_group=in_group,
        )
        prometheus = agent.prometheus_config(stack_name=Aws.STACK_NAME, scrape=scrape)
        return agent.boot_lines(config=agent.as_text(config), prometheus=agent.as_text(prometheus))

    def describe_tags(self) -> None:
        """Let the agent read its instance's tags (once per tier): the group-name dimension."""
        if not self._describes_tags:
            self.grant(agent.group_dimension_statement())
            self._describes_tags = True

    def _unit(self, image_uri: str) -> str:
        region = Aws.REGION
        name = "shop"
        publish = ""
        if self._publish:
            if self.proxy is None:
                publish = f"-p {HOST_PORT}:{APP_PORT} "
            publish += f"-p 127.0.0.1:{LOOPBACK_PORT}:{APP_PORT} "
        else:
            publish = f"-p 127.0.0.1:{WORKER_METRICS_PORT}:{WORKER_METRICS_PORT} "
        # A worker is restarted for as long as it exits (no start limit): one that starts
        # before its schema exists exits, and must keep trying until a web instance has
        # migrated the database.
        limit = "" if self._publish else "StartLimitIntervalSec=0\n"
        # Without an assets bucket (stages 1-4) uploaded product images are files: a named volume
        # keeps them across container restarts and image updates (the image's SHOP_ASSETS_DIR).
        if self._publish and "SHOP_ASSETS_BUCKET" not in self._environment:
            publish += f"-v {ASSETS_VOLUME}:{IMAGE_ASSETS_DIR} "
        return f"""[Unit]
Description=shop {self.node.id.lower()} container
After=docker.service network-online.target
Requires=docker.service
{limit}[Service]
Restart=always
RestartSec=5
ExecStartPre=-/usr/bin/docker rm -f {name}
ExecStart=/usr/bin/docker run --rm --name {name} --network shop --env-file /etc/shop/app.env \
{publish}--log-driver awslogs --log-opt awslogs-region={region} \
--log-opt awslogs-group={self.log_group.log_group_name} --log-opt awslogs-stream=%H \
--log-opt mode=non-blocking --log-opt max-buffer-size={LOG_BUFFER} \
--stop-timeout {GRACEFUL_SHUTDOWN_S + 5} {image_uri} {self._command}
ExecStop=/usr/bin/docker stop {name}
TimeoutStopSec={GRACEFUL_SHUTDOWN_S + 15}
[Install]
WantedBy=multi-user.target"""

    def _proxy_unit(self, proxy: ReverseProxy) -> str:
        """Caddy's container: the box's public ports, its certificates kept in a volume."""
        name = PROXY_CONTAINER
        ports = "".join(f"-p {port}:{port} " for port in proxy.ports)
        return f"""[Unit]
Description=shop reverse proxy (Caddy): the box's public ports, TLS, no /metrics
After=docker.service network-online.target
Requires=docker.service
[Service]
Restart=always
RestartSec=5
ExecStartPre=-/usr/bin/docker rm -f {name}
ExecStart=/usr/bin/docker run --rm --name {name} --network shop {ports}\
-v {CADDYFILE}:/etc/caddy/Caddyfile:ro -v caddy-data:/data -v caddy-config:/config \
--log-driver awslogs --log-opt awslogs-region={Aws.REGION} \
--log-opt awslogs-group={self.log_group.log_group_name} --log-opt awslogs-stream=%H-{name} \
--log-opt mode=non-blocking --log-opt max-buffer-size={LOG_BUFFER} {CADDY_IMAGE}
ExecStop=/usr/bin/docker stop {name}
[Install]
WantedBy=multi-user.target"""

    @staticmethod
    def _on_box_data(secret_arn: str) -> list[str]:
        """Stage 1: PostgreSQL and Redis as containers on the same box, on the private network.

        The PostgreSQL password is read from Secrets Manager into a root-owned file mounted
        into the database container, so it is in no template, user data or environment.
        """
        return [
            "STEP='start PostgreSQL and Redis'",
            'install -m 0400 -o 999 -g 999 /dev/null "$ROOT/etc/shop/pgpass"',
            "database_password() {",
            f"  aws secretsmanager get-secret-value --region \"$REGION\" --secret-id '{secret_arn}'"
            " --query SecretString --output text \\",
            '    | python3 -c \'import json,sys; print(json.load(sys.stdin)["password"], end="")\''
            ' > "$ROOT/etc/shop/pgpass"',
            "}",
            "retry database_password",
            f"retry docker pull {POSTGRES_IMAGE}",
            f"retry docker pull {REDIS_IMAGE}",
            "docker run -d --name postgres --network shop --restart always"
            " -v pgdata:/var/lib/postgresql/data -v /etc/shop/pgpass:/run/secrets/pgpass:ro"
            " -e POSTGRES_USER=shop -e POSTGRES_DB=shop"
            f" -e POSTGRES_PASSWORD_FILE=/run/secrets/pgpass {POSTGRES_IMAGE}",
            "docker run -d --name redis --network shop --restart always"
            f" {REDIS_IMAGE} redis-server --save '' --appendonly no",
            "wait_until 30 2 docker exec postgres pg_isready -U shop",
        ]

    def grant(self, statement: iam.PolicyStatement) -> None:
        self.role.add_to_principal_policy(statement)


_SIGNAL = """signal() {  # signal 0 | EXIT-CODE: tell CloudFormation if this instance is healthy
  cfn-signal --stack "$STACK" --resource "$RESOURCE" --region "$REGION" --exit-code "$1" \\
    || echo "boot: cfn-signal failed (no deploy waits for this instance?)" >&2
}"""


def _on_exit(report_health: bool) -> str:
    report = '\n  "$ROOT/usr/local/sbin/shop-health" --boot-failed || true' if report_health else ""
    return f"""on_exit() {{  # any failure (set -e) ends here: signal it, with the step that failed
  local status=$?
  if [ "$status" -eq 0 ]; then return 0; fi
  echo "boot: failed to $STEP (exit $status); signalling failure" >&2
  signal "$status"{report}
}}"""


_RETRY = f"""retry() {{  # retry COMMAND...: {BOOT_ATTEMPTS} attempts at most, 5, 10, 20, 40 s apart
  local attempt=1 delay=5
  until "$@"; do
    if [ "$attempt" -ge {BOOT_ATTEMPTS} ]; then
      echo "boot: '$*' failed $attempt times; giving up" >&2
      return 1
    fi
    echo "boot: '$*' failed (attempt $attempt of {BOOT_ATTEMPTS}); again in $delay s" >&2
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2))
  done
}}"""

_WAIT_UNTIL = """wait_until() {  # wait_until TRIES SECONDS COMMAND...: poll until COMMAND succeeds
  local tries=$1 interval=$2 try
  shift 2
  for ((try = 1; try <= tries; try++)); do
    if "$@"; then return 0; fi
    sleep "$interval"
  done
  echo "boot: '$*' did not succeed in $tries tries, $interval s apart" >&2
  return 1
}"""


_WORKER_ANSWERS = (
    f"curl -fsS --max-time 2 -o /dev/null http://127.0.0.1:{WORKER_METRICS_PORT}/metrics"
)
"""The worker is working: it opens its metrics port once its database passed the schema check."""


def _health_report(region: str) -> str:
    """/usr/local/sbin/shop-health: report this instance unhealthy to its Auto Scaling group."""
    return f"""#!/bin/bash
# Run every minute by shop-health.timer, from the first time the worker answered. Once it has
# not answered on its metrics port for {WORKER_SILENT_CHECKS} checks in a row (it keeps exiting,
# or hangs), report this instance unhealthy: its Auto Scaling group then replaces it. The boot
# script runs it with --boot-failed.
set -euo pipefail
state="${{SHOP_BOOT_ROOT:-}}/var/lib/shop-health"
if [ "${{1:-}}" = --boot-failed ]; then
  reason="its boot failed"
else
  install -d "$state"
  if {_WORKER_ANSWERS}; then
    echo 0 > "$state/silent"
    exit 0
  fi
  silent=$(( $(cat "$state/silent" 2>/dev/null || echo 0) + 1 ))
  echo "$silent" > "$state/silent"
  if [ "$silent" -lt {WORKER_SILENT_CHECKS} ]; then exit 0; fi
  reason="the worker has not answered for $silent checks in a row"
fi
token=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \\
  http://169.254.169.254/latest/api/token)
instance=$(curl -fsS -H "X-aws-ec2-metadata-token: $token" \\
  http://169.254.169.254/latest/meta-data/instance-id)
echo "shop-health: reporting $instance unhealthy: $reason" >&2
aws autoscaling set-instance-health --region '{region}' --instance-id "$instance" \\
  --health-status Unhealthy --no-should-respect-grace-period"""


_HEALTH_SERVICE = """[Unit]
Description=Report this instance unhealthy when the worker stops answering
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/shop-health"""

_HEALTH_TIMER = """[Unit]
Description=Check the worker every minute
[Timer]
OnBootSec=2min
OnUnitActiveSec=1min
[Install]
WantedBy=timers.target"""


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
        # The boot script lives in a launch template, not in the instance's UserData: a new
        # script makes a new template version, and a new version replaces the instance (as a
        # changed UserData would not: it only runs at first boot). The instance keeps its
        # logical id, which the script names in its cfn-signal. (`user_data_causes_replacement`
        # would rename the instance after a hash of the script, so the script could not name it.)
        user_data = ec2.UserData.for_linux()
        boot = ec2.LaunchTemplate(
            scope,
            f"Instance{index + 1}Boot",
            user_data=user_data,
            **_metadata_options(ec2.LaunchTemplateHttpTokens),
        )
        instance = ec2.Instance(
            scope,
            f"Instance{index + 1}",
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnets=[chosen[index % len(chosen)]]),
            instance_type=ec2.InstanceType(instance_type),
            machine_image=tier.machine_image,
            role=tier.role,
            security_group=tier.security_group,
            user_data_causes_replacement=False,
            **_metadata_options(ec2.HttpTokens),
            detailed_monitoring=True,
            block_devices=[_root_volume(volume_gib)],
            propagate_tags_to_volume_on_creation=True,
        )
        instance.instance.add_property_deletion_override("UserData")
        instance.instance.launch_template = ec2.CfnInstance.LaunchTemplateSpecificationProperty(
            launch_template_id=boot.launch_template_id,
            version=boot.latest_version_number,
        )
        # A replaced instance (new image, new boot script) must answer /healthz before the
        # deploy goes on and the old one is deleted.
        instance.instance.cfn_options.creation_policy = CfnCreationPolicy(
            resource_signal=CfnResourceSignal(count=1, timeout=BOOT_TIMEOUT.to_iso_string())
        )
        tier.boot(
            user_data,
            image_uri=image_uri,
            signal=instance.instance,
            report_health=False,
            in_group=False,
        )
        acknowledge(
            instance,
            id="CloudFormation-Validate::W9010",
            reason="The AMI is pinned per region on purpose (context shop:ami, moved forward by "
            "hand, see README): a deploy must not replace instances because AWS published an "
            "image. The template takes it from a mapping; this check resolves the mapping.",
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
    """An Auto Scaling group over the subnets' AZs, from a launch template.

    Creation waits for a success signal from min_size instances, and a rolling update replaces
    one instance at a time, each new one signalling before the next is replaced. Without the
    load balancer's health check (`elb_health_check=False`: queue workers), instances report
    themselves unhealthy when their worker stops answering.
    """
    user_data = ec2.UserData.for_linux()
    template = ec2.LaunchTemplate(
        scope,
        f"{id}Template",
        instance_type=ec2.InstanceType(instance_type),
        machine_image=tier.machine_image,
        role=tier.role,
        security_group=tier.security_group,
        user_data=user_data,
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
        # CloudFormation takes no intrinsic function in a creation policy, so a minimum that is
        # one (blue/green: Fn::If on the live colour) waits for the first healthy instance.
        # Rolling updates wait for every instance they replace, whatever this count.
        signals=autoscaling.Signals.wait_for_count(1, timeout=BOOT_TIMEOUT)
        if Token.is_unresolved(min_size)
        else autoscaling.Signals.wait_for_min_capacity(timeout=BOOT_TIMEOUT),
        update_policy=autoscaling.UpdatePolicy.rolling_update(
            max_batch_size=1,
            min_instances_in_service=1,
            wait_on_resource_signals=True,
            pause_time=BOOT_TIMEOUT,
        ),
    )
    resource = group.node.default_child
    assert isinstance(resource, CfnResource)
    report_health = not elb_health_check
    tier.boot(
        user_data,
        image_uri=image_uri,
        signal=resource,
        report_health=report_health,
        in_group=True,
    )
    tier.describe_tags()
    if report_health:
        tier.grant(
            iam.PolicyStatement(
                actions=["autoscaling:SetInstanceHealth"],
                resources=["*"],
                conditions={
                    "StringEquals": {
                        "autoscaling:ResourceTag/aws:cloudformation:stack-id": Aws.STACK_ID,
                        "autoscaling:ResourceTag/aws:cloudformation:logical-id": Stack.of(
                            scope
                        ).get_logical_id(resource),
                    }
                },
            )
        )
    acknowledge(
        group,
        id="AwsSolutions-AS3",
        reason="Scaling events are shown on the stage's dashboard (group metrics) and in the "
        "Auto Scaling activity history; a demo stack has nobody subscribed to notifications.",
    )
    return group
