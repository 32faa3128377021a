"""`python -m loadtests.deployed evidence` recognises every stage's parts in its real template.

loadtests.deployed finds a deployed stage's web tier, database, cache, queue and load balancer by
the logical ids and types of the stack's resources. These tests feed it the resources of each
synthesized stage, as describe_stack_resources would list them, so that renaming a construct in
infra/ fails here instead of silently emptying the evidence of a load test in AWS.
"""

from __future__ import annotations

from typing import Any

import pytest
from shop_infra.stages import STAGES

from loadtests.deployed import Topology, classify


def _as_deployed(synth: Any) -> Topology:
    rows = [
        {
            "ResourceType": resource["Type"],
            "LogicalResourceId": logical_id,
            "PhysicalResourceId": f"physical-{logical_id}",
        }
        for logical_id, resource in synth.template["Resources"].items()
    ]
    return classify(synth.stage.stack_id, rows)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_each_stages_parts_are_found_in_its_template(synthesized, stage):
    topology = _as_deployed(synthesized[stage.number])
    assert (topology.stage, topology.name) == (stage.number, stage.name)
    fleet = stage.fleet
    if stage.load_balanced:  # a fixed group (3-5), blue and green (6-7)
        assert len(topology.web_groups) == (2 if fleet.blue_green else 1)
        assert topology.web_instances == []
    else:
        assert len(topology.web_instances) == fleet.min_size
        assert topology.web_groups == []
    assert topology.web_component == ("box" if stage.on_box_data else "app")
    if stage.database is None:
        assert topology.db_primary is None
    else:
        assert topology.db_primary is not None
        # Every read replica, main's and (stage 8) each order shard's, is a `replica`.
        shard_replicas = stage.order_shards * stage.shard.read_replicas if stage.shard else 0
        assert len(topology.db_replicas) == stage.database.read_replicas + shard_replicas
        assert len(topology.shards) == stage.order_shards
    assert (topology.cache_group is not None) == (stage.cache is not None)
    assert (topology.load_balancer is not None) == stage.load_balanced
    assert len(topology.worker_groups) == (1 if stage.workers else 0)
    if stage.workers is None:
        assert topology.queue_name is None
    else:  # the orders queue, not its dead-letter queue
        assert topology.queue_name is not None
        assert topology.queue_name.startswith("physical-Orders")
        assert "DeadLetters" not in topology.queue_name
