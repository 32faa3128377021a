"""Rollouts that check themselves: blue/green pins, shift steps, the health gate (stages 6-7)."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from shop_infra.stack import DEFAULT_REGION, SHIFT_STEPS
from shop_infra.stages import STAGES

from .conftest import INFRA, Synthesized, _context, _synth

DOCS = Path(__file__).resolve().parents[2] / "docs" / "aws.md"
BLUE_GREEN = [stage.number for stage in STAGES if stage.fleet.blue_green]


class Evaluate:
    """Just enough of CloudFormation to evaluate conditions, Fn::If and Fn::FindInMap."""

    def __init__(self, template: dict[str, Any], parameters: dict[str, str]) -> None:
        self.template = template
        self.parameters = {
            name: str(spec.get("Default", "")) for name, spec in template["Parameters"].items()
        } | parameters

    def __call__(self, value: Any) -> Any:
        if not isinstance(value, dict) or len(value) != 1:
            return value
        [(function, argument)] = value.items()
        if function == "Ref" and argument in self.parameters:
            return self.parameters[argument]
        if function == "Condition":
            return self.condition(argument)
        if function == "Fn::Equals":
            return str(self(argument[0])) == str(self(argument[1]))
        if function == "Fn::Not":
            return not self(argument[0])
        if function == "Fn::And":
            return all(self(part) for part in argument)
        if function == "Fn::Or":
            return any(self(part) for part in argument)
        if function == "Fn::If":
            return self(argument[1] if self.condition(argument[0]) else argument[2])
        if function == "Fn::Join":
            return argument[0].join(str(self(part)) for part in argument[1])
        if function == "Fn::FindInMap":
            mapping, key, attribute = (self(part) for part in argument)
            return self.template["Mappings"][mapping][key][attribute]
        return value

    def condition(self, name: str) -> bool:
        return bool(self(self.template["Conditions"][name]))


def _groups(synth: Synthesized) -> dict[str, dict[str, Any]]:
    return {
        colour: next(
            group
            for logical_id, group in synth.resources("AWS::AutoScaling::AutoScalingGroup").items()
            if logical_id.startswith(f"{colour.title()}Group")
        )
        for colour in ("blue", "green")
    }


def _weights(synth: Synthesized, evaluate: Evaluate) -> dict[str, int]:
    """Listener weight per colour, keyed by the colour's target group logical id prefix."""
    [listener] = synth.resources("AWS::ElasticLoadBalancingV2::Listener").values()
    [action] = listener["Properties"]["DefaultActions"]
    weights = {}
    for target in action["ForwardConfig"]["TargetGroups"]:
        [colour] = [c for c in ("blue", "green") if c.title() in target["TargetGroupArn"]["Ref"]]
        weights[colour] = int(evaluate(target["Weight"]))
    return weights


@pytest.mark.parametrize("number", BLUE_GREEN)
def test_a_plain_deploy_is_refused_while_neither_colour_is_pinned(synthesized, number):
    """After the first deploy, `cdk deploy` keeps the previous parameter values: with both
    images empty, one new build would roll both colours at once. A Rule refuses that."""
    template = synthesized[number].template
    rule = template["Rules"]["OneColourTakesTheBuild"]
    [assertion] = rule["Assertions"]
    for blue, green, allowed in [
        ("", "", False),
        ("repo:old", "", True),
        ("", "repo:old", True),
        ("repo:a", "repo:b", True),
    ]:
        evaluate = Evaluate(template, {"BlueImage": blue, "GreenImage": green})
        assert evaluate(assertion["Assert"]) is allowed
    assert "pin" in assertion["AssertDescription"]


def test_the_first_deploy_alone_may_leave_both_colours_unpinned(tmp_path, image_context):
    """`-c shop:first_deploy=true`: nothing runs yet, so both colours may take the build."""
    stage = STAGES[5]
    outdir = _synth(
        tmp_path,
        image_context,
        [stage],
        env=cdk.Environment(region=DEFAULT_REGION),
        first_deploy=True,
    )
    template = Synthesized(stage, *_read(outdir, stage.stack_id)).template
    assert "OneColourTakesTheBuild" not in template["Rules"]
    assert {"BlueImage", "GreenImage"} <= set(template["Parameters"])


def _read(outdir: Path, stack_id: str) -> tuple[dict[str, Any], Path]:
    path = outdir / f"{stack_id}.template.json"
    return json.loads(path.read_text()), path


@pytest.mark.parametrize("number", BLUE_GREEN)
def test_traffic_moves_to_the_idle_colour_in_steps(synthesized, number):
    synth = synthesized[number]
    params = synth.template["Parameters"]
    assert params["LiveColour"]["AllowedValues"] == ["blue", "green"]
    assert params["ShiftPercent"]["AllowedValues"] == [str(p) for p in SHIFT_STEPS]
    assert SHIFT_STEPS == (0, 10, 50, 100)
    for live, shift in itertools.product(("blue", "green"), SHIFT_STEPS):
        evaluate = Evaluate(synth.template, {"LiveColour": live, "ShiftPercent": str(shift)})
        idle = "green" if live == "blue" else "blue"
        assert _weights(synth, evaluate) == {live: 100 - shift, idle: shift}


