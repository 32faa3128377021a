"""What the CloudWatch agent of every instance is told to do, and what its role lets it do.

Read from the synthesized templates: each boot script's agent configuration (log files, memory
and disk, the Prometheus scrape, the OTLP receiver for X-Ray), the environment it gives the app,
and the IAM policies of the web and worker roles.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from shop_infra.constructs.agent import (
    CONTAINER_NETWORK,
    HOST_ADDRESS,
    NAMESPACE,
    PROMETHEUS_CONFIG,
    WEB_METRICS,
    WORKER_METRICS,
)
from shop_infra.constructs.compute import LOOPBACK_PORT, WORKER_METRICS_PORT
from shop_infra.stages import STAGES

from .test_boot_path import boot_scripts

USER_DATA_LIMIT = 16 * 1024
"""EC2 takes at most 16 KB of user data (before base64)."""


def _between(script: str, start: str, end: str) -> str:
    return script.split(start, 1)[1].split(end, 1)[0]


def _agents(synth) -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """Logical id of each instance or group -> (its boot script, agent config, scrape config)."""
    return {
        logical_id: (
            script,
            json.loads(_between(script, "<<'AGENT' || return 1\n", "\nAGENT\n")),
            json.loads(_between(script, "<<'PROMETHEUS' || return 1\n", "\nPROMETHEUS\n")),
        )
        for logical_id, script in boot_scripts(synth).items()
    }


def _tier(logical_id: str) -> str:
    return "Workers" if logical_id.startswith("Worker") else "Web"


def _log_group(synth, prefix: str) -> str:
    [logical_id] = [k for k in synth.resources("AWS::Logs::LogGroup") if k.startswith(prefix)]
    return logical_id


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_every_instance_ships_its_boot_logs_to_its_tier_log_group(synthesized, stage):
    synth = synthesized[stage.number]
    for logical_id, (_, config, _) in _agents(synth).items():
        group = f"ref-{_log_group(synth, _tier(logical_id) + 'Logs')}"
        files = config["logs"]["logs_collected"]["files"]["collect_list"]
        assert {(f["file_path"], f["log_group_name"], f["log_stream_name"]) for f in files} == {
            ("/var/log/cloud-init-output.log", group, "{hostname}-boot"),
            ("/var/log/cloud-init.log", group, "{hostname}-cloud-init"),
        }


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_memory_and_root_disk_are_published_per_group_in_the_shop_namespace(synthesized, stage):
    for logical_id, (_, config, _) in _agents(synthesized[stage.number]).items():
        metrics = config["metrics"]
        assert metrics["namespace"] == NAMESPACE
        collected = metrics["metrics_collected"]
        assert collected["mem"]["measurement"] == ["mem_used_percent"]
        assert collected["disk"]["measurement"] == ["used_percent"]
        assert collected["disk"]["resources"] == ["/"]
        # A group's instances share their metrics (no per-instance dimension, no host name);
        # the single box of stages 1-2 is in no group and is named by its instance id.
        in_group = "ASG" in logical_id
        expected = "AutoScalingGroupName" if in_group else "InstanceId"
        assert metrics["append_dimensions"] == {expected: "${aws:" + expected + "}"}
        assert config["agent"]["omit_hostname"] is True


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_the_app_metrics_scraped_are_the_named_ones_from_its_own_port(synthesized, stage):
    synth = synthesized[stage.number]
    for logical_id, (_, config, scrape) in _agents(synth).items():
        worker = _tier(logical_id) == "Workers"
        named = WORKER_METRICS if worker else WEB_METRICS
        port = WORKER_METRICS_PORT if worker else LOOPBACK_PORT
        prometheus = config["logs"]["metrics_collected"]["prometheus"]
        assert prometheus["prometheus_config_path"] == PROMETHEUS_CONFIG
        assert (
            prometheus["log_group_name"]
            == f"ref-{_log_group(synth, _tier(logical_id) + 'AppMetrics')}"
        )
        emf = prometheus["emf_processor"]
        assert emf["metric_namespace"] == NAMESPACE
        selected = [s for d in emf["metric_declaration"] for s in d["metric_selectors"]]
        assert selected == [f"^{metric.name}$" for metric in named]
        for declaration in emf["metric_declaration"]:
            assert declaration["dimensions"][0][:2] == ["Stack", "Tier"]
        [job] = scrape["scrape_configs"]
        [targets] = job["static_configs"]
        assert targets["targets"] == [f"127.0.0.1:{port}"] and job["metrics_path"] == "/metrics"
        assert targets["labels"] == {
            "Stack": stage.stack_id,
            "Tier": "worker" if worker else "web",
        }
        # Whatever else the endpoint serves is dropped before it becomes a (paid) log event.
        [keep] = job["metric_relabel_configs"]
        assert keep["action"] == "keep"
        assert set(keep["regex"].split("|")) == {metric.name for metric in named}


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_traces_are_received_on_the_container_network_gateway_only(synthesized, stage):
    # Not 0.0.0.0: the gateway of the docker network the app's container is on, which nothing
    # outside the instance routes to.
    gateway = ipaddress.ip_address(HOST_ADDRESS)
    assert gateway == next(ipaddress.ip_network(CONTAINER_NETWORK).hosts())
    for script, config, _ in _agents(synthesized[stage.number]).values():
        assert (
            f"docker network create --subnet {CONTAINER_NETWORK} --gateway {HOST_ADDRESS} shop"
            in script
        )
        otlp = config["traces"]["traces_collected"]["otlp"]
        assert otlp == {
            "http_endpoint": f"{HOST_ADDRESS}:4318",
            "grpc_endpoint": f"{HOST_ADDRESS}:4317",
        }
        settings = _between(script, "<<'ENV'\n", "\nENV\n").splitlines()
        assert f"SHOP_OTLP_ENDPOINT=http://{HOST_ADDRESS}:4318" in settings
        assert "SHOP_TRACE_SAMPLE_RATIO=0.05" in settings


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_every_boot_script_fits_in_user_data(synthesized, stage):
    for logical_id, script in boot_scripts(synthesized[stage.number]).items():
        # References stand in as short names here: leave room for the real ARNs and URIs.
        assert len(script.encode()) < USER_DATA_LIMIT - 2048, logical_id


def _statements(synth, role_prefix: str) -> list[dict[str, Any]]:
    roles = {k for k in synth.resources("AWS::IAM::Role") if k.startswith(role_prefix)}
    assert roles
    found = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        if {role["Ref"] for role in policy["Properties"]["Roles"]} & roles:
            found += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else action


def _tiers(stage) -> list[str]:
    return ["WebRole", "WorkersRole"] if stage.workers else ["WebRole"]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_web_and_worker_roles_may_write_traces_and_nothing_else_of_x_ray(synthesized, stage):
    for role in _tiers(stage):
        xray = [
            action
            for statement in _statements(synthesized[stage.number], role)
            for action in _actions(statement)
            if action.startswith("xray:")
        ]
        assert sorted(xray) == ["xray:PutTelemetryRecords", "xray:PutTraceSegments"], role


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_metrics_go_to_the_shop_namespace_and_logs_to_the_stack_log_groups(synthesized, stage):
    synth = synthesized[stage.number]
    groups = set(synth.resources("AWS::Logs::LogGroup"))
    for role in _tiers(stage):
        statements = _statements(synth, role)
        [metrics] = [s for s in statements if "cloudwatch:PutMetricData" in _actions(s)]
        assert _actions(metrics) == ["cloudwatch:PutMetricData"]
        assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": NAMESPACE}}
        writes = [s for s in statements if any(a.startswith("logs:") for a in _actions(s))]
        assert writes
        for statement in writes:
            assert set(_actions(statement)) == {"logs:CreateLogStream", "logs:PutLogEvents"}
            resources = statement["Resource"]
            resources = resources if isinstance(resources, list) else [resources]
            assert {r["Fn::GetAtt"][0] for r in resources} <= groups
            assert all(r["Fn::GetAtt"][1] == "Arn" for r in resources)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_the_metrics_log_groups_keep_as_long_and_go_with_the_stack(synthesized, stage):
    synth = synthesized[stage.number]
    groups = synth.resources("AWS::Logs::LogGroup")
    for tier in [t.removesuffix("Role") for t in _tiers(stage)]:
        logs = groups[_log_group(synth, f"{tier}Logs")]
        metrics = groups[_log_group(synth, f"{tier}AppMetrics")]
        assert metrics["Properties"]["RetentionInDays"] == logs["Properties"]["RetentionInDays"]
        assert metrics["DeletionPolicy"] == "Delete" == logs["DeletionPolicy"]


def _dashboard_metrics(synth) -> list[list[Any]]:
    """Every metric line of the stage's dashboard, references shown as {"Ref": id}."""
    [dashboard] = synth.resources("AWS::CloudWatch::Dashboard").values()
    parts = dashboard["Properties"]["DashboardBody"]["Fn::Join"][1]
    body = json.loads(
        "".join(p if isinstance(p, str) else json.dumps(json.dumps(p))[1:-1] for p in parts)
    )
    return [line for widget in body["widgets"] for line in widget["properties"].get("metrics", [])]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_the_dashboard_graphs_memory_and_disk_of_every_group_or_box(synthesized, stage):
    synth = synthesized[stage.number]
    launched = set(synth.resources("AWS::EC2::Instance")) | set(
        synth.resources("AWS::AutoScaling::AutoScalingGroup")
    )
    graphed = {
        name: {
            json.loads(line[3])["Ref"]
            for line in _dashboard_metrics(synth)
            if line[:2] == [NAMESPACE, name]
        }
        for name in ("mem_used_percent", "disk_used_percent")
    }
    assert graphed == {"mem_used_percent": launched, "disk_used_percent": launched}
