"""Load-testing a deployed stage: its URL from the stack, and CloudWatch's evidence per step.

    python -m loadtests.deployed url Shop-3-horizontal [--region eu-west-1]
    python -m loadtests.deployed evidence Shop-3-horizontal --steps steps.jsonl \\
        --invariants invariants.json --out ladder-results/stage-3.json
    python -m loadtests.deployed fetch Shop-LoadGen --out aws-run/   # the master's result files

`url` prints the stack's `TargetUrl` output (what `locust --host` takes). `evidence` reads, for
the window of every step the suite wrote (SHOP_LOAD_STEPS_OUT), the stage's CloudWatch metrics
and writes the same per-stage JSON as the local ladder, with `"source": "aws"`, so that
`python -m loadtests.report` draws both alike. `fetch` copies the result files of a headless run
(SHOP_LOAD_STEPS_OUT, SHOP_LOAD_INVARIANTS_OUT) from the `Shop-LoadGen` master through SSM Run
Command, with no port, key or bucket to open.

What each stage has is found from the stack's own resources (logical id prefixes are those of
infra/shop_infra), not from the catalog: web instances (`Instance1`, the box of stages 1-2) or web
Auto Scaling groups (stages 3-8; any group but `WorkerGroup...`), RDS instances
(`DatabasePrimary...`, `DatabaseReplica<n>...`; at stage 8 also `OrderShard<n>Primary...`,
component `shard`, the shards' `OrderShard<n>Replica<m>...`, counted with main's replicas as
component `replica` (every read replica together, as their budget is), and
`AccountingDatabasePrimary...`, `DeliveryDatabasePrimary...`, component `federated`, each
summed over its databases), the ElastiCache replication group, the orders
queue (not its dead-letter queue) and the load balancer. CPU is expressed as vCPUs used
(utilisation x vCPUs of the instance type, x instances in service for a group) and budgets as the
vCPUs of each tier, as the ladder does with cgroups. Redis runs its commands on one engine thread:
its budget is 1 vCPU, its use EngineCPUUtilization.

CloudWatch keeps EC2 figures per minute at best (detailed monitoring; 5 minutes otherwise): run
steps of two minutes or more against AWS (SHOP_LOAD_STEP_S=120).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions

PERIOD_S = 60
"""CloudWatch period asked for: one minute, the finest EC2 (detailed) and RDS publish."""

DEFAULT_P95_OBJECTIVE_MS = 500.0

SIGNALS = ("db_share", "pool_wait_ms", "cache_hit_ratio", "replica_lag_s", "queue_depth")

REDIS_ENGINE_VCPUS = 1.0
"""Redis executes commands on one thread: that thread's core is the cache's budget."""

FEDERATED_PREFIXES = ("AccountingDatabasePrimary", "DeliveryDatabasePrimary")
"""Logical ids of stage 8's databases per function (infra/shop_infra/stack.py)."""

STACK_NAME = re.compile(r"^Shop-(?P<number>\d+)-(?P<name>[a-z0-9-]+)$")


class DeployedError(Exception):
    """A problem the user can fix (no such stack, no output, no credentials): one line."""


# --- the stack's URL --------------------------------------------------------------------------


def target_url(cloudformation: Any, stack_name: str) -> str:
    """The stack's `TargetUrl` output; raises DeployedError when the stack or output is missing."""
    stack = _describe_stack(cloudformation, stack_name)
    for output in stack.get("Outputs", []):
        if output.get("OutputKey") == "TargetUrl":
            return str(output["OutputValue"])
    raise DeployedError(
        f"stack {stack_name} has no TargetUrl output (status {stack.get('StackStatus')}): "
        "is it a shop stage stack, and has its deploy finished?"
    )


def _describe_stack(cloudformation: Any, stack_name: str) -> dict[str, Any]:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except botocore.exceptions.ClientError as error:
        message = error.response.get("Error", {}).get("Message", str(error))
        if "does not exist" in message:
            raise DeployedError(
                f"no stack named {stack_name} in {cloudformation.meta.region_name} "
                "(deploy it first, or pass --region)"
            ) from None
        raise DeployedError(f"CloudFormation refused: {message}") from None
    return dict(stacks[0])