@pytest.mark.parametrize("number", BLUE_GREEN)
def test_the_idle_colour_is_sized_to_the_live_one_before_it_takes_traffic(synthesized, number):
    """IdleSize is the idle colour's minimum: set to the live colour's desired capacity, the
    idle colour is as big as the live one before the first step moves any traffic."""
    synth = synthesized[number]
    fleet = synth.stage.fleet
    size = synth.template["Parameters"]["IdleSize"]
    assert (size["Type"], size["Default"]) == ("String", "1")
    assert size["AllowedValues"] == [str(n) for n in range(1, fleet.max_size + 1)]
    for live, idle_size in itertools.product(("blue", "green"), ("1", "6")):
        evaluate = Evaluate(synth.template, {"LiveColour": live, "IdleSize": idle_size})
        minimum = {c: int(evaluate(g["Properties"]["MinSize"])) for c, g in _groups(synth).items()}
        idle = "green" if live == "blue" else "blue"
        assert minimum == {live: fleet.min_size, idle: int(idle_size)}


def _alarm_metrics(synth: Synthesized, output: str) -> list[tuple[str, str]]:
    """(metric name, target group ref or '') of each alarm the output's text names."""
    value = synth.template["Outputs"][output]["Value"]
    refs = [part["Fn::GetAtt"][0] for part in value["Fn::Join"][1] if isinstance(part, dict)]
    alarms = synth.resources("AWS::CloudWatch::Alarm")
    metrics = []
    for ref in refs:
        props = alarms[ref]["Properties"]
        if "MetricName" in props:
            metrics.append((props["MetricName"], ""))
        else:  # a colour's targets: the unhealthy count beside the healthy one
            [query] = [q for q in props["Metrics"] if q["Id"] == "unhealthy"]
            metric = query["MetricStat"]["Metric"]
            group = next(d["Value"] for d in metric["Dimensions"] if d["Name"] == "TargetGroup")
            metrics.append((metric["MetricName"], str(group)))
    return metrics


@pytest.mark.parametrize("number", BLUE_GREEN)
def test_each_shift_is_gated_on_5xx_and_the_health_of_both_colours_targets(synthesized, number):
    """The RollbackTriggers output is the `--rollback-configuration` of a shift: CloudFormation
    rolls the step back when the app's or the load balancer's 5xx alarm fires, or when either
    colour has an unhealthy target, during the step or the 10 minutes after it."""
    synth = synthesized[number]
    value = synth.template["Outputs"]["RollbackTriggers"]["Value"]["Fn::Join"]
    text = "".join(part if isinstance(part, str) else "<arn>" for part in value[1])
    assert value[0] == ""
    assert re.fullmatch(
        r"RollbackTriggers=\[(\{Arn=<arn>,Type=AWS::CloudWatch::Alarm\},?){4}\],"
        r"MonitoringTimeInMinutes=10",
        text,
    ), text
    metrics = _alarm_metrics(synth, "RollbackTriggers")
    names = sorted(name for name, _ in metrics)
    assert names == [
        "HTTPCode_ELB_5XX_Count",
        "HTTPCode_Target_5XX_Count",
        "UnHealthyHostCount",
        "UnHealthyHostCount",
    ]
    unhealthy = [group for name, group in metrics if name == "UnHealthyHostCount"]
    assert sorted("Blue" if "BlueTargets" in g else "Green" for g in unhealthy) == ["Blue", "Green"]


@pytest.mark.parametrize("number", BLUE_GREEN)
def test_every_web_group_rolls_one_instance_at_a_time_behind_healthz(synthesized, number):
    for group in _groups(synthesized[number]).values():
        rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
        assert rolling["MaxBatchSize"] == 1
        assert rolling["MinInstancesInService"] == 1
        assert rolling["WaitOnResourceSignals"] is True
        assert rolling["PauseTime"] == "PT15M"


def test_the_workers_are_pinned_like_the_colours(synthesized):
    synth = synthesized[7]
    assert synth.template["Parameters"]["WorkerImage"]["Default"] == ""
    assert "WorkerImageInUse" in synth.template["Outputs"]
    [worker_template] = [
        t for k, t in synth.resources("AWS::EC2::LaunchTemplate").items() if "Worker" in k
    ]
    assert "WorkerRunsBuild" in str(worker_template["Properties"]["LaunchTemplateData"])


def _blue_green_section() -> str:
    text = DOCS.read_text()
    return text.split("## Blue/green (stages 6 and 7)\n")[1].split("\n## ")[0]


