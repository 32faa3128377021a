"""The ladder's budgets derived from the stacks' sizes: the stacks' proportions, one factor per
stage, nothing special-cased (loadtests/ladder/sizes.py)."""

from __future__ import annotations

import copy

import pytest

from loadtests.ladder import sizes
from loadtests.ladder.stages import STAGES

AWS = sizes.load()


@pytest.mark.parametrize("number", sorted(STAGES))
def test_every_scaled_budget_is_its_components_vcpus_times_the_stages_one_factor(
    number: int,
) -> None:
    aws = AWS[number]
    derived = sizes.derive(aws)
    web, database = aws["web"], aws["database"]
    expected = {}
    if database is None:
        expected["box"] = web["vcpus"] * web["min"]
    else:
        expected["app"] = web["vcpus"] * web["min"]
        expected["postgres"] = database["vcpus"]
        if database["read_replicas"]:
            expected["replica"] = database["vcpus"] * database["read_replicas"]
    if aws["cache"]:
        expected["redis"] = sizes.REDIS_VCPUS
    if aws["workers"]:
        expected["worker"] = aws["workers"]["vcpus"] * aws["workers"]["min"]
    if aws.get("order_shards"):
        expected["shard"] = aws["order_shards"]["vcpus"] * aws["order_shards"]["count"]
    if aws.get("federated"):
        expected["federated"] = aws["federated"]["vcpus"] * aws["federated"]["databases"]
    for name, vcpus in expected.items():
        assert derived.budgets[name] == pytest.approx(vcpus * derived.scale, abs=0.001), name
    if number in sizes.SCALED_AS:
        # Scaled by the factor of the stage it is compared with (stage 8 as 7).
        assert derived.scale == sizes.derive(AWS[sizes.SCALED_AS[number]]).scale
        assert any(f"scaled as stage {sizes.SCALED_AS[number]}" in n for n in derived.notes)
    else:
        # The scaled components share the same slice of this machine at every other stage.
        total = sum(derived.budgets[n] for n in expected)
        assert total == pytest.approx(sizes.MODEL_CPUS, abs=0.005)
    # Managed services are stand-ins with a fixed budget, never scaled.
    for stand_in, present in (("nginx", aws["load_balancer"]), ("cdn", aws["edge"])):
        assert derived.budgets.get(stand_in) == (sizes.MANAGED_CPUS if present else None)


def test_a_bigger_database_on_aws_is_a_bigger_budget_here() -> None:
    """The budgets follow the sizes, not the stage's number: the same stage with a database
    twice as big gets a primary twice the app's share."""
    aws = copy.deepcopy(AWS[3])
    before = sizes.derive(aws)
    aws["database"]["vcpus"] *= 2
    after = sizes.derive(aws)
    ratio_before = before.budgets["postgres"] / before.app_cpus
    ratio_after = after.budgets["postgres"] / after.app_cpus
    assert ratio_after == pytest.approx(2 * ratio_before, rel=0.02)


@pytest.mark.parametrize("number", sorted(STAGES))
def test_a_stage_from_the_stacks_runs_its_processes_at_the_derived_budgets(number: int) -> None:
    stage = sizes.from_stacks(STAGES[number])
    derived = sizes.derive(AWS[number])
    assert (stage.number, stage.name, stage.probe) == (
        number,
        STAGES[number].name,
        STAGES[number].probe,
    )
    assert stage.budgets() == pytest.approx(derived.budgets, abs=0.002)


def test_an_autoscaled_fleet_runs_the_largest_slice_that_fits_and_says_so() -> None:
    aws = AWS[6]
    derived = sizes.derive(aws)
    stage = sizes.from_stacks(STAGES[6])
    assert aws["web"]["min"] < derived.max_app_processes <= aws["web"]["max"]
    assert stage.total_cpus() <= sizes.MACHINE_CPUS + 0.001
    if derived.max_app_processes < aws["web"]["max"]:
        assert any(f"of the stack's {aws['web']['max']} instances" in n for n in derived.notes)


def test_the_table_names_every_stage_and_what_its_mapping_changed() -> None:
    table = sizes.table()
    assert table.count("\n") == 2 + len(STAGES)
    assert "one local replica" in table and "outside the budgets" in table
