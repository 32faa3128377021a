#!/usr/bin/env python3
"""The cost table of the README, computed from the stage catalog so that the two cannot drift.

Run `python infra/cost.py` to print the Markdown table; a test checks that README.md holds
exactly this output. Prices are on-demand list prices of us-east-1 in USD, as known on the date in
PRICES_AS_OF (no network here to re-check them): verify with the AWS Pricing Calculator before
quoting them. Usage-priced services (data transfer, CloudFront, S3, DynamoDB on demand, SQS, SES,
load balancer capacity units, log ingestion, X-Ray traces) are left out: at the idle baseline
they are cents; during a load test they follow the traffic.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shop_infra.constructs.agent import WEB_METRICS, WORKER_METRICS
from shop_infra.constructs.network import AZS, INTERFACE_ENDPOINTS
from shop_infra.stages import STAGES, Stage

REGION = "us-east-1"
PRICES_AS_OF = "2024-06"
HOURS_PER_MONTH = 730

EC2_PER_HOUR = {"m7i.large": 0.1008, "c7i.large": 0.08925}
RDS_PER_HOUR = {"m7g.large": 0.168}  # PostgreSQL, single-AZ; Multi-AZ (one standby) is double
ELASTICACHE_PER_HOUR = {"m7g.large": 0.158}
ALB_PER_HOUR = 0.0225
NAT_PER_HOUR = 0.045
INTERFACE_ENDPOINT_PER_AZ_HOUR = 0.01  # gateway endpoints (S3, DynamoDB) are free
PUBLIC_IPV4_PER_HOUR = 0.005
DETAILED_MONITORING_PER_INSTANCE_MONTH = 2.10  # 7 one-minute EC2 metrics at 0.30 $/metric-month
CUSTOM_METRIC_PER_MONTH = 0.30  # the first 10,000 metrics of an account
PUT_METRIC_DATA_PER_REQUEST = 0.01 / 1000
AGENT_REQUESTS_PER_INSTANCE_HOUR = 60  # the agent sends its memory and disk once a minute
HOST_METRICS = 2  # mem_used_percent, disk_used_percent: per group (or single box), not per instance
EBS_GP3_PER_GB_MONTH = 0.08
RDS_GP3_PER_GB_MONTH = 0.115
SECRET_PER_MONTH = 0.40
DASHBOARD_PER_MONTH = 3.00
ALARM_PER_MONTH = 0.10


@dataclass(frozen=True)
class Item:
    name: str
    per_hour: float


def _monthly(amount: float) -> float:
    return amount / HOURS_PER_MONTH


def line_items(stage: Stage, *, at_max: bool = False) -> list[Item]:
    """What a stage costs by the hour, at its minimum size (or its maximum with at_max)."""
    fleet = stage.fleet
    web = fleet.max_size if at_max else fleet.min_size
    if fleet.blue_green:
        web += 1  # the idle colour keeps one instance warm
    items = [
        Item(f"{web} x EC2 {fleet.instance_type}", web * EC2_PER_HOUR[fleet.instance_type]),
        Item("EBS gp3", _monthly(web * fleet.volume_gib * EBS_GP3_PER_GB_MONTH)),
    ]
    instances = web
    if stage.workers:
        count = stage.workers.max_size if at_max else stage.workers.min_size
        kind = stage.workers.instance_type
        items.append(Item(f"{count} x EC2 {kind} (workers)", count * EC2_PER_HOUR[kind]))
        items.append(Item("EBS gp3 (workers)", _monthly(count * 20 * EBS_GP3_PER_GB_MONTH)))
        instances += count
    # Every instance and launch template turns on detailed (one-minute) monitoring (compute.py).
    items.append(
        Item(
            f"{instances} x EC2 detailed monitoring",
            _monthly(instances * DETAILED_MONITORING_PER_INSTANCE_MONTH),
        )
    )
    # The box's Elastic IP (stages 1-2); an internet-facing load balancer's address in each of
    # its AZs (stages 3-4; from stage 5 it is internal, behind CloudFront, and has none); and
    # each NAT gateway's Elastic IP.
    # The CloudWatch agent (agent.py): memory and disk per group (a group's instances share
    # them), the named app metrics per tier, and one PutMetricData a minute per instance. The
    # embedded-metric logs of the app metrics are log ingestion (left out: a few MB a month).
    groups = 1 if not fleet.auto_scaling else (2 if fleet.blue_green else 1)
    metrics = HOST_METRICS * groups + sum(m.series for m in WEB_METRICS)
    if stage.workers:
        metrics += HOST_METRICS + sum(m.series for m in WORKER_METRICS)
    items.append(
        Item(
            f"{metrics} custom metrics (CloudWatch agent)",
            _monthly(metrics * CUSTOM_METRIC_PER_MONTH)
            + instances * AGENT_REQUESTS_PER_INSTANCE_HOUR * PUT_METRIC_DATA_PER_REQUEST,
        )
    )
    public_ips = 1 if not stage.load_balanced else 0
    if stage.load_balanced and not stage.edge:
        public_ips += AZS
    public_ips += stage.nat_gateways
    items.append(Item(f"{public_ips} x public IPv4", public_ips * PUBLIC_IPV4_PER_HOUR))
    if stage.nat_gateways:
        items.append(Item(f"{stage.nat_gateways} x NAT gateway", stage.nat_gateways * NAT_PER_HOUR))
        # Built with the NAT gateway (network.py): they take image pulls and logs off it.
        items.append(
            Item(
                f"{len(INTERFACE_ENDPOINTS)} VPC interface endpoints x {AZS} AZs",
                len(INTERFACE_ENDPOINTS) * AZS * INTERFACE_ENDPOINT_PER_AZ_HOUR,
            )
        )
    if stage.load_balanced:
        items.append(Item("Application Load Balancer", ALB_PER_HOUR))
    secrets = 2  # JWT key and database credentials
    alarms = 1  # web CPU
    if stage.load_balanced:
        alarms += 3  # p95 latency, the app's 5xx, the load balancer's own 5xx
    if stage.edge:
        alarms += 1  # CloudFront 5xx rate (us-east-1, the table's region)
    if stage.database:
        db = stage.database
        copies = 2 if db.multi_az else 1
        label = "Multi-AZ" if db.multi_az else "single-AZ"
        items.append(
            Item(
                f"RDS db.{db.instance_type} {label}",
                copies * RDS_PER_HOUR[db.instance_type],
            )
        )
        items.append(Item("RDS gp3", _monthly(copies * db.storage_gib * RDS_GP3_PER_GB_MONTH)))
        if db.read_replicas:
            items.append(
                Item(
                    f"{db.read_replicas} x RDS read replica",
                    db.read_replicas
                    * (
                        RDS_PER_HOUR[db.instance_type]
                        + _monthly(db.storage_gib * RDS_GP3_PER_GB_MONTH)
                    ),
                )
            )
            alarms += 1
        alarms += 1
    # Stage 8's databases beside main (stack.py, _split_databases): each a primary (with its
    # Multi-AZ standby), its own secret and a CPU alarm of its own; the order shards also have
    # their read replicas (none for accounting and delivery), with a lag alarm per shard.
    for what, count, spec in (
        ("accounting, delivery", 2 if stage.federated else 0, stage.federated),
        ("order shards", stage.order_shards, stage.shard),
    ):
        if not count or spec is None:
            continue
        copies = 2 if spec.multi_az else 1
        label = "Multi-AZ" if spec.multi_az else "single-AZ"
        items.append(
            Item(
                f"{count} x RDS db.{spec.instance_type} {label} ({what})",
                count * copies * RDS_PER_HOUR[spec.instance_type],
            )
        )
        items.append(
            Item(
                f"RDS gp3 ({what})",
                _monthly(count * copies * spec.storage_gib * RDS_GP3_PER_GB_MONTH),
            )
        )
        if spec.read_replicas:
            replicas = count * spec.read_replicas
            items.append(
                Item(
                    f"{replicas} x RDS read replica ({what})",
                    replicas
                    * (
                        RDS_PER_HOUR[spec.instance_type]
                        + _monthly(spec.storage_gib * RDS_GP3_PER_GB_MONTH)
                    ),
                )
            )
            alarms += count  # replica lag, one alarm per database
        secrets += count
        alarms += count
    if stage.cache:
        cache = stage.cache
        items.append(
            Item(
                f"{cache.nodes} x ElastiCache cache.{cache.node_type}",
                cache.nodes * ELASTICACHE_PER_HOUR[cache.node_type],
            )
        )
        secrets += 1
        alarms += 1
    if fleet.auto_scaling:
        alarms += 1  # fleet at its maximum
        alarms += 2 * (2 if fleet.blue_green else 1)  # target tracking's high and low, per group
        if fleet.blue_green:
            alarms += 2  # an unhealthy target in either colour (a shift's rollback triggers)
    if stage.workers:
        alarms += 4  # oldest message age, dead letters; target tracking's own high and low
    items.append(Item(f"{secrets} secrets", _monthly(secrets * SECRET_PER_MONTH)))
    items.append(
        Item(
            f"dashboard + {alarms} alarms",
            _monthly(DASHBOARD_PER_MONTH + alarms * ALARM_PER_MONTH),
        )
    )
    return items


def hourly(stage: Stage, *, at_max: bool = False) -> float:
    return sum(item.per_hour for item in line_items(stage, at_max=at_max))


def table() -> str:
    lines = [
        f"| # | stage | $/hour | $/month ({HOURS_PER_MONTH} h) | at maximum size, $/hour | "
        "biggest items |",
        "|---|---|---:|---:|---:|---|",
    ]
    for stage in STAGES:
        items = sorted(line_items(stage), key=lambda item: -item.per_hour)[:3]
        at_min = hourly(stage)
        at_max = hourly(stage, at_max=True)
        lines.append(
            f"| {stage.number} | {stage.name} | {at_min:.2f} | {at_min * HOURS_PER_MONTH:,.0f} | "
            f"{at_max:.2f} | {'; '.join(item.name for item in items)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