def test_the_documented_procedure_uses_the_stacks_parameters_and_outputs(synthesized):
    """Every parameter and output the Blue/green section names exists in stage 7's template,
    and every blue/green parameter the template has is in the section."""
    section = _blue_green_section()
    template = synthesized[7].template
    named = set(re.findall(r"--parameters (\w+)=", section)) - {"ParameterKey"}
    named |= set(re.findall(r"ParameterKey=(\w+)", section))
    rollout = {"LiveColour", "ShiftPercent", "IdleSize", "BlueImage", "GreenImage", "WorkerImage"}
    assert named <= set(template["Parameters"]), named - set(template["Parameters"])
    assert rollout <= set(template["Parameters"])
    for parameter in rollout:
        assert f"`{parameter}`" in section, parameter
    outputs = set(re.findall(r"\$\(out (\w+)\)", section))
    assert "RollbackTriggers" in outputs
    assert outputs <= set(template["Outputs"]), outputs - set(template["Outputs"])
    assert "--rollback-configuration" in section
    assert "shop:first_deploy=true" in section


def test_stages_without_blue_green_have_no_rollout_parameters(synthesized):
    for stage in STAGES:
        if not stage.fleet.blue_green:
            params = synthesized[stage.number].template.get("Parameters", {})
            assert not {"LiveColour", "ShiftPercent", "IdleSize"} & set(params)
            assert "OneColourTakesTheBuild" not in synthesized[stage.number].template["Rules"]


FIXED = [stage.number for stage in STAGES if stage.load_balanced and not stage.fleet.auto_scaling]


@pytest.mark.parametrize("number", FIXED)
def test_a_fixed_fleet_is_replaced_one_instance_at_a_time_never_both(synthesized, number):
    """Stages 3-5: a group of fixed size whose rolling update takes one instance out, waits for
    its replacement's /healthz signal, then the next; the other keeps serving meanwhile. (Two
    plain instances were replaced together and swapped in the target group at once.)"""
    synth = synthesized[number]
    fleet = synth.stage.fleet
    assert not synth.resources("AWS::EC2::Instance")
    [group] = synth.resources("AWS::AutoScaling::AutoScalingGroup").values()
    props = group["Properties"]
    assert props["MinSize"] == props["MaxSize"] == str(fleet.min_size)
    assert props["HealthCheckType"] == "ELB"
    [target_group] = synth.resources("AWS::ElasticLoadBalancingV2::TargetGroup")
    assert props["TargetGroupARNs"] == [{"Ref": target_group}]
    rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert rolling["MaxBatchSize"] == 1
    assert 1 <= rolling["MinInstancesInService"] <= fleet.min_size - rolling["MaxBatchSize"]
    assert rolling["WaitOnResourceSignals"] is True
    assert group["CreationPolicy"]["ResourceSignal"]["Count"] == fleet.min_size


def _colour_alarm(synth: Synthesized, colour: str) -> dict[str, Any]:
    [alarm] = [
        a["Properties"]
        for k, a in synth.resources("AWS::CloudWatch::Alarm").items()
        if k.startswith(f"Observability{colour.title()}Targets")
    ]
    return alarm


@pytest.mark.parametrize("number", BLUE_GREEN)
def test_a_shift_is_gated_on_each_colour_having_its_minimum_of_healthy_targets(synthesized, number):
    """A colour alarms when a target is unhealthy or when fewer targets are healthy than its
    minimum: a shift to an idle colour that has not reached IdleSize healthy instances rolls
    back, so the idle colour is scaled up before it takes traffic, not after."""
    synth = synthesized[number]
    fleet = synth.stage.fleet
    for colour, live, idle_size in itertools.product(
        ("blue", "green"), ("blue", "green"), ("1", "5")
    ):
        alarm = _colour_alarm(synth, colour)
        assert alarm["Threshold"] == 1
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        queries = {q["Id"]: q for q in alarm["Metrics"]}
        expression = next(q for q in alarm["Metrics"] if "Expression" in q)["Expression"]
        evaluate = Evaluate(synth.template, {"LiveColour": live, "IdleSize": idle_size})
        minimum = fleet.min_size if colour == live else int(idle_size)
        text = "".join(str(evaluate(part)) for part in expression["Fn::Join"][1])
        assert text == f"MAX([unhealthy, {minimum} - healthy])", text
        names = {queries[i]["MetricStat"]["Metric"]["MetricName"] for i in ("unhealthy", "healthy")}
        assert names == {"UnHealthyHostCount", "HealthyHostCount"}
        for i in ("unhealthy", "healthy"):
            dimensions = queries[i]["MetricStat"]["Metric"]["Dimensions"]
            group = next(d["Value"] for d in dimensions if d["Name"] == "TargetGroup")
            assert f"{colour.title()}Targets" in str(group)


def test_the_cdk_app_passes_shop_first_deploy_to_the_stack(tmp_path):
    """`cdk deploy -c shop:first_deploy=true` is the only way to leave both colours unpinned."""
    context = {**_context(), "shop:stages": "6", "shop:first_deploy": "true"}
    run = subprocess.run(
        [sys.executable, str(INFRA / "app.py")],
        env={
            **os.environ,
            "CDK_CONTEXT_JSON": json.dumps(context),
            "CDK_OUTDIR": str(tmp_path),
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    template = json.loads((tmp_path / f"{STAGES[5].stack_id}.template.json").read_text())
    assert "OneColourTakesTheBuild" not in template["Rules"]