# --- what the stage is made of -----------------------------------------------------------------


@dataclass
class Topology:
    """The resources of one deployed stage whose metrics make the evidence."""

    stage: int
    name: str
    web_instances: list[str] = field(default_factory=list)
    web_groups: list[str] = field(default_factory=list)
    worker_groups: list[str] = field(default_factory=list)
    db_primary: str | None = None
    db_replicas: list[str] = field(default_factory=list)
    """Every read replica: main's, and at stage 8 the order shards'."""
    shards: list[str] = field(default_factory=list)
    """Stage 8: the order shards' primaries."""
    federated: list[str] = field(default_factory=list)
    """Stage 8: accounting's and delivery's primaries."""
    cache_group: str | None = None
    """The ElastiCache replication group; its nodes (cache_nodes) are looked up by discover."""
    cache_nodes: list[str] = field(default_factory=list)
    queue_name: str | None = None
    load_balancer: str | None = None
    """The load balancer's CloudWatch dimension: app/<name>/<id>."""
    vcpus: dict[str, float] = field(default_factory=dict)
    """vCPUs of one unit of each tier: app/box/worker per instance, postgres/replica per DB."""

    @property
    def on_box(self) -> bool:
        """Stage 1: app, PostgreSQL and Redis share one instance (component `box`)."""
        return self.db_primary is None and not self.web_groups

    @property
    def web_component(self) -> str:
        return "box" if self.on_box else "app"


def classify(stack_name: str, resources: Iterable[dict[str, Any]]) -> Topology:
    """Sort a stack's resources (describe_stack_resources rows) into a Topology, without vCPUs."""
    match = STACK_NAME.match(stack_name)
    if match is None:
        raise DeployedError(
            f"{stack_name} is not a stage stack name (Shop-<number>-<name>, e.g. Shop-3-horizontal)"
        )
    topology = Topology(stage=int(match["number"]), name=match["name"])
    for row in resources:
        kind, logical = row.get("ResourceType", ""), row.get("LogicalResourceId", "")
        physical = row.get("PhysicalResourceId")
        if not physical:
            continue
        if kind == "AWS::EC2::Instance" and logical.startswith("Instance"):
            topology.web_instances.append(physical)
        elif kind == "AWS::AutoScaling::AutoScalingGroup":
            if logical.startswith("WorkerGroup"):
                topology.worker_groups.append(physical)
            else:
                topology.web_groups.append(physical)
        elif kind == "AWS::RDS::DBInstance":
            if logical.startswith("DatabaseReplica"):
                topology.db_replicas.append(physical)
            elif logical.startswith("DatabasePrimary"):
                topology.db_primary = physical
            elif logical.startswith("OrderShard") and "Replica" in logical:
                topology.db_replicas.append(physical)
            elif logical.startswith("OrderShard"):
                topology.shards.append(physical)
            elif logical.startswith(FEDERATED_PREFIXES):
                topology.federated.append(physical)
        elif kind == "AWS::SQS::Queue" and "DeadLetters" not in logical:
            topology.queue_name = physical.rstrip("/").rsplit("/", 1)[-1]
        elif kind == "AWS::ElastiCache::ReplicationGroup":
            topology.cache_group = physical
        elif kind == "AWS::ElasticLoadBalancingV2::LoadBalancer":
            topology.load_balancer = physical.split(":loadbalancer/", 1)[-1]
    for collection in (
        topology.web_instances,
        topology.web_groups,
        topology.db_replicas,
        topology.shards,
        topology.federated,
    ):
        collection.sort()
    return topology


