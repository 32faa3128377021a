"""The CloudWatch agent on every instance: boot logs, memory and disk, app metrics, traces.

One agent per instance (Amazon Linux's `amazon-cloudwatch-agent` package, installed by the boot
script) ships cloud-init's logs to the tier's log group, publishes memory and root-disk use in the
shop's namespace, scrapes a small named set of the app's Prometheus metrics into embedded metric
format, and receives the app's OTLP traces for X-Ray. This module says what the agent is told
(`agent_config`, `prometheus_config`), what the app's container is told to reach it
(`app_environment`), and the least IAM it needs (`grant_agent`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs

NAMESPACE = "Shop"
"""The CloudWatch namespace of every metric the agent publishes (PutMetricData is limited to it)."""

CONTAINER_NETWORK = "172.20.0.0/24"
"""The subnet of the instance's docker network `shop` (inside docker's own 172.16.0.0/12 range,
away from the VPC's 10.0.0.0/16): fixed, so that its gateway, the host as the containers see it,
is known when the stack is synthesized."""

HOST_ADDRESS = "172.20.0.1"
"""The docker network's gateway: the host's address on that network, where the agent listens for
traces. Only the host and its containers reach it; nothing outside the instance routes to it."""

OTLP_HTTP_PORT = 4318
OTLP_GRPC_PORT = 4317
"""The agent opens both OTLP receivers (it has no switch for one alone); the app uses HTTP."""

TRACE_SAMPLE_RATIO = 0.05
"""Share of requests the app traces (SHOP_TRACE_SAMPLE_RATIO). X-Ray charges per trace
recorded: at 1,000 requests/s, 5 % is 180,000 traces an hour (see docs/aws.md)."""

AGENT_DIR = "/opt/aws/amazon-cloudwatch-agent"
AGENT_CONFIG = f"{AGENT_DIR}/etc/shop.json"
PROMETHEUS_CONFIG = f"{AGENT_DIR}/etc/prometheus.yaml"

BOOT_LOGS = {
    "/var/log/cloud-init-output.log": "boot",
    "/var/log/cloud-init.log": "cloud-init",
}
"""Log files shipped to the tier's log group -> their stream's suffix (after the host name, as
the container's own stream `<host>` and the proxy's `<host>-proxy`). cloud-init-output.log holds
everything the boot script printed (each step, each retry, why it failed); cloud-init.log is
cloud-init's own account of running it."""

SCRAPE_INTERVAL = "1m"


@dataclass(frozen=True)
class Scraped:
    """One Prometheus metric the agent turns into CloudWatch metrics.

    `dimensions` are labels kept as dimensions besides Stack and Tier (every instance of the tier
    adds its data points to the same metrics, so their number does not grow with the fleet);
    `only` limits a label to some values. `series` is how many CloudWatch metrics it makes: each
    costs money every month it is published (infra/cost.py counts them).
    """

    name: str
    why: str
    series: int = 1
    dimensions: tuple[str, ...] = ()
    only: tuple[str, str] | None = None


WEB_METRICS = (
    Scraped(
        "shop_requests_in_flight",
        "requests being answered: the concurrency the load balancer's metrics do not show",
    ),
    Scraped(
        "shop_db_pool_connections",
        "database connections in use, and requests waiting for one (all pools together): a "
        "pool that limits before the database does",
        series=2,
        dimensions=("state",),
        only=("state", "in_use|waiting"),
    ),
    Scraped(
        "shop_cache_requests_total",
        "cache look-ups by result (hit, miss, error): the hit ratio as the app sees it",
        series=3,
        dimensions=("result",),
    ),
)
"""What the web tier's `/metrics` contributes. Left out: the latency histograms (the agent drops
Prometheus histograms, and the load balancer's TargetResponseTime already gives percentiles),
and everything labelled by route or process, which would make a metric per label value."""

WORKER_METRICS = (
    Scraped(
        "shop_worker_events_processed_total",
        "events handled, all kinds together: the workers' throughput",
    ),
    Scraped(
        "shop_worker_events_failed_total",
        "handling attempts that failed (the message comes back after its visibility timeout)",
    ),
    Scraped(
        "shop_worker_last_event_age_seconds",
        "seconds from an order's first send to the end of its handling: the queue's real lag",
    ),
)
"""What a stage-7 worker's metrics port contributes. The queue's depth and age are SQS's own
metrics, already on the dashboard."""


@dataclass(frozen=True)
class Scrape:
    """What one tier's agent scrapes: the tier's name (its `Tier` dimension), the address and
    path of the app's Prometheus endpoint on the instance, and the metrics kept."""

    tier: str
    target: str
    path: str
    metrics: Sequence[Scraped]


def app_environment() -> dict[str, str]:
    """The app's settings that point its traces at the agent on its own instance."""
    return {
        "SHOP_OTLP_ENDPOINT": f"http://{HOST_ADDRESS}:{OTLP_HTTP_PORT}",
        "SHOP_TRACE_SAMPLE_RATIO": str(TRACE_SAMPLE_RATIO),
    }


