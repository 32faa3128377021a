#!/usr/bin/env python3
"""The stage catalog's sizes as JSON, for the local ladder to scale its CPU budgets from.

    python infra/sizes.py > loadtests/ladder/aws_sizes.json

The ladder (loadtests/) may not import the stacks' code (an import contract), so it reads this
export instead; a test checks that the committed file is exactly this output. Sizes are vCPUs
per instance or node, and counts, at each stage's minimum and maximum; the talk's user class;
and the cost by the hour at both sizes (infra/cost.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cost import hourly
from shop_infra.stages import STAGES, Stage, vcpus

MANAGED_VCPUS = {"m7g.large": 2}
"""vCPUs of the RDS and ElastiCache node types the catalog uses (db./cache. prefixes dropped;
AWS's published figures). A type missing here is refused rather than given a guess."""


def _managed_vcpus(node_type: str) -> int:
    try:
        return MANAGED_VCPUS[node_type]
    except KeyError:
        raise ValueError(f"unknown node type {node_type!r}: add it to MANAGED_VCPUS") from None


def _group(instance_type: str, min_size: int, max_size: int) -> dict[str, Any]:
    """A group of EC2 instances (web or workers): their type, vCPUs each, and counts."""
    return {
        "instance_type": instance_type,
        "vcpus": vcpus(instance_type),
        "min": min_size,
        "max": max_size,
    }


def sizes(stage: Stage) -> dict[str, Any]:
    """One stage's sizes: what the ladder needs to keep the stack's proportions."""
    fleet = stage.fleet
    found: dict[str, Any] = {
        "number": stage.number,
        "name": stage.name,
        "users": stage.users,
        "cost_per_hour_usd": round(hourly(stage), 4),
        "cost_per_hour_usd_at_max": round(hourly(stage, at_max=True), 4),
        "web": _group(fleet.instance_type, fleet.min_size, fleet.max_size),
        "database": None,
        "cache": None,
        "edge": stage.edge,
        "load_balancer": stage.load_balanced,
        "workers": None,
        "federated": None,
        "order_shards": None,
    }
    if stage.database is not None:
        found["database"] = {
            "instance_type": stage.database.instance_type,
            "vcpus": _managed_vcpus(stage.database.instance_type),
            "multi_az": stage.database.multi_az,
            "read_replicas": stage.database.read_replicas,
        }
    if stage.cache is not None:
        found["cache"] = {
            "node_type": stage.cache.node_type,
            "vcpus": _managed_vcpus(stage.cache.node_type),
            "nodes": stage.cache.nodes,
        }
    if stage.workers is not None:
        workers = stage.workers
        found["workers"] = _group(workers.instance_type, workers.min_size, workers.max_size)
        found["workers"]["backlog_per_instance"] = workers.messages_per_instance
    if stage.federated is not None:
        found["federated"] = {
            "instance_type": stage.federated.instance_type,
            "vcpus": _managed_vcpus(stage.federated.instance_type),
            "multi_az": stage.federated.multi_az,
            "databases": 2,  # accounting and delivery
        }
    if stage.shard is not None:
        found["order_shards"] = {
            "instance_type": stage.shard.instance_type,
            "vcpus": _managed_vcpus(stage.shard.instance_type),
            "multi_az": stage.shard.multi_az,
            "count": stage.order_shards,
            "read_replicas": stage.shard.read_replicas,
        }
    return found


def export() -> str:
    return json.dumps({"stages": [sizes(s) for s in STAGES]}, indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(export())
