"""What every instance runs: a pinned image, one app process per vCPU, keep-alive longer than the
load balancer's idle timeout, and a scaling target and CPU alarm that fit those processes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aws_cdk as cdk
import pytest
from shop_infra.constructs.compute import AMI_CONTEXT_KEY, AMI_PARAMETER
from shop_infra.stack import DEFAULT_REGION, ShopStack
from shop_infra.stages import (
    HTTP_KEEPALIVE_S,
    LOAD_BALANCER_IDLE_TIMEOUT_S,
    STAGES,
    VCPUS,
    Fleet,
    stage,
)

from .conftest import INFRA, _context
from .test_boot_path import boot_scripts

WEB = re.compile(r"shop serve --host 0\.0\.0\.0 --port 8000 --workers (\d+)\"")


def _web_scripts(synth) -> list[str]:
    return [
        script
        for logical_id, script in boot_scripts(synth).items()
        if not logical_id.startswith("WorkerGroup")
    ]


# --- one process per vCPU ----------------------------------------------------------------------


@pytest.mark.parametrize("each", STAGES, ids=lambda s: s.stack_id)
def test_the_web_tier_runs_one_app_process_per_vcpu(synthesized, each):
    scripts = _web_scripts(synthesized[each.number])
    assert scripts
    for script in scripts:
        [workers] = WEB.findall(script)
        assert int(workers) == VCPUS[each.fleet.instance_type] >= 2


def test_an_instance_type_without_a_known_vcpu_count_is_refused_at_synth():
    with pytest.raises(ValueError, match=r"unknown instance type 'r9z\.huge'.*VCPUS"):
        Fleet(instance_type="r9z.huge", min_size=1, max_size=1)


def test_the_scaling_target_is_per_process_times_the_processes(synthesized):
    fleet = stage(6).fleet
    assert fleet.requests_per_worker_per_minute is not None
    expected = fleet.requests_per_worker_per_minute * VCPUS[fleet.instance_type]
    targets = {
        policy["Properties"]["TargetTrackingConfiguration"]["TargetValue"]
        for policy in synthesized[6].resources("AWS::AutoScaling::ScalingPolicy").values()
    }
    assert targets == {expected}


@pytest.mark.parametrize("each", STAGES, ids=lambda s: s.stack_id)
def test_the_web_cpu_alarm_can_fire_with_the_processes_the_instance_runs(synthesized, each):
    # One process per vCPU can drive the instance to 100 %; a process fewer than the vCPUs
    # would cap it at processes / vCPUs, below an alarm threshold it could then never reach.
    [threshold] = [
        alarm["Properties"]["Threshold"]
        for alarm in synthesized[each.number].resources("AWS::CloudWatch::Alarm").values()
        if "web tier's CPU" in alarm["Properties"].get("AlarmDescription", "")
    ]
    [script] = _web_scripts(synthesized[each.number])[:1]
    [workers] = WEB.findall(script)
    reachable = (
        100 * min(int(workers), VCPUS[each.fleet.instance_type]) / VCPUS[each.fleet.instance_type]
    )
    assert threshold < reachable


# --- keep-alive against the load balancer's idle timeout -------------------------------------


@pytest.mark.parametrize("each", [s for s in STAGES if s.load_balanced], ids=lambda s: s.stack_id)
def test_the_app_keeps_idle_connections_longer_than_the_load_balancer(synthesized, each):
    synth = synthesized[each.number]
    [alb] = synth.resources("AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    attributes = {a["Key"]: a["Value"] for a in alb["Properties"]["LoadBalancerAttributes"]}
    idle = int(attributes["idle_timeout.timeout_seconds"])
    assert idle == LOAD_BALANCER_IDLE_TIMEOUT_S
    for script in boot_scripts(synth).values():
        [keepalive] = re.findall(r"^SHOP_HTTP_KEEPALIVE_S=(\d+)$", script, flags=re.MULTILINE)
        assert int(keepalive) == HTTP_KEEPALIVE_S > idle


@pytest.mark.parametrize("each", STAGES, ids=lambda s: s.stack_id)
def test_the_app_believes_forwarded_addresses_from_the_proxies_in_the_vpc_only(synthesized, each):
    """Behind a proxy the app saw one client, the proxy: one sign-in budget for everybody."""
    synth = synthesized[each.number]
    [vpc_id] = synth.resources("AWS::EC2::VPC")
    for script in boot_scripts(synth).values():
        [trusted] = re.findall(r"^SHOP_FORWARDED_ALLOW_IPS=(.+)$", script, flags=re.MULTILINE)
        assert trusted.split(",") == [f"{vpc_id}.CidrBlock", "172.16.0.0/12", "127.0.0.1"]


# --- the machine image is pinned ---------------------------------------------------------------


@pytest.mark.parametrize("each", STAGES, ids=lambda s: s.stack_id)
def test_instances_boot_the_ami_pinned_in_cdk_json_not_the_latest(synthesized, each):
    template = synthesized[each.number].template
    pinned = json.loads((INFRA / "cdk.json").read_text())["context"][AMI_CONTEXT_KEY]
    assert template["Mappings"]["PinnedAmi"] == {r: {"ami": ami} for r, ami in pinned.items()}
    assert re.fullmatch(r"ami-[0-9a-f]{17}", pinned[DEFAULT_REGION])
    resources = template["Resources"]
    image_ids = [
        r["Properties"]["ImageId"] for r in resources.values() if r["Type"] == "AWS::EC2::Instance"
    ] + [  # groups launch from their template; an instance's template holds only its boot script
        resources[g["Properties"]["LaunchTemplate"]["LaunchTemplateId"]["Ref"]]["Properties"][
            "LaunchTemplateData"
        ]["ImageId"]
        for g in resources.values()
        if g["Type"] == "AWS::AutoScaling::AutoScalingGroup"
    ]
    assert image_ids
    for image_id in image_ids:
        assert image_id == {"Fn::FindInMap": ["PinnedAmi", {"Ref": "AWS::Region"}, "ami"]}
    # No AMI is resolved from SSM at deploy time.
    assert "/aws/service/" not in json.dumps(template.get("Parameters", {}))


def _stack_in(region: str, context: dict, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    app = cdk.App(context=context)
    ShopStack(app, stage=stage(1), image_directory=tmp_path, env=cdk.Environment(region=region))


def test_a_region_without_a_pinned_ami_fails_at_synth_saying_how_to_pin_one(tmp_path):
    with pytest.raises(Exception) as raised:  # jsii wraps the ValueError raised in Python
        _stack_in("eu-west-1", _context(), tmp_path)
    message = str(raised.value)
    assert "no AMI pinned for region eu-west-1" in message
    assert f"aws ssm get-parameters --names {AMI_PARAMETER} --region eu-west-1" in message
    assert AMI_CONTEXT_KEY in message and "cdk.json" in message


def test_an_ami_pinned_on_the_command_line_is_used(tmp_path):
    # `cdk synth -c shop:ami='{"eu-west-1": "ami-..."}'` passes the map as a JSON string.
    context = {**_context(), AMI_CONTEXT_KEY: json.dumps({"eu-west-1": "ami-0123456789abcdef0"})}
    _stack_in("eu-west-1", context, tmp_path)  # does not raise
