"""`cdk destroy` leaves nothing behind, and `cdk deploy --all` needs no parameters."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest
from shop_infra.stages import STAGES

from .conftest import INFRA

WITH_RDS = [s.number for s in STAGES if s.database]
NAMES = [s.stack_id for s in STAGES] + ["Shop-LoadGen"]


@pytest.fixture(scope="module")
def templates(synthesized, loadgen) -> dict[str, dict[str, Any]]:
    """Every stack the app can make, by name: the stages and the load generator."""
    return {**{s.stage.stack_id: s.template for s in synthesized.values()}, "Shop-LoadGen": loadgen}


def _of_type(template: dict[str, Any], type_: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == type_:
            yield logical_id, resource


@pytest.mark.parametrize("name", NAMES)
def test_every_log_group_is_deleted_with_the_stack(templates, name):
    groups = list(_of_type(templates[name], "AWS::Logs::LogGroup"))
    assert groups
    for logical_id, group in groups:
        assert group.get("DeletionPolicy") == "Delete", logical_id
        assert group.get("UpdateReplacePolicy") == "Delete", logical_id


@pytest.mark.parametrize("name", NAMES)
def test_every_function_logs_to_a_log_group_of_the_stack(templates, name):
    """Left alone, Lambda makes /aws/lambda/<function> itself, and no stack ever deletes it:
    every function, CDK's helpers included, writes to a group the stack owns instead."""
    template = templates[name]
    groups = {logical_id for logical_id, _ in _of_type(template, "AWS::Logs::LogGroup")}
    for logical_id, function in _of_type(template, "AWS::Lambda::Function"):
        target = function["Properties"].get("LoggingConfig", {}).get("LogGroup")
        assert isinstance(target, dict) and target.get("Ref") in groups, logical_id


@pytest.mark.parametrize("number", WITH_RDS)
def test_the_database_logs_to_a_log_group_made_before_it_and_deleted_after_it(synthesized, number):
    """RDS makes /aws/rds/instance/<id>/<log> itself when it exports a log; a stack-owned group
    of that name, which the instance depends on, is there first and goes last."""
    template = synthesized[number].template
    names = {
        group["Properties"].get("LogGroupName"): logical_id
        for logical_id, group in _of_type(template, "AWS::Logs::LogGroup")
    }
    exporting = [
        (logical_id, instance)
        for logical_id, instance in _of_type(template, "AWS::RDS::DBInstance")
        if instance["Properties"].get("EnableCloudwatchLogsExports")
    ]
    assert exporting
    for logical_id, instance in exporting:
        props = instance["Properties"]
        identifier = props["DBInstanceIdentifier"]
        assert isinstance(identifier, str) and identifier == identifier.lower(), logical_id
        for log in props["EnableCloudwatchLogsExports"]:
            group = names.get(f"/aws/rds/instance/{identifier}/{log}")
            assert group is not None, (logical_id, log)
            assert group in instance.get("DependsOn", []), (logical_id, log)


@pytest.mark.parametrize("name", NAMES)
def test_every_bucket_is_emptied_and_deleted_with_the_stack(templates, name):
    template = templates[name]
    emptied = {
        resource["Properties"]["BucketName"]["Ref"]
        for _, resource in _of_type(template, "Custom::S3AutoDeleteObjects")
    }
    for logical_id, bucket in _of_type(template, "AWS::S3::Bucket"):
        assert bucket.get("DeletionPolicy") == "Delete", logical_id
        assert logical_id in emptied, logical_id


@pytest.mark.parametrize("name", NAMES)
def test_late_access_logs_cannot_fail_a_bucket_deletion(templates, name):
    """The helper that empties a bucket first denies every s3:PutObject in its policy. That
    policy is kept until the bucket itself is deleted (which deletes the policy with it), so
    an access log delivered late is refused instead of landing in a bucket being deleted."""
    template = templates[name]
    emptied = {
        resource["Properties"]["BucketName"]["Ref"]
        for _, resource in _of_type(template, "Custom::S3AutoDeleteObjects")
    }
    for logical_id, policy in _of_type(template, "AWS::S3::BucketPolicy"):
        if policy["Properties"]["Bucket"].get("Ref") in emptied:
            assert policy.get("DeletionPolicy") == "Retain", logical_id
            assert policy.get("UpdateReplacePolicy") == "Retain", logical_id


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_every_stage_deploys_without_parameters(synthesized, stage):
    parameters = synthesized[stage.number].template.get("Parameters", {})
    assert all("Default" in parameter for parameter in parameters.values())


def _app_module():
    spec = importlib.util.spec_from_file_location("cdk_app", INFRA / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("wanted", "stages", "loadgen"),
    [
        (None, [s.number for s in STAGES], False),
        ("3", [3], False),
        ("loadgen", [], True),
        ("5,loadgen", [5], True),
    ],
)
def test_the_load_generator_is_made_only_when_named(wanted, stages, loadgen):
    """`cdk deploy --all` deploys what the app makes: the load generator, which needs the
    stage's URL (TargetUrl, no default), is made only with -c shop:stages=...,loadgen."""
    chosen, with_loadgen = _app_module().chosen(wanted)
    assert [s.number for s in chosen] == stages
    assert with_loadgen is loadgen
