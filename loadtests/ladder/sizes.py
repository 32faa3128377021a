"""CPU budgets derived from the stacks' own sizes: one scale factor per stage, nothing tuned.

The stacks' sizes come from `aws_sizes.json` (the output of `python infra/sizes.py`; the ladder
may not import the stacks' code, and a test keeps the file equal to that output). For each
stage, every component that is an instance or a node on AWS gets a budget in proportion to its
vCPUs there, times one factor per stage chosen so that those components share MODEL_CPUS of
this machine at the stage's minimum size:

- stage 1's box: its instance's vCPUs (the app, PostgreSQL and Redis share them, as on AWS);
- each app process stands for one web instance (its vCPUs); each `shop worker` process for one
  worker instance;
- the primary: its instance's vCPUs (a Multi-AZ standby serves nothing and is not counted);
- the replicas: the sum of their vCPUs, run as one local replica (said in `notes`);
- Redis: one vCPU of its node (Redis runs commands on one thread; the second node is a
  failover replica that serves nothing here).

Managed services that AWS scales by itself are not scaled: the load balancer's and the CDN's
stand-ins get MANAGED_CPUS each, a fixed budget that the stage's knee should not reach (the
report names a stand-in that saturates as a failed run, never as the stage's bottleneck), and
moto (SQS, SES, DynamoDB) runs outside the budgets and is reported as outside the system.

An autoscaled fleet (stage 6) starts at its minimum; the local autoscaler may add processes of
the same budget while the system under test stays within MACHINE_CPUS, which is fewer than the
stack's maximum: the largest proportional slice that fits, said in `notes`.

Stage 8 adds databases (the order shards, accounting, delivery) to stage 7 and changes nothing
else. Its question is what a second write primary buys at the same size, so it is scaled by
stage 7's factor (SCALED_AS), not by its own: each shard's primary gets exactly stage 7's
primary's budget, and its fleet the same ceiling. Its budgets then sum to more than
MODEL_CPUS and MACHINE_CPUS (said in `notes`); the extra databases stay busy only with order
writes, and every step records the load generator's CPU, which shows whether it still had
its share of the machine.

The write-heavy ramp of stages 7 and 8 asks where the write primaries saturate. It runs on the
stack's largest fleet (`write_fleet`, held there), since on AWS the fleet has 8 times the
primary's vCPUs and a fleet held to this machine's slice, or growing during the ramp, would be
the limit first; its workers may grow
to the stack's largest group (`write_workers`) on the stack's own rule, the backlog per worker
(`worker_backlog`), so that a single worker falling behind does not hide the worker's share of
each order's writes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # stages.py derives its budgets through this module
    from loadtests.ladder.stages import Stage

AWS_SIZES = Path(__file__).with_name("aws_sizes.json")

MODEL_CPUS = 0.9
"""What the scaled components of a stage share at its minimum size: less than one core, so that
on a 2-core machine the load generator (whose CPU each step reports) keeps most of a core."""
MANAGED_CPUS = 0.1
"""The load balancer's and the CDN's stand-ins, each: at about 0.1 ms of nginx per request this
holds about 1,000 requests/s, several times any stage's knee here."""
MACHINE_CPUS = 1.3
"""The most the system under test may hold when an autoscaler adds processes (stage 6)."""
REDIS_VCPUS = 1
"""Redis executes commands on one thread: one vCPU of its node is what it can use."""
SCALED_AS: dict[int, int] = {8: 7}
"""Stages scaled by another stage's factor: stage 8 is stage 7 plus databases, and is
compared with it at the same budget per primary."""


