"""What an operator sees and hears: dashboard graphs, alarms that notify someone, cost tags."""

from __future__ import annotations

import json
import re
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER
from shop_infra.constructs.observability import COST_TAG
from shop_infra.stack import DEFAULT_REGION, ShopStack
from shop_infra.stages import STAGES, stage

from .conftest import _context


def _flatten(value: Any) -> str:
    """A CloudFormation string value with references shown as <name>."""
    if isinstance(value, str):
        return value
    [(function, argument)] = value.items()
    if function == "Fn::Join":
        return argument[0].join(_flatten(part) for part in argument[1])
    if function == "Ref":
        return f"<{argument}>"
    if function == "Fn::GetAtt":
        return f"<{argument[0]}.{argument[1]}>"
    return "<token>"


def dashboard_metrics(synth) -> list[list]:
    """Every metric line of every graph on the stage's dashboard, as CloudWatch reads them."""
    [dashboard] = synth.resources("AWS::CloudWatch::Dashboard").values()
    body = json.loads(_flatten(dashboard["Properties"]["DashboardBody"]))
    return [
        line
        for widget in body["widgets"]
        for line in widget["properties"].get("metrics", [])
        if widget["type"] == "metric" and "annotations" not in widget["properties"]
    ]


def _alarms(synth) -> dict[str, dict]:
    """The stage's own alarms (not the ones Auto Scaling policies create for themselves)."""
    return {
        k: v["Properties"]
        for k, v in synth.resources("AWS::CloudWatch::Alarm").items()
        if k.startswith("Observability")
    }


BALANCED = [s for s in STAGES if s.load_balanced]


@pytest.mark.parametrize("each", BALANCED, ids=lambda s: s.stack_id)
def test_the_load_balancers_own_5xx_are_graphed_and_alarmed(synthesized, each):
    synth = synthesized[each.number]
    graphed = [line[:2] for line in dashboard_metrics(synth)]
    assert ["AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count"] in graphed
    assert ["AWS/ApplicationELB", "HTTPCode_Target_5XX_Count"] in graphed
    alarmed = {
        props.get("MetricName"): props
        for props in _alarms(synth).values()
        if props.get("Namespace") == "AWS/ApplicationELB"
    }
    assert alarmed["HTTPCode_ELB_5XX_Count"]["Statistic"] == "Sum"
    assert "HTTPCode_Target_5XX_Count" in alarmed


@pytest.mark.parametrize("each", STAGES, ids=lambda s: s.stack_id)
def test_cloudfront_requests_and_errors_are_on_the_dashboard_from_stage_5(synthesized, each):
    lines = [
        line for line in dashboard_metrics(synthesized[each.number]) if "AWS/CloudFront" in line
    ]
    if not each.edge:
        assert lines == []
        return
    names = {line[1] for line in lines}
    assert {"Requests", "5xxErrorRate", "4xxErrorRate", "TotalErrorRate"} <= names
    for line in lines:
        # CloudFront's metrics exist only in us-east-1, under Region=Global.
        dimensions = dict(zip(line[2:-1:2], line[3:-1:2], strict=True))
        assert dimensions["Region"] == "Global"
        assert dimensions["DistributionId"].startswith("<Edge")
        assert line[-1]["region"] == "us-east-1"


def test_stage_5_alarms_on_cloudfronts_5xx_rate_in_us_east_1(synthesized):
    [alarm] = [
        props
        for props in _alarms(synthesized[5]).values()
        if props.get("Namespace") == "AWS/CloudFront"
    ]
    assert alarm["MetricName"] == "5xxErrorRate"
    dimensions = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
    assert dimensions["Region"] == "Global"


def test_stage_8_watches_each_shards_replica_as_main_watches_its_own(synthesized):
    """Each shard replica's CPU and lag on the dashboard, and a lag alarm per shard at the same
    threshold as main's replicas' (the lag past which the app stops reading a replica)."""
    synth = synthesized[8]
    instances = synth.resources("AWS::RDS::DBInstance")
    replicas = sorted(
        k for k, r in instances.items() if "SourceDBInstanceIdentifier" in r["Properties"]
    )
    shard_replicas = [k for k in replicas if k.startswith("OrderShard")]
    assert len(shard_replicas) == 2 and len(replicas) == 4
    graphed = dashboard_metrics(synth)
    for replica in replicas:
        identifier = ["DBInstanceIdentifier", f"<{replica}>"]
        for name in ("CPUUtilization", "ReplicaLag"):
            assert any(
                line[:2] == ["AWS/RDS", name] and line[2:4] == identifier for line in graphed
            ), (replica, name)
    alarms = _alarms(synth)
    [main] = [v for k, v in alarms.items() if k.startswith("ObservabilityReplicaLagHigh")]
    for number, replica in enumerate(shard_replicas, start=1):
        assert replica.startswith(f"OrderShard{number}Replica")
        [alarm] = [
            v
            for k, v in alarms.items()
            if k.startswith(f"ObservabilityOrderShard{number}ReplicaLag")
        ]
        assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/RDS", "ReplicaLag")
        assert alarm["Dimensions"] == [{"Name": "DBInstanceIdentifier", "Value": {"Ref": replica}}]
        assert alarm["Threshold"] == main["Threshold"] == 5
        assert alarm["ComparisonOperator"] == main["ComparisonOperator"]
        assert f"order shard {number}" in alarm["AlarmDescription"]