def agent_config(
    *, log_group: str, metrics_log_group: str, stack_name: str, scrape: Scrape, in_group: bool
) -> dict[str, Any]:
    """The agent's JSON configuration.

    Memory and disk carry the AutoScalingGroupName dimension in a group (`in_group`), the
    InstanceId on a single box (which has no group). `${aws:...}` and `{hostname}` are the
    agent's own placeholders, filled in on the instance.
    """
    instance = "AutoScalingGroupName" if in_group else "InstanceId"
    return {
        "agent": {"metrics_collection_interval": 60, "omit_hostname": True},
        "metrics": {
            "namespace": NAMESPACE,
            "append_dimensions": {instance: "${aws:" + instance + "}"},
            "metrics_collected": {
                "mem": {"measurement": ["mem_used_percent"]},
                "disk": {"measurement": ["used_percent"], "resources": ["/"], "drop_device": True},
            },
        },
        "logs": {
            "logs_collected": {
                "files": {
                    "collect_list": [
                        {
                            "file_path": path,
                            "log_group_name": log_group,
                            "log_stream_name": f"{{hostname}}-{suffix}",
                        }
                        for path, suffix in BOOT_LOGS.items()
                    ]
                }
            },
            "metrics_collected": {
                "prometheus": {
                    "cluster_name": stack_name,
                    "log_group_name": metrics_log_group,
                    "prometheus_config_path": PROMETHEUS_CONFIG,
                    "emf_processor": {
                        "metric_namespace": NAMESPACE,
                        "metric_declaration_dedup": True,
                        "metric_declaration": [
                            _declaration(scrape.tier, each) for each in scrape.metrics
                        ],
                    },
                }
            },
        },
        "traces": {
            "traces_collected": {
                "otlp": {
                    "grpc_endpoint": f"{HOST_ADDRESS}:{OTLP_GRPC_PORT}",
                    "http_endpoint": f"{HOST_ADDRESS}:{OTLP_HTTP_PORT}",
                }
            }
        },
    }


def _declaration(tier: str, metric: Scraped) -> dict[str, Any]:
    labels, matcher = ["Tier"], f"^{tier}$"
    if metric.only is not None:
        label, values = metric.only
        labels.append(label)
        matcher = f"^{tier};({values})$"
    return {
        "source_labels": labels,
        "label_matcher": matcher,
        "dimensions": [["Stack", "Tier", *metric.dimensions]],
        "metric_selectors": [f"^{metric.name}$"],
    }


def prometheus_config(*, stack_name: str, scrape: Scrape) -> dict[str, Any]:
    """The agent's Prometheus scrape configuration (JSON, which is YAML too).

    Only the named metrics are kept (`metric_relabel_configs`): the rest never reaches the
    embedded-metric log, whose ingestion is paid by the GB.
    """
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": "10s"},
        "scrape_configs": [
            {
                "job_name": f"shop-{scrape.tier}",
                "metrics_path": scrape.path,
                "static_configs": [
                    {
                        "targets": [scrape.target],
                        "labels": {"Stack": stack_name, "Tier": scrape.tier},
                    }
                ],
                "metric_relabel_configs": [
                    {
                        "source_labels": ["__name__"],
                        "regex": "|".join(metric.name for metric in scrape.metrics),
                        "action": "keep",
                    }
                ],
            }
        ],
    }


def as_text(config: dict[str, Any]) -> str:
    """Compact: the boot script, these files included, must stay within user data's 16 KB."""
    return json.dumps(config, separators=(",", ":"))


def grant_agent(role: iam.IRole, *, log_groups: Sequence[logs.ILogGroup]) -> None:
    """The least the agent needs: write to the tier's log groups, publish metrics in NAMESPACE
    only, and write traces to X-Ray (segments, and the exporter's own telemetry records).

    No X-Ray sampling reads: the app samples by its own ratio, and the agent's X-Ray sampling
    proxy (for X-Ray SDKs) is not turned on. X-Ray and PutMetricData have no resource-level
    permissions, hence '*', the latter held to the namespace by its condition.
    """
    for group in log_groups:
        group.grant_write(role)
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["cloudwatch:PutMetricData"],
            resources=["*"],
            conditions={"StringEquals": {"cloudwatch:namespace": NAMESPACE}},
        )
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["xray:PutTraceSegments", "xray:PutTelemetryRecords"], resources=["*"]
        )
    )


def group_dimension_statement() -> iam.PolicyStatement:
    """In an Auto Scaling group the agent reads its instance's tags (aws:autoscaling:groupName)
    for the AutoScalingGroupName dimension; DescribeTags has no resource-level permissions."""
    return iam.PolicyStatement(actions=["ec2:DescribeTags"], resources=["*"])


def boot_lines(*, config: str, prometheus: str) -> list[str]:
    """The boot script's agent step. Never fatal: if the agent fails to install or start, the
    boot log says so and the boot goes on to start the app and signal CloudFormation."""
    return [
        "STEP='start the CloudWatch agent'",
        "start_agent() {  # boot logs, memory and disk, the app's metrics, traces",
        "  retry dnf install -y amazon-cloudwatch-agent || return 1",
        f'  install -d "$ROOT{AGENT_DIR}/etc" || return 1',
        f"  cat > \"$ROOT{AGENT_CONFIG}\" <<'AGENT' || return 1\n{config}\nAGENT",
        f"  cat > \"$ROOT{PROMETHEUS_CONFIG}\" <<'PROMETHEUS' || return 1\n"
        f"{prometheus}\nPROMETHEUS",
        f'  amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c "file:$ROOT{AGENT_CONFIG}"',
        "}",
        "if start_agent; then",
        '  echo "boot: CloudWatch agent started (boot logs, memory, disk, app metrics, traces)"',
        "else",
        '  echo "boot: WARNING: the CloudWatch agent did not start (see above); the app starts '
        'without it: no boot logs, memory, disk or app metrics in CloudWatch, and no traces" >&2',
        "fi",
    ]