def discover(session: Any, stack_name: str) -> Topology:
    """The stage's Topology from its stack's resources, with the vCPUs of each tier."""
    cloudformation = session.client("cloudformation")
    _describe_stack(cloudformation, stack_name)  # a clear error when there is no such stack
    rows = cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]
    topology = classify(stack_name, rows)
    ec2 = session.client("ec2")
    types: dict[str, str] = {}
    if topology.web_instances:
        reservations = ec2.describe_instances(InstanceIds=topology.web_instances)["Reservations"]
        kinds = {i["InstanceType"] for r in reservations for i in r["Instances"]}
        types[topology.web_component] = _one(kinds, "web instances")
    autoscaling = session.client("autoscaling")
    for component, names in (("app", topology.web_groups), ("worker", topology.worker_groups)):
        if names:
            found = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=names)
            kinds = {
                i["InstanceType"]
                for g in found["AutoScalingGroups"]
                for i in g.get("Instances", [])
                if i.get("InstanceType")
            }
            if kinds:
                types[component] = _one(kinds, f"{component} groups")
    if topology.db_primary:
        rds = session.client("rds")
        for component, ids in (
            ("postgres", [topology.db_primary]),
            ("replica", topology.db_replicas),
            ("shard", topology.shards),
            ("federated", topology.federated),
        ):
            if ids:
                classes = {
                    rds.describe_db_instances(DBInstanceIdentifier=i)["DBInstances"][0][
                        "DBInstanceClass"
                    ]
                    for i in ids
                }
                types[component] = _one(classes, component).removeprefix("db.")
    if topology.cache_group:
        elasticache = session.client("elasticache")
        topology.cache_nodes = member_clusters(elasticache, topology.cache_group)
    if types:
        described = ec2.describe_instance_types(InstanceTypes=sorted(set(types.values())))
        per_type = {
            t["InstanceType"]: float(t["VCpuInfo"]["DefaultVCpus"])
            for t in described["InstanceTypes"]
        }
        topology.vcpus = {component: per_type[kind] for component, kind in types.items()}
    if topology.cache_nodes:
        topology.vcpus["redis"] = REDIS_ENGINE_VCPUS
    return topology


def member_clusters(elasticache: Any, replication_group: str) -> list[str]:
    """The cache clusters (nodes) of a replication group: CloudWatch's CacheClusterId values."""
    found = elasticache.describe_replication_groups(ReplicationGroupId=replication_group)
    return sorted(found["ReplicationGroups"][0].get("MemberClusters", []))


def _one(values: set[str], what: str) -> str:
    if len(values) != 1:
        raise DeployedError(f"expected one instance type for the {what}, found {sorted(values)}")
    return next(iter(values))


# --- CloudWatch, one step window at a time ----------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One CloudWatch series: what it is called in the evidence, and how it is read."""

    key: str
    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    stat: str = "Average"

    def as_request(self, index: int) -> dict[str, Any]:
        return {
            "Id": f"q{index}",
            "Label": self.key,
            "MetricStat": {
                "Metric": {
                    "Namespace": self.namespace,
                    "MetricName": self.metric,
                    "Dimensions": [{"Name": n, "Value": v} for n, v in self.dimensions],
                },
                "Period": PERIOD_S,
                "Stat": self.stat,
            },
            "ReturnData": True,
        }