@pytest.mark.parametrize("each", STAGES, ids=lambda s: s.stack_id)
def test_every_alarm_notifies_the_stages_topic(synthesized, each):
    synth = synthesized[each.number]
    [topic_id] = synth.resources("AWS::SNS::Topic")
    alarms = _alarms(synth)
    assert alarms
    for logical_id, props in alarms.items():
        assert props["AlarmActions"] == [{"Ref": topic_id}], logical_id
        assert props["OKActions"] == [{"Ref": topic_id}], logical_id
    # Without an address nobody is subscribed yet (see the next test).
    assert not synth.resources("AWS::SNS::Subscription")
    [policy] = synth.resources("AWS::SNS::TopicPolicy").values()
    [statement] = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_an_alarm_email_from_context_subscribes_to_the_topic():
    app = cdk.App(context=_context())
    box = ShopStack(
        app,
        stage=stage(1),
        image_directory=_stub_image(),
        alarm_email="oncall@example.com",
        env=cdk.Environment(region=DEFAULT_REGION),
    )
    template = Template.from_stack(box)
    [topic_id] = template.find_resources("AWS::SNS::Topic")
    template.has_resource_properties(
        "AWS::SNS::Subscription",
        {"Protocol": "email", "Endpoint": "oncall@example.com", "TopicArn": {"Ref": topic_id}},
    )


def _stub_image():
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    (folder / "Dockerfile").write_text("FROM scratch\n")
    return folder


# --- cost allocation ---------------------------------------------------------------------------


def _tags(resource_type: str, props: dict) -> dict[str, str] | None:
    """The tags a resource is given, by its CloudFormation schema; None if it takes none."""
    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(DEFAULT_REGION, resource_type).schema
    tagging = schema.get("tagging", {})
    if not tagging.get("taggable", False):
        return None
    path = tagging.get("tagProperty", "/properties/Tags").split("/")[2:]
    value: Any = props
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if value is None:
        return {}
    if isinstance(value, dict):  # a map of key -> value
        return dict(value)
    found = {}
    for tag in value:
        if "Key" in tag:
            found[tag["Key"]] = tag["Value"]
        for inner in tag.get("Tags", []):  # tag specifications
            found[inner["Key"]] = inner["Value"]
    return found


@pytest.mark.parametrize("each", STAGES, ids=lambda s: s.stack_id)
def test_every_taggable_resource_carries_the_stage_cost_tag(synthesized, each):
    untagged = []
    for logical_id, resource in synthesized[each.number].template["Resources"].items():
        if resource["Type"].startswith("Custom::") or "::" not in resource["Type"]:
            continue
        tags = _tags(resource["Type"], resource.get("Properties", {}))
        if tags is not None and tags.get(COST_TAG) != each.name:
            untagged.append(f"{logical_id} ({resource['Type']})")
    assert untagged == [], untagged


@pytest.mark.parametrize("number", [3, 4, 5, 6, 7])
def test_instances_and_volumes_launched_by_groups_carry_the_cost_tag(synthesized, number):
    synth = synthesized[number]
    for group in synth.resources("AWS::AutoScaling::AutoScalingGroup").values():
        tags = {t["Key"]: t for t in group["Properties"]["Tags"]}
        assert tags[COST_TAG]["PropagateAtLaunch"] is True
    for template in synth.resources("AWS::EC2::LaunchTemplate").values():
        specs = template["Properties"]["LaunchTemplateData"]["TagSpecifications"]
        tagged = {
            spec["ResourceType"]
            for spec in specs
            if {"Key": COST_TAG, "Value": synth.stage.name} in spec["Tags"]
        }
        assert {"instance", "volume"} <= tagged


def test_fixed_instances_pass_the_cost_tag_to_their_volumes(synthesized):
    [instance] = synthesized[2].resources("AWS::EC2::Instance").values()  # the single box
    assert instance["Properties"]["PropagateTagsToVolumeOnCreation"] is True
    assert re.search(COST_TAG, json.dumps(instance["Properties"]["Tags"]))
