"""A deployed stage as the load test sees it: its URL from the stack, its evidence from CloudWatch.

CloudFormation, EC2, RDS, Auto Scaling, ElastiCache and CloudWatch are moto's server on a free
port; the stacks are small templates whose logical ids are named the way the CDK app names them
(Instance1..., DatabasePrimary..., BlueGroupASG...), so that the stage is found as it would be.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from loadtests import deployed

REGION = "us-east-1"
STEP_S = 120.0
T0 = 1_800_000_000.0  # a whole minute, so that each step's window is its two minutes


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # The module's stacks are made before any test's own fake credentials apply (a module
    # fixture runs first): without these, one test run alone (-k) had no credentials.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _client(endpoint: str, name: str) -> Any:
    return boto3.client(name, endpoint_url=endpoint, region_name=REGION)


def _create_stack(endpoint: str, name: str, resources: dict[str, Any], outputs: dict | None = None):
    template = {"Resources": resources, "Outputs": outputs or {}}
    _client(endpoint, "cloudformation").create_stack(
        StackName=name, TemplateBody=json.dumps(template)
    )


def _target_url_output(url: str) -> dict[str, Any]:
    return {"TargetUrl": {"Value": url}}


def _queue(name: str = "Marker") -> dict[str, Any]:
    return {f"{name}Queue": {"Type": "AWS::SQS::Queue"}}


# --- the URL -----------------------------------------------------------------------------------


def test_url_prints_the_stacks_target_url(endpoint, capsys):
    _create_stack(
        endpoint, "Shop-3-horizontal", _queue(), _target_url_output("http://shop-3.example.test")
    )
    assert (
        deployed.main(["url", "Shop-3-horizontal", "--region", REGION], endpoint_url=endpoint) == 0
    )
    assert capsys.readouterr().out.strip() == "http://shop-3.example.test"


def test_url_of_a_stack_that_does_not_exist_is_one_clear_line(endpoint, capsys):
    code = deployed.main(["url", "Shop-9-nowhere", "--region", REGION], endpoint_url=endpoint)
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        f"error: no stack named Shop-9-nowhere in {REGION} (deploy it first, or pass --region)"
    )


def test_url_of_a_stack_without_the_output_says_so(endpoint, capsys):
    _create_stack(endpoint, "Shop-2-separate-db", _queue())
    code = deployed.main(["url", "Shop-2-separate-db", "--region", REGION], endpoint_url=endpoint)
    err = capsys.readouterr().err
    assert code == 2
    assert "has no TargetUrl output" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_credentials_are_one_line_not_a_stack_trace(monkeypatch, tmp_path, capsys):
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code = deployed.main(["url", "Shop-3-horizontal", "--region", REGION])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: no AWS credentials") and len(err.strip().splitlines()) == 1


# --- the evidence --------------------------------------------------------------------------------


def _put(endpoint: str, namespace: str, metric: str, dims: dict[str, str], values: list[float]):
    """One datapoint per minute from T0 (two per step of STEP_S)."""
    _client(endpoint, "cloudwatch").put_metric_data(
        Namespace=namespace,
        MetricData=[
            {
                "MetricName": metric,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
                "Timestamp": datetime.fromtimestamp(T0 + 60 * minute + 5, UTC),
                "Value": value,
            }
            for minute, value in enumerate(values)
        ],
    )


def _steps_file(tmp_path: Path, count: int) -> Path:
    lines = []
    for index in range(count):
        started = T0 + index * STEP_S
        lines.append(
            {
                "step": index + 1,
                "users": 10 * (index + 1),
                "started_at": started,
                "ended_at": started + STEP_S,
                "requests": 1000,
                "failures": 0,
                "rps": 1000 / STEP_S,
                "p50_ms": 20.0,
                "p95_ms": 80.0,
                "p99_ms": 120.0,
                "by_name": {},
            }
        )
    path = tmp_path / "steps.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _invariants_file(tmp_path: Path) -> Path:
    path = tmp_path / "invariants.json"
    path.write_text(json.dumps({"ok": True, "checks": {"no_oversell": {"ok": True, "detail": ""}}}))
    return path


def _physical(endpoint: str, stack: str) -> dict[str, str]:
    rows = _client(endpoint, "cloudformation").describe_stack_resources(StackName=stack)
    return {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in rows["StackResources"]}


@pytest.fixture(scope="module")
def stage_4(endpoint: str) -> dict[str, str]:
    """A stage-4-shaped stack: one web instance, a primary, one replica, the orders queue."""
    ami = _client(endpoint, "ec2").describe_images()["Images"][0]["ImageId"]
    _create_stack(
        endpoint,
        "Shop-4-read-replicas",
        {
            "Instance1A1B2C3D": {
                "Type": "AWS::EC2::Instance",
                "Properties": {"ImageId": ami, "InstanceType": "c7i.large"},
            },
            "DatabasePrimaryA1B2C3D4": {
                "Type": "AWS::RDS::DBInstance",
                "Properties": {
                    "DBInstanceClass": "db.m7g.xlarge",
                    "Engine": "postgres",
                    "AllocatedStorage": "20",
                    "MasterUsername": "shop",
                    "MasterUserPassword": "not-a-secret-1",
                },
            },
            "DatabaseReplica1A1B2C3D": {
                "Type": "AWS::RDS::DBInstance",
                "Properties": {
                    "DBInstanceClass": "db.m7g.xlarge",
                    "SourceDBInstanceIdentifier": {"Ref": "DatabasePrimaryA1B2C3D4"},
                },
            },
            "OrdersQueueA1B2C3D4": {"Type": "AWS::SQS::Queue"},
            "OrdersDeadLettersA1B2C3D4": {"Type": "AWS::SQS::Queue"},
        },
        _target_url_output("http://shop-4.example.test"),
    )
    names = _physical(endpoint, "Shop-4-read-replicas")
    queue = names["OrdersQueueA1B2C3D4"].rsplit("/", 1)[-1]
    primary, replica = names["DatabasePrimaryA1B2C3D4"], names["DatabaseReplica1A1B2C3D"]
    # Step 1 (minutes 0-1) at low load, step 2 (minutes 2-3) with the primary saturated.
    _put(endpoint, "AWS/EC2", "CPUUtilization", {"InstanceId": names["Instance1A1B2C3D"]},
         [20, 30, 50, 50])  # fmt: skip
    _put(endpoint, "AWS/RDS", "CPUUtilization", {"DBInstanceIdentifier": primary},
         [40, 40, 95, 95])  # fmt: skip
    _put(endpoint, "AWS/RDS", "CPUUtilization", {"DBInstanceIdentifier": replica},
         [10, 10, 30, 30])  # fmt: skip
    _put(endpoint, "AWS/RDS", "ReplicaLag", {"DBInstanceIdentifier": replica}, [0, 1, 2, 7])
    _put(endpoint, "AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": queue},
         [0, 3, 40, 12])  # fmt: skip
    _put(endpoint, "AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": "elsewhere"},
         [999, 999, 999, 999])  # fmt: skip
    return names


def _evidence(endpoint: str, tmp_path: Path, stack: str, steps: int, *extra: str) -> dict[str, Any]:
    out = tmp_path / "ladder-results" / "stage.json"
    code = deployed.main(
        [
            "evidence",
            stack,
            "--region",
            REGION,
            "--steps",
            str(_steps_file(tmp_path, steps)),
            "--invariants",
            str(_invariants_file(tmp_path)),
            "--out",
            str(out),
            *extra,
        ],
        endpoint_url=endpoint,
    )
    assert code == 0
    return json.loads(out.read_text())


def test_evidence_is_the_per_stage_json_of_the_ladder_with_source_aws(endpoint, stage_4, tmp_path):
    result = _evidence(endpoint, tmp_path, "Shop-4-read-replicas", steps=2)
    assert (result["stage"], result["name"], result["source"]) == (4, "read-replicas", "aws")
    assert result["invariants"]["ok"] is True
    assert result["daily"] == [] and result["missing"] is None
    assert result["p95_objective_ms"] == 500.0
    # c7i.large has 2 vCPUs, db.m7g.xlarge 4 (as EC2 describes the instance types).
    assert result["budgets"] == {"app": 2.0, "postgres": 4.0, "replica": 4.0}
    assert result["cpus_per_vcpu"] == 1.0  # the stack's own size: its knee needs no scaling
    assert [step["users"] for step in result["steps"]] == [10, 20]  # the suite's figures kept
    assert set(result["steps"][0]["signals"]) == {
        "db_share",
        "pool_wait_ms",
        "cache_hit_ratio",
        "replica_lag_s",
        "queue_depth",
    }


def test_evidence_reads_each_step_from_its_own_window(endpoint, stage_4, tmp_path):
    first, second = _evidence(endpoint, tmp_path, "Shop-4-read-replicas", steps=2)["steps"]
    # vCPUs used = utilisation x vCPUs: the primary goes from 40 % to 95 % of its 4 vCPUs.
    assert first["cpu"] == {"app": 0.5, "postgres": 1.6, "replica": 0.4}
    assert second["cpu"] == {"app": 1.0, "postgres": 3.8, "replica": 1.2}
    assert (first["signals"]["replica_lag_s"], second["signals"]["replica_lag_s"]) == (1.0, 7.0)
    # The orders queue's deepest point in the window; the other queue's figures are not ours.
    assert (first["signals"]["queue_depth"], second["signals"]["queue_depth"]) == (3.0, 40.0)
    assert first["signals"]["cache_hit_ratio"] is None  # no cache at stage 4
    assert first["signals"]["db_share"] is None  # CloudWatch has no per-request DB time


@pytest.fixture(scope="module")
def stage_6(endpoint: str) -> str:
    """A stage-6-shaped stack: one web Auto Scaling group of c7i.xlarge, 2 then 4 in service."""
    ec2 = _client(endpoint, "ec2")
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    template = {"ImageId": ami, "InstanceType": "c7i.xlarge"}
    _create_stack(
        endpoint,
        "Shop-6-auto-scaling",
        {
            "BlueGroupTemplateA1B2": {
                "Type": "AWS::EC2::LaunchTemplate",
                "Properties": {"LaunchTemplateData": template},
            },
            "BlueGroupASGA1B2C3D4": {
                "Type": "AWS::AutoScaling::AutoScalingGroup",
                "Properties": {
                    "MinSize": "2",
                    "MaxSize": "8",
                    "DesiredCapacity": "2",
                    "VPCZoneIdentifier": [subnet],
                    "LaunchTemplate": {
                        "LaunchTemplateId": {"Ref": "BlueGroupTemplateA1B2"},
                        "Version": {"Fn::GetAtt": ["BlueGroupTemplateA1B2", "LatestVersionNumber"]},
                    },
                },
            },
        },
    )
    group = _physical(endpoint, "Shop-6-auto-scaling")["BlueGroupASGA1B2C3D4"]
    dims = {"AutoScalingGroupName": group}
    _put(endpoint, "AWS/EC2", "CPUUtilization", dims, [50, 50, 75, 75])
    _put(endpoint, "AWS/AutoScaling", "GroupInServiceInstances", dims, [2, 2, 4, 4])
    return group


def test_an_auto_scaling_fleet_counts_every_instance_in_service(endpoint, stage_6, tmp_path):
    first, second = _evidence(endpoint, tmp_path, "Shop-6-auto-scaling", steps=2)["steps"]
    # c7i.xlarge: 4 vCPUs. 50 % of 2 instances, then 75 % of 4.
    assert first["cpu"]["app"] == 4.0
    assert second["cpu"]["app"] == 12.0


def test_the_budget_of_a_scaling_fleet_is_its_largest_size_in_the_run(endpoint, stage_6, tmp_path):
    result = _evidence(endpoint, tmp_path, "Shop-6-auto-scaling", steps=2)
    assert result["budgets"] == {"app": 16.0}  # 4 instances x 4 vCPUs


def test_a_daily_run_sets_each_slice_against_the_instances_in_service(
    endpoint, stage_4, stage_6, tmp_path
):
    result = _evidence(endpoint, tmp_path, "Shop-6-auto-scaling", 2, "--daily")
    assert [(d["t_s"], d["users"], d["instances"]) for d in result["daily"]] == [
        (0.0, 10, 2),
        (STEP_S, 20, 4),
    ]
    assert _evidence(endpoint, tmp_path, "Shop-4-read-replicas", 2)["daily"] == []


def test_cache_hit_ratio_and_engine_cpu_come_from_every_node(endpoint):
    elasticache = _client(endpoint, "elasticache")
    elasticache.create_replication_group(
        ReplicationGroupId="shop-cache",
        ReplicationGroupDescription="cache",
        NumCacheClusters=2,
        CacheNodeType="cache.m7g.large",
        Engine="redis",
    )
    # CloudWatch names a node by its cluster id, <group>-001 ...; moto lists the first only.
    assert deployed.member_clusters(elasticache, "shop-cache")[0] == "shop-cache-001"
    nodes = ["shop-cache-001", "shop-cache-002"]
    topology = deployed.Topology(stage=5, name="cache-cdn", cache_nodes=nodes)
    for node, hits, misses, engine in (
        (nodes[0], [300, 300], [125, 125], [60, 70]),
        (nodes[1], [200, 200], [0, 0], [5, 5]),
    ):
        dims = {"CacheClusterId": node}
        _put(endpoint, "AWS/ElastiCache", "CacheHits", dims, hits)
        _put(endpoint, "AWS/ElastiCache", "CacheMisses", dims, misses)
        _put(endpoint, "AWS/ElastiCache", "EngineCPUUtilization", dims, engine)
    values = deployed.read_window(
        _client(endpoint, "cloudwatch"), deployed.queries(topology), T0, T0 + STEP_S
    )
    step = deployed.step_evidence(topology, values)
    assert step["signals"]["cache_hit_ratio"] == 0.8  # 1000 hits, 250 misses
    # Redis executes on one engine thread: the busiest node's, as a share of one vCPU.
    assert step["cpu"] == {"redis": 0.65}


def test_stage_resources_are_recognised_by_the_cdk_apps_logical_ids():
    rows = [
        ("AWS::EC2::Instance", "Instance1F4E2A1B", "i-1"),
        ("AWS::EC2::LaunchTemplate", "Instance1BootA1B2C3D4", "lt-1"),
        ("AWS::AutoScaling::AutoScalingGroup", "BlueGroupASG0E1F2A3B", "blue"),
        ("AWS::AutoScaling::AutoScalingGroup", "GreenGroupASG0E1F2A3B", "green"),
        ("AWS::AutoScaling::AutoScalingGroup", "WorkerGroupASG0E1F2A3B", "workers"),
        ("AWS::RDS::DBInstance", "DatabasePrimary5C9E0B2A", "db-primary"),
        ("AWS::RDS::DBInstance", "DatabaseReplica2A1B2C3D", "db-r2"),
        ("AWS::RDS::DBInstance", "DatabaseReplica1A1B2C3D", "db-r1"),
        ("AWS::RDS::DBInstance", "OrderShard2Primary44FDA548", "db-s2"),
        ("AWS::RDS::DBInstance", "OrderShard1PrimaryF7F71DAD", "db-s1"),
        ("AWS::RDS::DBInstance", "OrderShard1Replica1B2C3D4E5", "db-s1-r1"),
        ("AWS::RDS::DBInstance", "OrderShard2Replica1F6A7B8C9", "db-s2-r1"),
        ("AWS::RDS::DBInstance", "AccountingDatabasePrimary81F50834", "db-acc"),
        ("AWS::RDS::DBInstance", "DeliveryDatabasePrimaryF7F59897", "db-del"),
        ("AWS::SQS::Queue", "OrdersDeadLetters1A2B", "https://sqs/1/dlq"),
        ("AWS::SQS::Queue", "OrdersQueue1A2B", "https://sqs/1/orders-queue"),
        (
            "AWS::ElasticLoadBalancingV2::LoadBalancer",
            "LoadBalancerAlb1A2B",
            "arn:aws:elasticloadbalancing:us-east-1:1:loadbalancer/app/shop/50dc6c495c0c9188",
        ),
    ]
    topology = deployed.classify(
        "Shop-8-federated",
        [
            {"ResourceType": kind, "LogicalResourceId": logical, "PhysicalResourceId": physical}
            for kind, logical, physical in rows
        ],
    )
    assert (topology.stage, topology.name) == (8, "federated")
    assert topology.web_instances == ["i-1"]
    assert topology.web_groups == ["blue", "green"]
    assert topology.worker_groups == ["workers"]
    # The shards' replicas are read replicas like main's, never shards.
    assert topology.db_primary == "db-primary"
    assert topology.db_replicas == ["db-r1", "db-r2", "db-s1-r1", "db-s2-r1"]
    assert topology.shards == ["db-s1", "db-s2"]
    assert topology.federated == ["db-acc", "db-del"]
    assert topology.queue_name == "orders-queue"
    assert topology.load_balancer == "app/shop/50dc6c495c0c9188"


def _rds(kind: str, source: str | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {"DBInstanceClass": kind}
    if source:
        properties["SourceDBInstanceIdentifier"] = {"Ref": source}
    else:
        properties |= {
            "Engine": "postgres",
            "AllocatedStorage": "20",
            "MasterUsername": "shop",
            "MasterUserPassword": "not-a-secret-1",
        }
    return {"Type": "AWS::RDS::DBInstance", "Properties": properties}


def test_stage_8s_shards_and_federated_databases_are_measured_apart_from_main(endpoint, tmp_path):
    """Stage 8's primaries under the CDK app's logical ids: main stays `postgres`, the two
    order shards are `shard` and accounting with delivery `federated`, each the sum of its
    databases (as the local ladder counts them), never mistaken for main."""
    ami = _client(endpoint, "ec2").describe_images()["Images"][0]["ImageId"]
    databases = {
        "DatabasePrimaryEDE0B3D0": _rds("db.m7g.large"),
        "DatabaseReplica1ED560A1F": _rds("db.m7g.large", "DatabasePrimaryEDE0B3D0"),
        "AccountingDatabasePrimary81F50834": _rds("db.m7g.large"),
        "DeliveryDatabasePrimaryF7F59897": _rds("db.m7g.large"),
        "OrderShard1PrimaryF7F71DAD": _rds("db.m7g.large"),
        "OrderShard2Primary44FDA548": _rds("db.m7g.large"),
    }
    instance = {
        "Type": "AWS::EC2::Instance",
        "Properties": {"ImageId": ami, "InstanceType": "c7i.large"},
    }
    _create_stack(
        endpoint,
        "Shop-8-federated",
        {"Instance1A1B2C3D": instance, **databases},
        _target_url_output("http://shop-8.example.test"),
    )
    names = _physical(endpoint, "Shop-8-federated")
    for logical, cpu in (
        ("DatabasePrimaryEDE0B3D0", 30),
        ("OrderShard1PrimaryF7F71DAD", 60),
        ("OrderShard2Primary44FDA548", 40),
        ("AccountingDatabasePrimary81F50834", 10),
        ("DeliveryDatabasePrimaryF7F59897", 20),
    ):
        _put(endpoint, "AWS/RDS", "CPUUtilization", {"DBInstanceIdentifier": names[logical]},
             [cpu, cpu])  # fmt: skip

    result = _evidence(endpoint, tmp_path, "Shop-8-federated", steps=1)
    # db.m7g.large: 2 vCPUs each; main alone is `postgres`.
    assert result["budgets"] == {
        "app": 2.0, "postgres": 2.0, "replica": 2.0, "shard": 4.0, "federated": 4.0,
    }  # fmt: skip
    [step] = result["steps"]
    assert step["cpu"]["postgres"] == pytest.approx(0.6)
    assert step["cpu"]["shard"] == pytest.approx(2.0)  # 60 % and 40 % of 2 vCPUs
    assert step["cpu"]["federated"] == pytest.approx(0.6)


def test_a_step_shorter_than_cloudwatchs_period_still_reads_the_minute_it_falls_in():
    start, end = deployed.window(T0 + 10, T0 + 30)
    assert (start.timestamp(), end.timestamp()) == (T0, T0 + 60)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no step"),
        ('{"step": 1}\n', "steps.jsonl:1 is not a step line"),
        ("not json\n", "steps.jsonl:1 is not a step line"),
    ],
)
def test_a_bad_steps_file_is_refused_with_its_line(endpoint, tmp_path, capsys, content, message):
    steps = tmp_path / "steps.jsonl"
    steps.write_text(content)
    code = deployed.main(
        ["evidence", "Shop-4-read-replicas", "--steps", str(steps), "--out", str(tmp_path / "o")],
        endpoint_url=endpoint,
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_stack_that_is_not_a_stage_is_refused(endpoint, tmp_path, capsys):
    _create_stack(endpoint, "SomethingElse", _queue())
    code = deployed.main(
        [
            "evidence",
            "SomethingElse",
            "--steps",
            str(_steps_file(tmp_path, 1)),
            "--out",
            str(tmp_path / "o.json"),
        ],
        endpoint_url=endpoint,
    )
    assert code == 2
    assert "is not a stage stack name" in capsys.readouterr().err


def test_a_run_without_its_invariants_file_is_not_reported_as_sound(endpoint, stage_4, tmp_path):
    out = tmp_path / "stage-4.json"
    steps = str(_steps_file(tmp_path, 1))
    argv = ["evidence", "Shop-4-read-replicas", "--steps", steps, "--out", str(out)]
    assert deployed.main(argv, endpoint_url=endpoint) == 0
    invariants = json.loads(out.read_text())["invariants"]
    assert invariants["ok"] is False
    assert "not read" in invariants["checks"]["not_checked"]["detail"]


def test_the_load_generators_cpu_is_its_busiest_workers_share(endpoint, stage_4, tmp_path):
    ec2 = _client(endpoint, "ec2")
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    _create_stack(
        endpoint,
        "Shop-LoadGen",
        {
            "WorkerTemplateC9B2C0C1": {
                "Type": "AWS::EC2::LaunchTemplate",
                "Properties": {"LaunchTemplateData": {"ImageId": ami, "InstanceType": "c7i.large"}},
            },
            "WorkerGroupASG184E9436": {
                "Type": "AWS::AutoScaling::AutoScalingGroup",
                "Properties": {
                    "MinSize": "2",
                    "MaxSize": "2",
                    "VPCZoneIdentifier": [subnet],
                    "LaunchTemplate": {
                        "LaunchTemplateId": {"Ref": "WorkerTemplateC9B2C0C1"},
                        "Version": {
                            "Fn::GetAtt": ["WorkerTemplateC9B2C0C1", "LatestVersionNumber"]
                        },
                    },
                },
            },
        },
    )
    group = _physical(endpoint, "Shop-LoadGen")["WorkerGroupASG184E9436"]
    _put(endpoint, "AWS/EC2", "CPUUtilization", {"AutoScalingGroupName": group}, [40, 60, 80, 100])
    result = _evidence(
        endpoint, tmp_path, "Shop-4-read-replicas", 2, "--loadgen-stack", "Shop-LoadGen"
    )
    assert result["loadgen_cpu"] == 0.7  # the four minutes of the run: 40, 60, 80, 100 %
    assert _evidence(endpoint, tmp_path, "Shop-4-read-replicas", 2)["loadgen_cpu"] is None


def test_short_steps_and_a_fresh_run_are_warned_about():
    def step(started: float, seconds: float) -> dict[str, float]:
        return {"started_at": started, "ended_at": started + seconds}

    assert deployed.warnings([step(T0, 120), step(T0 + 120, 120)], now=T0 + 3600) == []
    [short] = deployed.warnings([step(T0, 20), step(T0 + 20, 20)], now=T0 + 3600)
    assert "a step lasts 20 s" in short and "SHOP_LOAD_STEP_S=120" in short
    [fresh] = deployed.warnings([step(T0, 120)], now=T0 + 180)
    assert "ended 60 s ago" in fresh


# --- the load generator's result files -------------------------------------------------------


def _local_shell(command: str) -> str:
    """The master's shell, run here: the same commands on the same coreutils, on a real file."""
    ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False)
    return ran.stdout if ran.returncode == 0 else ran.stderr