def queries(topology: Topology) -> list[Query]:
    """Every series the evidence needs for this topology (keys are unique)."""
    found: list[Query] = []
    for instance in topology.web_instances:
        found.append(
            Query(
                f"instance_cpu:{instance}", "AWS/EC2", "CPUUtilization", (("InstanceId", instance),)
            )
        )
    for tier, groups in (("web", topology.web_groups), ("worker", topology.worker_groups)):
        for group in groups:
            dims = (("AutoScalingGroupName", group),)
            found.append(Query(f"{tier}_cpu:{group}", "AWS/EC2", "CPUUtilization", dims))
            found.append(
                Query(
                    f"{tier}_size:{group}",
                    "AWS/AutoScaling",
                    "GroupInServiceInstances",
                    dims,
                    stat="Maximum",
                )
            )
    if topology.db_primary:
        dims = (("DBInstanceIdentifier", topology.db_primary),)
        found.append(Query("db_cpu:primary", "AWS/RDS", "CPUUtilization", dims))
    for replica in topology.db_replicas:
        dims = (("DBInstanceIdentifier", replica),)
        found.append(Query(f"replica_cpu:{replica}", "AWS/RDS", "CPUUtilization", dims))
        found.append(Query(f"replica_lag:{replica}", "AWS/RDS", "ReplicaLag", dims))
    for component, ids in (("shard", topology.shards), ("federated", topology.federated)):
        for each in ids:
            dims = (("DBInstanceIdentifier", each),)
            found.append(Query(f"{component}_cpu:{each}", "AWS/RDS", "CPUUtilization", dims))
    for node in topology.cache_nodes:
        dims = (("CacheClusterId", node),)
        found.append(Query(f"cache_hits:{node}", "AWS/ElastiCache", "CacheHits", dims, "Sum"))
        found.append(Query(f"cache_misses:{node}", "AWS/ElastiCache", "CacheMisses", dims, "Sum"))
        found.append(Query(f"cache_cpu:{node}", "AWS/ElastiCache", "EngineCPUUtilization", dims))
    if topology.queue_name:
        dims = (("QueueName", topology.queue_name),)
        found.append(
            Query(
                "queue_depth",
                "AWS/SQS",
                "ApproximateNumberOfMessagesVisible",
                dims,
                stat="Maximum",
            )
        )
        found.append(
            Query("queue_age", "AWS/SQS", "ApproximateAgeOfOldestMessage", dims, stat="Maximum")
        )
    if topology.load_balancer:
        dims = (("LoadBalancer", topology.load_balancer),)
        found.append(Query("alb_p95", "AWS/ApplicationELB", "TargetResponseTime", dims, stat="p95"))
    return found


def window(started_at: float, ended_at: float) -> tuple[datetime, datetime]:
    """The step's window widened to whole periods (CloudWatch answers per period)."""
    start = math.floor(started_at / PERIOD_S) * PERIOD_S
    end = max(math.ceil(ended_at / PERIOD_S) * PERIOD_S, start + PERIOD_S)
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)


def read_window(
    cloudwatch: Any, series: Sequence[Query], started_at: float, ended_at: float
) -> dict[str, list[float]]:
    """Each series' values within one step's window (an empty list when none were published)."""
    start, end = window(started_at, ended_at)
    values: dict[str, list[float]] = {query.key: [] for query in series}
    for first in range(0, len(series), 500):  # GetMetricData takes up to 500 queries
        batch = series[first : first + 500]
        by_id = {f"q{first + i}": query.key for i, query in enumerate(batch)}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "MetricDataQueries": [q.as_request(first + i) for i, q in enumerate(batch)],
                "StartTime": start,
                "EndTime": end,
            }
            if token:
                kwargs["NextToken"] = token
            answer = cloudwatch.get_metric_data(**kwargs)
            for result in answer["MetricDataResults"]:
                values[by_id[result["Id"]]].extend(float(v) for v in result.get("Values", []))
            token = answer.get("NextToken")
            if not token:
                break
    return values


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _prefixed(values: dict[str, list[float]], prefix: str) -> dict[str, list[float]]:
    return {key.split(":", 1)[1]: v for key, v in values.items() if key.startswith(prefix + ":")}


def _means(values: dict[str, list[float]], prefix: str) -> dict[str, float]:
    """Each series' mean over the window, for the series that have data."""
    return {
        name: mean
        for name, series in _prefixed(values, prefix).items()
        if (mean := _mean(series)) is not None
    }


def _group_vcpus(values: dict[str, list[float]], tier: str, per_instance: float) -> float | None:
    """vCPUs used by a tier's Auto Scaling groups: mean utilisation x instances in service."""
    sizes = _means(values, f"{tier}_size")
    used = [
        utilisation / 100 * sizes[group] * per_instance
        for group, utilisation in _means(values, f"{tier}_cpu").items()
        if group in sizes
    ]
    return sum(used) if used else None