@dataclass(frozen=True, kw_only=True)
class Derived:
    """One stage's budgets from its AWS sizes, and what the mapping could not keep."""

    scale: float
    """Local CPUs per AWS vCPU for this stage."""
    aws_vcpus: float
    """The scaled components' vCPUs on AWS at the stage's minimum size."""
    budgets: dict[str, float]
    """CPUs per component at the minimum size (app: the sum of its processes)."""
    app_processes: int
    app_cpus: float
    worker_processes: int
    worker_cpus: float
    max_app_processes: int
    notes: tuple[str, ...]
    shards: int = 0
    shard_cpus: float = 0.0
    """Each shard's primary (`budgets["shard"]` is their sum)."""
    federated_cpus: float = 0.0
    """Each federated database (`budgets["federated"]` is their sum)."""
    write_fleet: int = 0
    """The stack's largest fleet, for the write-heavy ramp (stages with a queue)."""
    write_workers: int = 0
    """The stack's largest worker group, for the write-heavy ramp."""
    worker_backlog: int = 0
    """The backlog per worker (messages queued plus in flight) the stack's worker group is
    scaled to hold."""


def load(path: Path = AWS_SIZES) -> dict[int, dict[str, Any]]:
    """The stacks' sizes per stage number."""
    return {int(s["number"]): s for s in json.loads(path.read_text())["stages"]}


def aws_vcpus(
    aws: dict[str, Any], *, web: int | None = None, workers: int | None = None
) -> dict[str, float]:
    """vCPUs on AWS per component the model scales, with `web` and `workers` instances (the
    stage's minimum sizes by default): the same mapping the budgets are derived with."""
    fleet, database, cache, group = aws["web"], aws["database"], aws["cache"], aws["workers"]
    instances = fleet["min"] if web is None else web
    found: dict[str, float] = {}
    if database is None:
        found["box"] = fleet["vcpus"] * instances
        return found
    found["app"] = fleet["vcpus"] * instances
    found["postgres"] = database["vcpus"]
    if database["read_replicas"]:
        found["replica"] = database["vcpus"] * database["read_replicas"]
    if cache is not None:
        found["redis"] = REDIS_VCPUS
    if group is not None:
        found["worker"] = group["vcpus"] * (group["min"] if workers is None else workers)
    shards, federated = aws.get("order_shards"), aws.get("federated")
    if shards:
        found["shard"] = shards["vcpus"] * shards["count"]
    if federated:
        found["federated"] = federated["vcpus"] * federated["databases"]
    return found


