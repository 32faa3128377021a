"""The cost table of docs/aws.md is computed from the catalog, and stays equal to it."""

import itertools
from pathlib import Path

import cost
import pytest
from shop_infra.constructs.agent import WEB_METRICS, WORKER_METRICS
from shop_infra.stages import STAGES

README = Path(__file__).resolve().parents[2] / "docs" / "aws.md"


def test_the_readme_cost_table_is_the_one_computed_from_the_catalog():
    text = README.read_text()
    table = text.split("<!-- cost-table:start -->\n")[1].split("\n<!-- cost-table:end -->")[0]
    assert table == cost.table(), "run `python infra/cost.py` and paste its output"


def test_each_stage_costs_more_per_hour_than_the_one_before():
    hourly = [cost.hourly(stage) for stage in STAGES]
    assert all(a < b for a, b in itertools.pairwise(hourly))


def _alarms(stage) -> int:
    [item] = [item for item in cost.line_items(stage) if item.name.startswith("dashboard + ")]
    return int(item.name.split()[2])


def test_stage_8_pays_for_the_alarms_and_secrets_its_databases_add(synthesized):
    """Checked against the templates: what stage 8 adds over stage 7 in alarms and secrets."""
    before, after = synthesized[7], synthesized[8]
    added_alarms = len(after.resources("AWS::CloudWatch::Alarm")) - len(
        before.resources("AWS::CloudWatch::Alarm")
    )
    assert added_alarms == 6  # each new primary's CPU, each shard's replica lag
    assert _alarms(after.stage) - _alarms(before.stage) == added_alarms
    added_secrets = len(after.resources("AWS::SecretsManager::Secret")) - len(
        before.resources("AWS::SecretsManager::Secret")
    )
    [secrets_before] = [i for i in cost.line_items(before.stage) if i.name.endswith(" secrets")]
    [secrets_after] = [i for i in cost.line_items(after.stage) if i.name.endswith(" secrets")]
    assert int(secrets_after.name.split()[0]) - int(secrets_before.name.split()[0]) == added_secrets


def test_stage_8_pays_for_each_federated_database_and_shard_with_its_standby():
    federated = STAGES[7]
    items = {item.name: item.per_hour for item in cost.line_items(federated)}
    assert items["2 x RDS db.m7g.large Multi-AZ (accounting, delivery)"] == 2 * 2 * 0.168
    assert items["2 x RDS db.m7g.large Multi-AZ (order shards)"] == 2 * 2 * 0.168
    assert "RDS gp3 (accounting, delivery)" in items and "RDS gp3 (order shards)" in items
    # One replica per shard, priced as main's replicas are (instance and storage, no standby).
    [main_replicas] = [v for k, v in items.items() if k.endswith("x RDS read replica")]
    assert items["2 x RDS read replica (order shards)"] == main_replicas  # 2 and 2, same size
    assert not any("replica (accounting" in name for name in items)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_every_read_replica_in_the_template_is_paid_for(synthesized, stage):
    """Main's replicas (stage 4 on) and, at stage 8, each order shard's."""
    replicas = [
        r
        for r in synthesized[stage.number].resources("AWS::RDS::DBInstance").values()
        if "SourceDBInstanceIdentifier" in r["Properties"]
    ]
    priced = sum(
        int(item.name.split(" x ", 1)[0])
        for item in cost.line_items(stage)
        if " x RDS read replica" in item.name
    )
    assert priced == len(replicas)


def test_a_scaling_stage_costs_more_at_its_maximum_size():
    for stage in STAGES:
        if stage.fleet.auto_scaling:
            assert cost.hourly(stage, at_max=True) > cost.hourly(stage)
        else:
            assert cost.hourly(stage, at_max=True) == cost.hourly(stage)


def _count(stage, suffix: str) -> int:
    """N of the line item named "N x <suffix>" (0 when there is none)."""
    counts = [
        int(item.name.split(" x ", 1)[0])
        for item in cost.line_items(stage)
        if item.name.endswith(f" x {suffix}")
    ]
    assert len(counts) <= 1
    return counts[0] if counts else 0


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_public_ipv4_is_paid_for_each_address_the_stack_has(synthesized, stage):
    """Elastic IPs (the box's, the NAT gateways') and an internet-facing load balancer's one
    address per AZ; an internal load balancer (behind CloudFront from stage 5) has none."""
    synth = synthesized[stage.number]
    addresses = len(synth.resources("AWS::EC2::EIP"))
    for alb in synth.resources("AWS::ElasticLoadBalancingV2::LoadBalancer").values():
        if alb["Properties"]["Scheme"] == "internet-facing":
            addresses += len(alb["Properties"]["Subnets"])
    assert _count(stage, "public IPv4") == addresses


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_detailed_monitoring_is_paid_for_every_instance_that_has_it(synthesized, stage):
    """Counted at the minimum size, as the table is: fixed instances, and each group's
    minimum with the default parameters (blue live, green idle at one instance)."""
    synth = synthesized[stage.number]
    monitored = sum(
        1 for i in synth.resources("AWS::EC2::Instance").values() if i["Properties"]["Monitoring"]
    )
    templates = synth.resources("AWS::EC2::LaunchTemplate")
    for group in synth.resources("AWS::AutoScaling::AutoScalingGroup").values():
        props = group["Properties"]
        data = templates[props["LaunchTemplate"]["LaunchTemplateId"]["Ref"]]["Properties"]
        if data["LaunchTemplateData"].get("Monitoring", {}).get("Enabled"):
            monitored += _minimum(synth.template, props["MinSize"])
    assert monitored > 0
    assert _count(stage, "EC2 detailed monitoring") == monitored


def _minimum(template, size) -> int:
    """A group's MinSize with the template's default parameters (Fn::If on the live colour)."""
    if isinstance(size, str):
        return int(size)
    [condition, if_true, if_false] = size["Fn::If"]
    live = template["Parameters"]["LiveColour"]["Default"]
    chosen = if_true if condition == f"{live.title()}IsLive" else if_false
    if isinstance(chosen, dict):  # the idle colour's IdleSize
        return int(template["Parameters"][chosen["Ref"]]["Default"])
    return int(chosen)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_the_agent_metrics_are_paid_for_each_group_and_tier_that_publishes_them(synthesized, stage):
    """Memory and disk for each Auto Scaling group or single box (whatever its size), and the
    named app metrics once per tier (its instances share them)."""
    synth = synthesized[stage.number]
    launched = synth.resources("AWS::EC2::Instance") | synth.resources(
        "AWS::AutoScaling::AutoScalingGroup"
    )
    metrics = 2 * len(launched) + sum(metric.series for metric in WEB_METRICS)
    if any(logical_id.startswith("Worker") for logical_id in launched):
        metrics += sum(metric.series for metric in WORKER_METRICS)
    [item] = [item for item in cost.line_items(stage) if "(CloudWatch agent)" in item.name]
    assert item.name.startswith(f"{metrics} custom metrics")