def step_evidence(topology: Topology, values: dict[str, list[float]]) -> dict[str, Any]:
    """The `cpu` and `signals` of one step (interface: ladder-results/stage-<n>.json).

    Also `cloudwatch`: figures the interface has no field for (queue age, the load balancer's
    p95, the cache engine's CPU %), kept for the reader of the JSON.
    """
    web = topology.web_component
    parts: list[float] = [
        utilisation / 100 * topology.vcpus.get(web, 0.0)
        for utilisation in _means(values, "instance_cpu").values()
    ]
    groups = _group_vcpus(values, "web", topology.vcpus.get("app", 0.0))
    if groups is not None:
        parts.append(groups)
    cpu: dict[str, float] = {}
    if parts:
        cpu[web] = sum(parts)
    workers = _group_vcpus(values, "worker", topology.vcpus.get("worker", 0.0))
    if workers is not None:
        cpu["worker"] = workers
    primary = _mean(values.get("db_cpu:primary", []))
    if primary is not None:
        cpu["postgres"] = primary / 100 * topology.vcpus.get("postgres", 0.0)
    for component in ("replica", "shard", "federated"):
        each = _means(values, f"{component}_cpu")
        if each:  # summed, as their budget is: one component of several databases
            cpu[component] = sum(each.values()) / 100 * topology.vcpus.get(component, 0.0)
    engine = _means(values, "cache_cpu")
    if engine:
        # The primary's engine thread is the one that saturates: the busiest node counts.
        cpu["redis"] = max(engine.values()) / 100 * REDIS_ENGINE_VCPUS
    hits = sum(sum(series) for series in _prefixed(values, "cache_hits").values())
    misses = sum(sum(series) for series in _prefixed(values, "cache_misses").values())
    lags = [max(series) for series in _prefixed(values, "replica_lag").values() if series]
    depth = values.get("queue_depth", [])
    age = values.get("queue_age", [])
    p95 = values.get("alb_p95", [])
    signals: dict[str, float | None] = dict.fromkeys(SIGNALS)
    signals["cache_hit_ratio"] = round(hits / (hits + misses), 4) if hits + misses else None
    signals["replica_lag_s"] = max(lags) if lags else None
    signals["queue_depth"] = max(depth) if depth else None
    return {
        "cpu": {component: round(used, 3) for component, used in cpu.items()},
        "signals": signals,
        "cloudwatch": {
            "queue_age_s": max(age) if age else None,
            "alb_p95_ms": round(max(p95) * 1000, 1) if p95 else None,
            "cache_engine_cpu_pct": round(max(engine.values()), 1) if engine else None,
        },
    }


def web_instances(topology: Topology, values: dict[str, list[float]]) -> int:
    """Web instances in service in a window: the groups' largest sizes, or the fixed instances."""
    sizes = [max(series) for series in _prefixed(values, "web_size").values() if series]
    return round(sum(sizes)) if sizes else len(topology.web_instances)


def budgets(
    topology: Topology, values_per_step: Sequence[dict[str, list[float]]]
) -> dict[str, float]:
    """vCPUs of each tier: per unit x the most instances in service during the run."""
    found: dict[str, float] = {}
    web = topology.web_component
    if topology.web_instances and web in topology.vcpus:
        found[web] = topology.vcpus[web] * len(topology.web_instances)
    for tier, component in (("web", "app"), ("worker", "worker")):
        most = 0.0
        for values in values_per_step:
            sizes = [max(s) for s in _prefixed(values, f"{tier}_size").values() if s]
            most = max(most, sum(sizes))
        if most and component in topology.vcpus:
            found[component] = found.get(component, 0.0) + most * topology.vcpus[component]
    if topology.db_primary and "postgres" in topology.vcpus:
        found["postgres"] = topology.vcpus["postgres"]
    for component, ids in (
        ("replica", topology.db_replicas),
        ("shard", topology.shards),
        ("federated", topology.federated),
    ):
        if ids and component in topology.vcpus:
            found[component] = topology.vcpus[component] * len(ids)
    if topology.cache_nodes:
        found["redis"] = REDIS_ENGINE_VCPUS
    return found


PUBLISH_DELAY_S = 300
"""CloudWatch publishes a minute's EC2 and RDS figures a few minutes after it."""


