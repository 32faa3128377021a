"""The stage catalog: the ladder of STAGES.md as data, and the rules that keep it coherent."""

import dataclasses
import itertools

import pytest
from shop_infra.stages import STAGES, Database, Fleet, Stage, stage

LADDER = [
    "single-box",
    "separate-db",
    "horizontal",
    "read-replicas",
    "cache-cdn",
    "auto-scaling",
    "service-oriented",
    "federated",
]


def test_the_catalog_has_the_eight_stages_of_the_ladder_in_order():
    assert [(s.number, s.name) for s in STAGES] == list(enumerate(LADDER, start=1))


def test_stack_ids_read_like_shop_number_name():
    assert STAGES[0].stack_id == "Shop-1-single-box"
    assert STAGES[-1].stack_id == "Shop-8-federated"


def test_a_stage_is_found_by_number_or_name():
    assert stage(4) is stage("read-replicas") is stage("4")
    with pytest.raises(KeyError):
        stage("sharded")


def test_stages_are_immutable_and_keyword_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        STAGES[0].nat_gateways = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        Fleet("c7i.large", 1, 1)  # type: ignore[misc]


def test_a_fixed_fleet_cannot_carry_a_scaling_target():
    with pytest.raises(ValueError, match="target"):
        Fleet(instance_type="c7i.large", min_size=2, max_size=2, requests_per_worker_per_minute=1)


def test_only_a_single_box_may_keep_its_database_on_the_instance():
    with pytest.raises(ValueError, match="single box"):
        Stage(
            number=9,
            name="broken",
            users="",
            summary="",
            bottleneck="",
            fleet=Fleet(instance_type="c7i.large", min_size=2, max_size=2),
            nat_gateways=1,
        )


def test_stage_8_splits_accounting_delivery_and_two_order_shards_off_stage_7():
    federated, before = stage("federated"), stage("service-oriented")
    assert federated.number == 8 and federated.users == ">10,000,000"
    assert federated.database == before.database  # main keeps its primary and 2 replicas
    assert federated.federated == Database(instance_type="m7g.large", multi_az=True)
    assert federated.order_shards == 2
    # Each shard has one replica for its customers' order reads; accounting and delivery none.
    assert federated.shard == Database(instance_type="m7g.large", multi_az=True, read_replicas=1)
    for earlier in STAGES[:7]:
        assert earlier.federated is None and earlier.order_shards == 0 and earlier.shard is None


_SPLIT = Database(instance_type="m7g.large", multi_az=True)
_SPLIT_WITH_A_REPLICA = Database(instance_type="m7g.large", multi_az=True, read_replicas=1)


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({"order_shards": 2}, "shard size"),
        ({"shard": _SPLIT}, "shard size"),
        ({"order_shards": -1}, "negative"),
        ({"order_shards": 2, "shard": _SPLIT, "workers": None}, "workers"),
        ({"federated": _SPLIT, "workers": None}, "workers"),
        ({"federated": _SPLIT_WITH_A_REPLICA}, "federated databases from their primaries"),
    ],
)
def test_a_stage_refuses_shards_or_federation_it_cannot_build(change, refused):
    with pytest.raises(ValueError, match=refused):
        dataclasses.replace(stage("service-oriented"), **change)


def test_order_shards_may_have_read_replicas_where_federated_databases_may_not():
    """The app reads a customer's orders from their shard's replicas; it has no replicas for
    accounting or delivery, so a replica there would be paid for and never read."""
    two = Database(instance_type="m7g.large", multi_az=True, read_replicas=2)
    sharded = dataclasses.replace(stage("service-oriented"), order_shards=3, shard=two)
    assert sharded.shard is not None and sharded.shard.read_replicas == 2
    with pytest.raises(ValueError, match="only order shards take read replicas"):
        dataclasses.replace(sharded, federated=_SPLIT_WITH_A_REPLICA)


def test_a_stage_refuses_shards_without_a_main_database():
    with pytest.raises(ValueError, match="main database"):
        dataclasses.replace(stage(1), order_shards=1, shard=_SPLIT)


def test_each_stage_keeps_everything_the_previous_one_had():
    for before, after in itertools.pairwise(STAGES):
        assert after.fleet.min_size >= before.fleet.min_size
        assert after.nat_gateways >= before.nat_gateways
        if before.database:
            assert after.database
            assert after.database.read_replicas >= before.database.read_replicas
            assert after.database.multi_az >= before.database.multi_az
        assert bool(after.cache) >= bool(before.cache)
        assert after.edge >= before.edge
        assert bool(after.workers) >= bool(before.workers)
        assert bool(after.federated) >= bool(before.federated)
        assert after.order_shards >= before.order_shards