def test_fetch_copies_a_file_larger_than_one_answer_byte_for_byte(tmp_path):
    results = tmp_path / "master" / "steps.jsonl"
    results.parent.mkdir()
    results.write_bytes(os.urandom(3 * deployed.FETCH_CHUNK_BYTES + 123))
    said: list[str] = []
    size = deployed.fetch_file(
        _local_shell, str(results), tmp_path / "copy" / "steps.jsonl", say=said.append
    )
    assert size == results.stat().st_size
    assert (tmp_path / "copy" / "steps.jsonl").read_bytes() == results.read_bytes()
    assert len(said) == 4 and said[-1].endswith(f"{size:,}/{size:,} bytes")  # progress


def test_fetch_of_a_file_that_is_not_there_says_so(tmp_path):
    with pytest.raises(deployed.DeployedError, match="not on the load generator's master"):
        deployed.fetch_file(_local_shell, str(tmp_path / "missing.jsonl"), tmp_path / "out")


def test_fetch_asks_the_stacks_master_through_ssm(endpoint, tmp_path, capsys):
    ec2 = _client(endpoint, "ec2")
    [master] = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"]
    _create_stack(  # the module's server already has a Shop-LoadGen of another test
        endpoint,
        "Shop-LoadGen-fetch",
        _queue(),
        outputs={"MasterInstanceId": {"Value": master["InstanceId"]}},
    )
    argv = ["fetch", "Shop-LoadGen-fetch", "--out", str(tmp_path), "--file", "/tmp/steps.jsonl"]
    code = deployed.main(argv, endpoint_url=endpoint)
    # moto runs no shell, so the master "answers" nothing: one clear line, not a traceback.
    assert code == 2
    assert "/tmp/steps.jsonl is not on the load generator's master" in capsys.readouterr().err
    commands = _client(endpoint, "ssm").list_commands()["Commands"]
    [sent] = [c for c in commands if c["Parameters"]["commands"][0].endswith("/tmp/steps.jsonl")]
    assert sent["DocumentName"] == "AWS-RunShellScript"
    assert master["InstanceId"] in sent["InstanceIds"]  # moto lists more ids than were asked
    assert sent["Parameters"]["commands"] == ["stat -c %s /tmp/steps.jsonl"]


def test_fetch_from_a_stack_without_a_master_says_which_output_is_missing(
    endpoint, tmp_path, capsys
):
    _create_stack(endpoint, "Shop-3-not-loadgen", _queue())
    code = deployed.main(
        ["fetch", "Shop-3-not-loadgen", "--out", str(tmp_path)], endpoint_url=endpoint
    )
    assert code == 2
    assert "has no MasterInstanceId output" in capsys.readouterr().err