def warnings(steps: Sequence[dict[str, Any]], *, now: float) -> list[str]:
    """What makes the CloudWatch figures of these steps unreliable, said before reading them."""
    found = []
    shortest = min(float(s["ended_at"]) - float(s["started_at"]) for s in steps)
    if shortest < 2 * PERIOD_S:
        found.append(
            f"a step lasts {shortest:.0f} s: CloudWatch's figures are per minute, so steps "
            "share minutes and their CPU blurs together; run steps of 120 s or more "
            "(SHOP_LOAD_STEP_S=120)"
        )
    waited = now - float(steps[-1]["ended_at"])
    if waited < PUBLISH_DELAY_S:
        found.append(
            f"the run ended {waited:.0f} s ago: CloudWatch may not have published its last "
            f"minutes yet; run evidence again {PUBLISH_DELAY_S // 60} minutes after the run"
        )
    return found


def _read_steps(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise DeployedError(f"cannot read the steps file {path}: {error.strerror}") from None
    steps = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)
            float(step["started_at"]), float(step["ended_at"])
        except (ValueError, KeyError, TypeError):
            raise DeployedError(
                f"{path}:{number} is not a step line (JSON with started_at and ended_at)"
            ) from None
        steps.append(step)
    if not steps:
        raise DeployedError(f"{path} holds no step: did the run write SHOP_LOAD_STEPS_OUT?")
    return steps


def _read_invariants(path: Path | None) -> dict[str, Any]:
    if path is None:
        detail = "no --invariants file was given: the invariants of this run were not read"
        return {"ok": False, "checks": {"not_checked": {"ok": False, "detail": detail}}}
    try:
        invariants = json.loads(path.read_text())
    except OSError as error:
        raise DeployedError(f"cannot read the invariants file {path}: {error.strerror}") from None
    except ValueError:
        raise DeployedError(
            f"{path} is not JSON (expected SHOP_LOAD_INVARIANTS_OUT's file)"
        ) from None
    if not isinstance(invariants, dict) or "ok" not in invariants:
        raise DeployedError(f"{path} has no 'ok': expected SHOP_LOAD_INVARIANTS_OUT's file")
    return invariants


def evidence(
    session: Any,
    stack_name: str,
    *,
    steps: list[dict[str, Any]],
    invariants: dict[str, Any],
    p95_objective_ms: float = DEFAULT_P95_OBJECTIVE_MS,
    daily: bool = False,
    loadgen_stack: str | None = None,
) -> dict[str, Any]:
    """The per-stage result (source "aws") for a run whose steps were measured by the suite.

    With `daily`, the steps are the daily curve's slices, and `daily` holds each slice with the
    web instances in service then (the figure stage 6's chart sets against the load). With
    `loadgen_stack` (Shop-LoadGen), `loadgen_cpu` is its busiest worker's CPU share.
    """
    topology = discover(session, stack_name)
    cloudwatch = session.client("cloudwatch")
    series = queries(topology)
    per_step = [read_window(cloudwatch, series, s["started_at"], s["ended_at"]) for s in steps]
    curve = (
        [
            {
                "t_s": round(step["started_at"] - steps[0]["started_at"], 1),
                "users": step["users"],
                "instances": web_instances(topology, values),
                "rps": step["rps"],
                "p95_ms": step["p95_ms"],
            }
            for step, values in zip(steps, per_step, strict=True)
        ]
        if daily
        else []
    )
    return {
        "stage": topology.stage,
        "name": topology.name,
        "source": "aws",
        # Instance sizes are real budgets: a tier cannot use more vCPUs than it has.
        "budgets_enforced": True,
        "budgets": budgets(topology, per_step),
        # The stack itself: one vCPU per vCPU, so the report's knee "at the stack's size" is
        # the knee, and the model's demands are AWS's own (they replace the local ones).
        "cpus_per_vcpu": 1.0,
        "steps": [
            {**step, **step_evidence(topology, v)} for step, v in zip(steps, per_step, strict=True)
        ],
        "invariants": invariants,
        "steps_shape": "daily" if daily else "step",
        "daily": curve,
        "missing": None,
        "p95_objective_ms": p95_objective_ms,
        "loadgen_cpu": loadgen_cpu(
            session, loadgen_stack, steps[0]["started_at"], steps[-1]["ended_at"]
        )
        if loadgen_stack
        else None,
    }