def derive(aws: dict[str, Any], *, like: dict[str, Any] | None = None) -> Derived:
    """The budgets of one stage from its entry in aws_sizes.json; a stage of SCALED_AS (or
    given `like`, another stage's entry) at that stage's factor and fleet ceiling."""
    if like is None and aws["number"] in SCALED_AS:
        like = load()[SCALED_AS[aws["number"]]]
    web, database, cache, workers = aws["web"], aws["database"], aws["cache"], aws["workers"]
    notes: list[str] = []
    vcpus = aws_vcpus(aws)
    shards, federated = aws.get("order_shards"), aws.get("federated")
    if shards:
        notes.append(
            f"{shards['count']} order shards, each a primary of {shards['vcpus']} vCPUs with "
            "its own budget"
        )
    if federated:
        notes.append(
            f"accounting and delivery, each a primary of {federated['vcpus']} vCPUs with its "
            "own budget"
        )
    if database is not None and database["read_replicas"] > 1:
        notes.append(
            f"{database['read_replicas']} read replicas of {database['vcpus']} vCPUs "
            "run as one local replica with their summed budget"
        )
    if cache is not None:
        notes.append(
            f"Redis counts {REDIS_VCPUS} of its node's {cache['vcpus']} vCPUs (one command "
            "thread); its failover replica serves nothing"
        )
    total = sum(vcpus.values())
    scale = MODEL_CPUS / total
    base = None
    if like is not None:
        base = derive(like)
        scale = MODEL_CPUS / sum(aws_vcpus(like).values())
        notes.append(
            f"scaled as stage {like['number']} ({scale:.4g} CPUs per vCPU: the same budget per "
            f"primary and the same fleet): {total * scale:.2f} CPUs at the minimum size, over "
            f"the {MODEL_CPUS} of a stage scaled by its own factor"
        )
    budgets = {name: round(v * scale, 3) for name, v in vcpus.items()}
    if aws["load_balancer"]:
        budgets["nginx"] = MANAGED_CPUS
    if aws["edge"]:
        budgets["cdn"] = MANAGED_CPUS
        notes.append("SQS, SES and DynamoDB (moto) run outside the budgets, reported apart")
    app_cpus = round(web["vcpus"] * scale, 3)
    max_app = web["min"] if database is not None else 1
    if base is not None:
        max_app = base.max_app_processes or max_app
    elif web["max"] > web["min"]:
        room = MACHINE_CPUS - (sum(budgets.values()) - budgets["app"])
        fits = max(web["min"], math.floor(room / app_cpus + 1e-9))
        max_app = min(web["max"], fits)
        if max_app < web["max"]:
            notes.append(
                f"the fleet scales to {max_app} of the stack's {web['max']} instances: the "
                f"largest slice within {MACHINE_CPUS} CPUs of this machine"
            )
    return Derived(
        scale=round(scale, 4),
        aws_vcpus=total,
        budgets=budgets,
        app_processes=web["min"] if database is not None else 1,
        app_cpus=app_cpus,
        worker_processes=workers["min"] if workers else 0,
        worker_cpus=round(workers["vcpus"] * scale, 3) if workers else 0.0,
        max_app_processes=max_app if web["max"] > web["min"] else 0,
        notes=tuple(notes),
        shards=shards["count"] if shards else 0,
        shard_cpus=round(shards["vcpus"] * scale, 3) if shards else 0.0,
        federated_cpus=round(federated["vcpus"] * scale, 3) if federated else 0.0,
        write_fleet=web["max"] if workers else 0,
        write_workers=workers["max"] if workers else 0,
        worker_backlog=workers["backlog_per_instance"] if workers else 0,
    )


def from_stacks(stage: Stage, aws: dict[str, Any] | None = None) -> Stage:
    """`stage` with the budgets derived from its stack's sizes (everything else unchanged)."""
    derived = derive(aws if aws is not None else load()[stage.number])
    b = derived.budgets
    if "box" in b:
        return replace(stage, box_cpus=b["box"], app_cpus=b["box"], cpus_per_vcpu=derived.scale)
    return replace(
        stage,
        shards=derived.shards,
        shard_cpus=derived.shard_cpus,
        federated_cpus=derived.federated_cpus,
        write_fleet=derived.write_fleet,
        write_workers=derived.write_workers,
        worker_backlog=derived.worker_backlog,
        app_processes=derived.app_processes,
        app_cpus=derived.app_cpus,
        postgres_cpus=b["postgres"],
        replica_cpus=b.get("replica", 0.0),
        redis_cpus=b.get("redis", 0.0),
        nginx_cpus=b.get("nginx", 0.0),
        cdn_cpus=b.get("cdn", 0.0),
        worker_processes=derived.worker_processes,
        worker_cpus=derived.worker_cpus,
        max_app_processes=derived.max_app_processes,
        cpus_per_vcpu=derived.scale,
    )


def table() -> str:
    """The derived budgets as Markdown, one row per stage, with what the mapping changed."""
    sizes = load()
    rows = [
        "| # | stage | AWS vCPUs scaled | CPUs per vCPU | budgets (CPUs) "
        "| what the mapping changed |",
        "|---|---|---:|---:|---|---|",
    ]
    for number, aws in sizes.items():
        derived = derive(aws)
        budgets = ", ".join(f"{name} {cpus:g}" for name, cpus in derived.budgets.items())
        if derived.app_processes > 1:
            budgets += f" (app: {derived.app_processes} x {derived.app_cpus:g})"
        rows.append(
            f"| {number} | {aws['name']} | {derived.aws_vcpus:g} | {derived.scale:g} | {budgets} "
            f"| {'; '.join(derived.notes) or '-'} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(table(), end="")