def loadgen_cpu(session: Any, stack_name: str, started_at: float, ended_at: float) -> float | None:
    """The Shop-LoadGen workers' CPU over the run: the busiest instance's share, minute by minute.

    Each worker instance runs one Locust process per vCPU, so the busiest instance's utilisation
    is the share of its core the busiest Locust process used (the local ladder's figure for its
    one load-generator core). Near 1.0, the load generator, not the stage, may be the limit.
    """
    cloudformation = session.client("cloudformation")
    _describe_stack(cloudformation, stack_name)
    rows = cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]
    groups = [
        row["PhysicalResourceId"]
        for row in rows
        if row.get("ResourceType") == "AWS::AutoScaling::AutoScalingGroup"
        and row.get("LogicalResourceId", "").startswith("WorkerGroup")
    ]
    if not groups:
        raise DeployedError(f"stack {stack_name} has no worker group: is it Shop-LoadGen?")
    series = [
        Query(
            f"loadgen_cpu:{group}",
            "AWS/EC2",
            "CPUUtilization",
            (("AutoScalingGroupName", group),),
            stat="Maximum",
        )
        for group in groups
    ]
    values = read_window(session.client("cloudwatch"), series, started_at, ended_at)
    busiest = [value for found in values.values() for value in found]
    return round(sum(busiest) / len(busiest) / 100, 3) if busiest else None


# --- command line --------------------------------------------------------------------------------


# --- the load generator's result files ------------------------------------------------------

FETCH_CHUNK_BYTES = 16_000
"""Bytes read per command: their base64 (21,336 characters) fits in the 24,000 characters of
output that SSM's GetCommandInvocation returns."""
DEFAULT_RESULT_FILES = ("/tmp/steps.jsonl", "/tmp/invariants.json")
"""Where docs/aws.md's headless run writes them (SHOP_LOAD_STEPS_OUT, SHOP_LOAD_INVARIANTS_OUT)."""

Shell = Callable[[str], str]
"""Runs one shell command on the load generator's master and returns what it printed."""


def fetch_file(shell: Shell, path: str, out: Path, *, say: Callable[[str], None] = print) -> int:
    """Copy the file at `path` on the master to `out`, a chunk per command; returns its size."""
    quoted = shlex.quote(path)
    answer = shell(f"stat -c %s {quoted}").strip()
    if not answer.isdigit():
        raise DeployedError(
            f"{path} is not on the load generator's master: {answer or 'no answer'}"
        )
    size = int(answer)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as copy:
        done = 0
        while done < size:
            command = f"tail -c +{done + 1} {quoted} | head -c {FETCH_CHUNK_BYTES} | base64 -w0"
            chunk = base64.b64decode(shell(command).strip(), validate=True)
            if not chunk:
                raise DeployedError(f"{path} ended at {done:,} of {size:,} bytes while copying")
            copy.write(chunk)
            done += len(chunk)
            say(f"{path}: {done:,}/{size:,} bytes")
    return size


def ssm_shell(ssm: Any, instance_id: str, *, poll_s: float = 1.0, timeout_s: float = 120) -> Shell:
    """A Shell that runs each command through SSM Run Command (AWS-RunShellScript)."""

    def run(command: str) -> str:
        sent = ssm.send_command(
            InstanceIds=[instance_id],
            DocumentName="AWS-RunShellScript",
            Parameters={"commands": [command]},
            Comment="shop: copy load test results",
        )
        command_id = sent["Command"]["CommandId"]
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                found = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
            except botocore.exceptions.ClientError as error:
                if error.response.get("Error", {}).get("Code") != "InvocationDoesNotExist":
                    raise
                found = {"Status": "Pending"}
            status = found["Status"]
            if status == "Success":
                return str(found.get("StandardOutputContent", ""))
            if status in ("Failed", "Cancelled", "TimedOut", "Cancelling"):
                said = (found.get("StandardErrorContent") or "").strip()
                raise DeployedError(f"`{command}` on {instance_id}: {status} {said}".strip())
            if time.monotonic() > deadline:
                raise DeployedError(f"`{command}` on {instance_id}: no answer in {timeout_s:.0f} s")
            time.sleep(poll_s)

    return run


def master_instance(cloudformation: Any, stack_name: str) -> str:
    """The `MasterInstanceId` output of a Shop-LoadGen stack."""
    stack = _describe_stack(cloudformation, stack_name)
    for output in stack.get("Outputs", []):
        if output.get("OutputKey") == "MasterInstanceId":
            return str(output["OutputValue"])
    raise DeployedError(f"stack {stack_name} has no MasterInstanceId output: is it Shop-LoadGen?")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.deployed", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    url = commands.add_parser("url", help="print the stack's TargetUrl output")
    url.add_argument("stack")
    url.add_argument("--region")
    fetch = commands.add_parser("fetch", help="copy result files from the Shop-LoadGen master")
    fetch.add_argument("stack", nargs="?", default="Shop-LoadGen")
    fetch.add_argument("--region")
    fetch.add_argument("--out", type=Path, required=True, help="folder to copy the files into")
    fetch.add_argument(
        "--file",
        dest="files",
        action="append",
        help=f"a path on the master (repeatable; default: {' '.join(DEFAULT_RESULT_FILES)})",
    )
    found = commands.add_parser("evidence", help="write the per-stage JSON from CloudWatch")
    found.add_argument("stack")
    found.add_argument("--region")
    found.add_argument("--steps", type=Path, required=True, help="SHOP_LOAD_STEPS_OUT's file")
    found.add_argument("--invariants", type=Path, help="SHOP_LOAD_INVARIANTS_OUT's file")
    found.add_argument("--out", type=Path, required=True, help="ladder-results/stage-<n>.json")
    found.add_argument("--p95-ms", type=float, default=DEFAULT_P95_OBJECTIVE_MS)
    found.add_argument(
        "--daily",
        action="store_true",
        help="the steps are the daily curve's slices (SHOP_LOAD_SHAPE=daily): fill `daily`",
    )
    found.add_argument(
        "--loadgen-stack",
        help="the Shop-LoadGen stack that sent the load: its workers' CPU becomes loadgen_cpu",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, endpoint_url: str | None = None) -> int:
    """Run the command line; returns the exit code (2 with a one-line error on stderr)."""
    options = _parser().parse_args(argv)
    try:
        session = _Session(region=options.region, endpoint_url=endpoint_url)
        if options.command == "url":
            print(target_url(session.client("cloudformation"), options.stack))
            return 0
        if options.command == "fetch":
            instance = master_instance(session.client("cloudformation"), options.stack)
            shell = ssm_shell(session.client("ssm"), instance)
            for path in options.files or DEFAULT_RESULT_FILES:
                out = options.out / Path(path).name
                size = fetch_file(shell, path, out)
                print(f"wrote {out} ({size:,} bytes from {instance})")
            return 0
        steps = _read_steps(options.steps)
        invariants = _read_invariants(options.invariants)
        for warning in warnings(steps, now=time.time()):
            print(f"warning: {warning}", file=sys.stderr)
        result = evidence(
            session,
            options.stack,
            steps=steps,
            invariants=invariants,
            p95_objective_ms=options.p95_ms,
            daily=options.daily,
            loadgen_stack=options.loadgen_stack,
        )
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {options.out} ({len(result['steps'])} steps, budgets {result['budgets']})")
        return 0
    except DeployedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except botocore.exceptions.NoCredentialsError:
        print(
            "error: no AWS credentials (set AWS_PROFILE, or run `aws configure` / `aws sso login`)",
            file=sys.stderr,
        )
        return 2
    except botocore.exceptions.NoRegionError:
        print("error: no AWS region: pass --region or set AWS_REGION", file=sys.stderr)
        return 2
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        print(f"error: AWS refused: {error}", file=sys.stderr)
        return 2


class _Session:
    """A boto3 session whose clients share one region and (for tests) one endpoint."""

    def __init__(self, *, region: str | None, endpoint_url: str | None) -> None:
        self._session = boto3.session.Session(region_name=region)
        self._endpoint_url = endpoint_url

    def client(self, name: str) -> Any:
        return self._session.client(name, endpoint_url=self._endpoint_url)  # type: ignore[call-overload]


if __name__ == "__main__":
    sys.exit(main())
