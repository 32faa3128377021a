"""What defines each stage is there, with its key properties, sized from the catalog."""

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match, Template
from shop_infra.stack import DEFAULT_REGION, ShopStack
from shop_infra.stages import GRACEFUL_SHUTDOWN_S, STAGES

from .conftest import INFRA, MAIL_SENDER, _context
from .test_boot_path import boot_scripts


def _user_data(synth) -> str:
    """All boot scripts of a stage, with CloudFormation references shown as <...>."""
    scripts = []
    for kind in ("AWS::EC2::Instance", "AWS::EC2::LaunchTemplate"):
        for resource in synth.resources(kind).values():
            props = resource["Properties"]
            data = props.get("UserData") or props.get("LaunchTemplateData", {}).get("UserData")
            if data:
                parts = data["Fn::Base64"]["Fn::Join"][1]
                scripts.append("".join(p if isinstance(p, str) else "<ref>" for p in parts))
    return "\n".join(scripts)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_every_stage_exports_its_target_url_under_the_stack_name(synthesized, stage):
    outputs = synthesized[stage.number].template["Outputs"]
    assert outputs["TargetUrl"]["Export"]["Name"] == f"{stage.stack_id}-TargetUrl"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_every_stage_has_a_dashboard_and_a_web_cpu_alarm(synthesized, stage):
    synth = synthesized[stage.number]
    assert len(synth.resources("AWS::CloudWatch::Dashboard")) == 1
    descriptions = [
        a["Properties"]["AlarmDescription"]
        for a in synth.resources("AWS::CloudWatch::Alarm").values()
        if "AlarmDescription" in a["Properties"]
    ]
    assert any("web tier's CPU" in text for text in descriptions)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_the_app_runs_in_production_mode_with_its_secrets_by_arn(synthesized, stage):
    script = _user_data(synthesized[stage.number])
    for setting in ("SHOP_ENV=production", "SHOP_JWT_SECRET_ARN=", "SHOP_DATABASE_SECRET_ARN="):
        assert setting in script
    assert f"SHOP_GRACEFUL_SHUTDOWN_S={GRACEFUL_SHUTDOWN_S}" in script
    assert re.search(
        r"shop migrate && (shop assets publish && )?exec shop serve --host 0\.0\.0\.0 --port 8000",
        script,
    )


def test_stage_1_is_one_box_with_an_elastic_ip_running_postgres_and_redis(synthesized):
    synth = synthesized[1]
    assert len(synth.resources("AWS::EC2::Instance")) == 1
    synth.assertions.has_resource_properties(
        "AWS::EC2::EIP", {"InstanceId": {"Ref": Match.string_like_regexp("^Instance1")}}
    )
    assert not synth.resources("AWS::RDS::DBInstance")
    assert not synth.resources("AWS::ElasticLoadBalancingV2::LoadBalancer")
    script = _user_data(synth)
    assert "docker/library/postgres:17" in script and "docker/library/redis:7" in script
    assert "POSTGRES_PASSWORD_FILE" in script
    assert "SHOP_REDIS_URL=redis://redis:6379/0" in script
    assert synth.template["Outputs"]["TargetUrl"]["Value"] == {
        "Fn::Join": ["", ["http://", {"Ref": "Address"}]]
    }


def test_stage_2_moves_the_database_to_single_az_rds_postgres_17_in_isolated_subnets(synthesized):
    synth = synthesized[2]
    [db] = synth.resources("AWS::RDS::DBInstance").values()
    props = db["Properties"]
    assert props["Engine"] == "postgres" and props["EngineVersion"] == "17"
    assert props["MultiAZ"] is False and props["StorageEncrypted"] is True
    assert props["DBInstanceClass"] == f"db.{STAGES[1].database.instance_type}"
    assert props["BackupRetentionPeriod"] >= 1 and props["DeletionProtection"] is False
    assert "postgres:17" not in _user_data(synth)
    [subnets] = synth.resources("AWS::RDS::DBSubnetGroup").values()
    isolated = {k for k in synth.resources("AWS::EC2::Subnet") if "Data" in k}
    assert {ref["Ref"] for ref in subnets["Properties"]["SubnetIds"]} == isolated


def test_stage_3_load_balancer_spans_two_azs_in_front_of_the_instance_group(synthesized):
    synth = synthesized[3]
    [alb] = synth.resources("AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    assert alb["Properties"]["Scheme"] == "internet-facing"
    assert len(alb["Properties"]["Subnets"]) == 2
    [instances] = synth.resources("AWS::AutoScaling::AutoScalingGroup").values()
    size = str(STAGES[2].fleet.min_size)
    assert instances["Properties"]["MinSize"] == instances["Properties"]["MaxSize"] == size
    assert len(instances["Properties"]["VPCZoneIdentifier"]) == 2
    [group] = synth.resources("AWS::ElasticLoadBalancingV2::TargetGroup").values()
    props = group["Properties"]
    assert props["HealthCheckPath"] == "/healthz"
    assert {"Key": "deregistration_delay.timeout_seconds", "Value": str(GRACEFUL_SHUTDOWN_S)} in (
        props["TargetGroupAttributes"]
    )
    [db] = synth.resources("AWS::RDS::DBInstance").values()
    assert db["Properties"]["MultiAZ"] is True


def test_stage_4_has_the_catalogs_number_of_read_replicas_and_tells_the_app(synthesized):
    synth = synthesized[4]
    wanted = STAGES[3].database.read_replicas
    replicas = [
        r
        for r in synth.resources("AWS::RDS::DBInstance").values()
        if "SourceDBInstanceIdentifier" in r["Properties"]
    ]
    assert len(replicas) == wanted >= 1
    assert len({r["Properties"]["AvailabilityZone"]["Fn::Select"][0] for r in replicas}) == 2
    assert "SHOP_DATABASE_REPLICA_HOSTS=" in _user_data(synth)


def test_stage_5_adds_redis_cloudfront_with_s3_and_dynamodb_carts(synthesized):
    synth = synthesized[5]
    cache = STAGES[4].cache
    synth.assertions.has_resource_properties(
        "AWS::ElastiCache::ReplicationGroup",
        {
            "CacheNodeType": f"cache.{cache.node_type}",
            "NumCacheClusters": cache.nodes,
            "MultiAZEnabled": True,
            "AutomaticFailoverEnabled": True,
        },
    )
    synth.assertions.resource_count_is("AWS::CloudFront::OriginAccessControl", 1)
    synth.assertions.has_resource_properties(
        "AWS::DynamoDB::Table", {"BillingMode": "PAY_PER_REQUEST"}
    )
    [distribution] = synth.resources("AWS::CloudFront::Distribution").values()
    config = distribution["Properties"]["DistributionConfig"]
    assert len(config["Origins"]) == 2  # the assets bucket and the load balancer
    assert config["CacheBehaviors"][0]["PathPattern"] == "/static/*"
    assert config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "redirect-to-https"
    script = _user_data(synth)
    for setting in (
        "SHOP_REDIS_URL=rediss://",
        "SHOP_REDIS_AUTH_SECRET_ARN=",
        "SHOP_CARTS_TABLE=",
        "SHOP_ASSETS_BUCKET=",
        "SHOP_ASSETS_BASE_URL=https://",
    ):
        assert setting in script
    url = json.dumps(synth.template["Outputs"]["TargetUrl"]["Value"])
    assert "https://" in url and "DomainName" in url


def test_stage_6_scales_two_colours_on_request_count_behind_a_weighted_listener(synthesized):
    synth = synthesized[6]
    fleet = STAGES[5].fleet
    groups = synth.resources("AWS::AutoScaling::AutoScalingGroup").values()
    assert len(groups) == 2
    for group in groups:
        assert group["Properties"]["MaxSize"] == str(fleet.max_size)
        assert group["Properties"]["HealthCheckType"] == "ELB"
    synth.assertions.resource_properties_count_is(
        "AWS::AutoScaling::ScalingPolicy",
        {
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingConfiguration": {
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "ALBRequestCountPerTarget"
                },
                "TargetValue": fleet.requests_per_target_per_minute,
            },
        },
        2,
    )
    [listener] = synth.resources("AWS::ElasticLoadBalancingV2::Listener").values()
    [action] = listener["Properties"]["DefaultActions"]
    assert len(action["ForwardConfig"]["TargetGroups"]) == 2
    assert synth.template["Parameters"]["LiveColour"]["AllowedValues"] == ["blue", "green"]
    assert not synth.resources("AWS::EC2::Instance")


def test_stage_7_adds_a_queue_with_dead_letters_workers_and_ses(synthesized):
    synth = synthesized[7]
    workers = STAGES[6].workers
    synth.assertions.has_resource_properties(
        "AWS::SQS::Queue", {"RedrivePolicy": {"maxReceiveCount": 5}}
    )
    synth.assertions.resource_count_is("AWS::SES::EmailIdentity", 1)
    synth.assertions.has_resource_properties(
        "AWS::AutoScaling::AutoScalingGroup",
        {"MinSize": str(workers.min_size), "MaxSize": str(workers.max_size)},
    )
    assert "shop worker" in _user_data(synth)
    synth.assertions.has_resource_properties(
        "AWS::IAM::Policy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Action": ["ses:SendEmail", "ses:SendRawEmail"],
                                "Condition": {"StringEquals": {"ses:FromAddress": MAIL_SENDER}},
                            }
                        )
                    ]
                )
            }
        },
    )


def test_stage_7_workers_track_the_backlog_per_instance(synthesized):
    """The EC2 Auto Scaling recipe for SQS: (visible + in flight) / in-service workers, held at
    the catalog's backlog per instance by target tracking, which also scales in."""
    synth = synthesized[7]
    [group] = [k for k in synth.resources("AWS::AutoScaling::AutoScalingGroup") if "Worker" in k]
    [policy] = [
        p["Properties"]
        for p in synth.resources("AWS::AutoScaling::ScalingPolicy").values()
        if p["Properties"]["AutoScalingGroupName"] == {"Ref": group}
    ]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    config = policy["TargetTrackingConfiguration"]
    assert config["TargetValue"] == STAGES[6].workers.messages_per_instance
    assert not config.get("DisableScaleIn", False)
    queries = config["CustomizedMetricSpecification"]["Metrics"]
    [returned] = [q for q in queries if q.get("ReturnData", True)]
    stats = {q["Id"]: q["MetricStat"] for q in queries if "MetricStat" in q}
    by_name = {stat["Metric"]["MetricName"]: query_id for query_id, stat in stats.items()}
    visible = by_name.pop("ApproximateNumberOfMessagesVisible")
    in_flight = by_name.pop("ApproximateNumberOfMessagesNotVisible")
    workers = by_name.pop("GroupInServiceInstances")
    assert by_name == {}
    assert returned["Expression"].replace(" ", "") == f"({visible}+{in_flight})/{workers}"
    assert stats[workers]["Metric"]["Dimensions"] == [
        {"Name": "AutoScalingGroupName", "Value": {"Ref": group}}
    ]
    [orders] = [k for k in synth.resources("AWS::SQS::Queue") if "DeadLetters" not in k]
    for query_id in (visible, in_flight):
        assert stats[query_id]["Metric"]["Dimensions"] == [
            {"Name": "QueueName", "Value": {"Fn::GetAtt": [orders, "QueueName"]}}
        ]
    # No step scaling on absolute depth, and so no scale-in alarm that fires whenever the
    # workers keep up: target tracking makes (and owns) its own alarms.
    for alarm in synth.resources("AWS::CloudWatch::Alarm").values():
        assert alarm["Properties"].get("MetricName") != "ApproximateNumberOfMessagesVisible" or (
            "DeadLetters" in json.dumps(alarm["Properties"]["Dimensions"])
        )


@pytest.mark.parametrize(
    "sender",
    [
        "orders@example.com",
        "Orders@Example.ORG",
        "orders@mail.example.net",
        "orders@shop.test",
        "orders@shop.example",
        "orders@shop.invalid",
        "orders@localhost",
    ],
)
def test_stage_7_refuses_a_mail_sender_ses_can_never_verify(tmp_path, sender):
    """SES verifies a sender by a link it mails to it: a reserved test domain gets no mail."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    with pytest.raises(ValueError) as refused:
        ShopStack(
            cdk.App(context=_context()),
            stage=STAGES[6],
            image_directory=tmp_path,
            mail_sender=sender,
            env=cdk.Environment(region=DEFAULT_REGION),
        )
    assert str(refused.value).startswith(f"shop:mail_sender {sender!r} can never be verified")
    assert "-c shop:mail_sender=" in str(refused.value)


def test_the_cdk_app_refuses_such_a_sender_with_one_line_and_no_traceback():
    context = {**_context(), "shop:stages": "7", "shop:mail_sender": "orders@example.com"}
    run = subprocess.run(
        [sys.executable, str(INFRA / "app.py")],
        env={
            **os.environ,
            "CDK_CONTEXT_JSON": json.dumps(context),
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("shop infra: shop:mail_sender 'orders@example.com' can never be")


def test_stage_7_without_a_mail_sender_logs_its_mail_instead_of_sending_it(tmp_path):
    """The app sends no mail without SHOP_MAIL_SENDER (it logs it): no SES identity, no grant."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    stack = ShopStack(
        cdk.App(context=_context()),
        stage=STAGES[6],
        image_directory=tmp_path,
        env=cdk.Environment(region=DEFAULT_REGION),
    )
    template = Template.from_stack(stack)
    template.resource_count_is("AWS::SES::EmailIdentity", 0)
    rendered = json.dumps(template.to_json())
    assert "ses:SendEmail" not in rendered and "SHOP_MAIL_SENDER" not in rendered


def test_a_route_53_record_is_made_only_when_a_hosted_zone_is_given(synthesized, with_hosted_zone):
    for synth in synthesized.values():
        assert not synth.resources("AWS::Route53::RecordSet")
    box, balanced, cdn = with_hosted_zone[1], with_hosted_zone[3], with_hosted_zone[5]
    box.assertions.has_resource_properties(
        "AWS::Route53::RecordSet",
        {
            "Name": "single-box.shop.example.com.",
            "Type": "A",
            "ResourceRecords": [{"Ref": "Address"}],
        },
    )
    balanced.assertions.has_resource_properties(
        "AWS::Route53::RecordSet",
        {"Name": "horizontal.shop.example.com.", "AliasTarget": Match.any_value()},
    )
    cdn.assertions.resource_count_is("AWS::CertificateManager::Certificate", 1)
    assert cdn.template["Outputs"]["TargetUrl"]["Value"] == "https://cache-cdn.shop.example.com"


SPLIT = ("AccountingDatabase", "DeliveryDatabase", "OrderShard1", "OrderShard2")
"""Stage 8's databases beside main, by construct id (the shards in shard order)."""
SHARDS = ("OrderShard1", "OrderShard2")
SPLIT_SETTINGS = (
    "SHOP_ACCOUNTING_DATABASE_SECRET_ARN",
    "SHOP_DELIVERY_DATABASE_SECRET_ARN",
    "SHOP_ORDER_SHARD_SECRET_ARNS",
    "SHOP_ORDER_SHARD_REPLICA_HOSTS",
)


def _logical_id(synth, kind: str, prefix: str) -> str:
    [found] = [k for k in synth.resources(kind) if re.fullmatch(f"{prefix}[0-9A-F]{{8}}", k)]
    return found


def _attachment(synth, database: str) -> str:
    return _logical_id(
        synth, "AWS::SecretsManager::SecretTargetAttachment", f"{database}SecretAttachment"
    )


def _secret_reads(synth, role_prefix: str) -> set[str]:
    """The logical ids of the secrets a role may read (through their attachment or not)."""
    reads: set[str] = set()
    for policy in synth.resources("AWS::IAM::Policy").values():
        props = policy["Properties"]
        if not any(role["Ref"].startswith(role_prefix) for role in props.get("Roles", [])):
            continue
        for statement in props["PolicyDocument"]["Statement"]:
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            if statement["Effect"] == "Allow" and any(
                a.startswith("secretsmanager:") for a in actions
            ):
                resources = statement["Resource"]
                resources = resources if isinstance(resources, list) else [resources]
                reads |= {r["Ref"] for r in resources}
    return reads


def _replicas_of(synth, primary: str) -> list[str]:
    """The logical ids of the read replicas whose source is the instance `primary`."""
    return sorted(
        logical_id
        for logical_id, instance in synth.resources("AWS::RDS::DBInstance").items()
        if f'{{"Ref": "{primary}"}}'
        in json.dumps(instance["Properties"].get("SourceDBInstanceIdentifier", ""))
    )


def _launch_template_boot(synth, prefix: str) -> str:
    [template] = [
        t for k, t in synth.resources("AWS::EC2::LaunchTemplate").items() if k.startswith(prefix)
    ]
    return json.dumps(template["Properties"]["LaunchTemplateData"]["UserData"])


def test_stage_8_adds_four_multi_az_primaries_beside_main_and_one_replica_per_shard(synthesized):
    synth = synthesized[8]
    stage = STAGES[7]
    instances = synth.resources("AWS::RDS::DBInstance")
    primaries = {
        k: r for k, r in instances.items() if "SourceDBInstanceIdentifier" not in r["Properties"]
    }
    replicas = {k: r for k, r in instances.items() if k not in primaries}
    assert len(primaries) == 5 and len(replicas) == 2 + 2
    # Main keeps its two replicas; each order shard has exactly one, reading from that shard's
    # primary; accounting and delivery have none (the app reads them from their primaries).
    main = _logical_id(synth, "AWS::RDS::DBInstance", "DatabasePrimary")
    assert len(_replicas_of(synth, main)) == stage.database.read_replicas == 2
    assert stage.order_shards == 2 and stage.shard.read_replicas == 1
    assert stage.federated.read_replicas == 0
    found = set(_replicas_of(synth, main))
    identifiers = set()
    for database in SPLIT:
        logical_id = _logical_id(synth, "AWS::RDS::DBInstance", f"{database}Primary")
        primary = primaries[logical_id]
        props = primary["Properties"]
        if database in SHARDS:
            [replica] = _replicas_of(synth, logical_id)
            assert replica == _logical_id(synth, "AWS::RDS::DBInstance", f"{database}Replica1")
            assert replicas[replica]["Properties"]["DBInstanceClass"] == props["DBInstanceClass"]
            found.add(replica)
        else:
            assert _replicas_of(synth, logical_id) == []
        assert props["MultiAZ"] is True and props["StorageEncrypted"] is True
        assert props["DBInstanceClass"] == "db.m7g.large" and props["DBName"] == "shop"
        identifiers.add(props["DBInstanceIdentifier"])
        # Its own secret, attached to it, in the RDS format with the database's name.
        attachment = synth.template["Resources"][_attachment(synth, database)]["Properties"]
        assert attachment["TargetId"] == {
            "Ref": _logical_id(synth, "AWS::RDS::DBInstance", f"{database}Primary")
        }
        secret = synth.template["Resources"][attachment["SecretId"]["Ref"]]
        template = json.loads(secret["Properties"]["GenerateSecretString"]["SecretStringTemplate"])
        assert template == {"username": "shop", "dbname": "shop"}
    assert len(identifiers) == 4 and "shop-8-federated-primary" not in identifiers
    assert found == set(replicas)  # no replica of anything else
    # The shards' replicas sit in different zones: one zone's loss keeps one of them reading.
    zones = {
        json.dumps(
            replicas[
                _replicas_of(synth, _logical_id(synth, "AWS::RDS::DBInstance", f"{d}Primary"))[0]
            ]["Properties"]["AvailabilityZone"]
        )
        for d in SHARDS
    }
    assert len(zones) == len(SHARDS) == 2
    # A replica signs in with its primary's credentials: no secret of its own.
    assert len(synth.resources("AWS::SecretsManager::SecretTargetAttachment")) == 5


@pytest.mark.parametrize("tier", ["BlueGroup", "GreenGroup", "WorkerGroup"])
def test_stage_8_tells_both_tiers_where_every_database_is_in_shard_order(synthesized, tier):
    synth = synthesized[8]
    boot = _launch_template_boot(synth, tier)
    accounting, delivery, shard1, shard2 = (_attachment(synth, d) for d in SPLIT)
    assert f'SHOP_ACCOUNTING_DATABASE_SECRET_ARN=", {{"Ref": "{accounting}"}}' in boot
    assert f'SHOP_DELIVERY_DATABASE_SECRET_ARN=", {{"Ref": "{delivery}"}}' in boot
    shards = json.dumps({"Fn::Join": [",", [{"Ref": shard1}, {"Ref": shard2}]]})
    assert f'SHOP_ORDER_SHARD_SECRET_ARNS=", {shards}' in boot
    assert "SHOP_DATABASE_SECRET_ARN=" in boot


@pytest.mark.parametrize("tier", ["BlueGroup", "GreenGroup", "WorkerGroup"])
def test_stage_8_tells_both_tiers_each_shards_replicas_in_shard_order(synthesized, tier):
    """SHOP_ORDER_SHARD_REPLICA_HOSTS: one group per shard, separated by ';', in the order of
    SHOP_ORDER_SHARD_SECRET_ARNS; in each, the host:port of that shard's replicas, separated by
    ','. Read as the instance reads its env file, with CloudFormation's values filled in."""
    synth = synthesized[8]
    [script] = [v for k, v in boot_scripts(synth).items() if k.startswith(tier)]
    [line] = [x for x in script.splitlines() if x.startswith("SHOP_ORDER_SHARD_REPLICA_HOSTS=")]
    groups = line.split("=", 1)[1].split(";")
    expected = []
    for shard in SHARDS:
        primary = _logical_id(synth, "AWS::RDS::DBInstance", f"{shard}Primary")
        expected.append(
            [f"{r}.Endpoint.Address:{r}.Endpoint.Port" for r in _replicas_of(synth, primary)]
        )
    assert [group.split(",") for group in groups] == expected
    assert len(groups) == 2 and all(len(group) == 1 for group in expected)
    # The shards' secrets in the same order, and main's replicas where they were.
    shard_secrets = [_attachment(synth, shard) for shard in SHARDS]
    assert f"SHOP_ORDER_SHARD_SECRET_ARNS={','.join(f'ref-{s}' for s in shard_secrets)}" in script
    main = _logical_id(synth, "AWS::RDS::DBInstance", "DatabasePrimary")
    main_hosts = ",".join(f"{r}.Endpoint.Address" for r in _replicas_of(synth, main))
    assert f"SHOP_DATABASE_REPLICA_HOSTS={main_hosts}\n" in script


def _named(value: Any) -> Iterator[str]:
    """Every logical id a CloudFormation value refers to (Ref, Fn::GetAtt, Fn::Sub)."""
    if isinstance(value, list):
        for each in value:
            yield from _named(each)
    elif isinstance(value, dict):
        if "Ref" in value:
            yield value["Ref"]
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            yield target[0] if isinstance(target, list) else target.split(".")[0]
        if "Fn::Sub" in value:
            text = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
            yield from (name.split(".")[0] for name in re.findall(r"\$\{([^}!]+)\}", text))
        for each in value.values():
            yield from _named(each)


def _created_before(template: dict[str, Any], logical_id: str) -> set[str]:
    """What CloudFormation creates before `logical_id`: every resource it refers to or names
    in DependsOn, and theirs in turn."""
    resources = template["Resources"]
    found: set[str] = set()
    todo = [logical_id]
    while todo:
        resource = resources[todo.pop()]
        depends = resource.get("DependsOn", [])
        depends = [depends] if isinstance(depends, str) else depends
        for name in {*_named(resource.get("Properties", {})), *depends}:
            if name in resources and name not in found:
                found.add(name)
                todo.append(name)
    return found


@pytest.mark.parametrize(
    "number", [s.number for s in STAGES if s.database and s.database.read_replicas]
)
def test_no_instance_boots_before_the_replicas_it_is_told_about(synthesized, number):
    """Main's replicas (stage 4 on) and each shard's (stage 8): the boot script names each
    replica's endpoint, so every group (web, workers) is created after all of them; the app
    never starts with the address of a replica that does not exist yet."""
    synth = synthesized[number]
    replicas = {
        k
        for k, r in synth.resources("AWS::RDS::DBInstance").items()
        if "SourceDBInstanceIdentifier" in r["Properties"]
    }
    if number == 8:
        assert len([r for r in replicas if r.startswith(SHARDS)]) == 2 and len(replicas) == 4
    launched = synth.resources("AWS::AutoScaling::AutoScalingGroup") | synth.resources(
        "AWS::EC2::Instance"
    )
    assert launched
    for logical_id in launched:
        assert replicas <= _created_before(synth.template, logical_id), logical_id


def test_stages_before_8_keep_every_table_in_the_main_database(synthesized):
    for number in range(1, 8):
        script = _user_data(synthesized[number])
        for setting in SPLIT_SETTINGS:
            assert setting not in script, (number, setting)


def test_stage_8_web_instances_migrate_only_once_every_database_exists(synthesized):
    """The web groups' instances run `shop migrate` at boot over every database: their launch
    template names each database's secret attachment, which CloudFormation creates only after
    its instance, so no group starts before all five databases are there."""
    synth = synthesized[8]
    attachments = {_attachment(synth, d) for d in ("Database", *SPLIT)}
    for tier in ("BlueGroup", "GreenGroup"):
        boot = _launch_template_boot(synth, tier)
        assert "shop migrate && " in boot
        for attachment in attachments:
            assert f'{{"Ref": "{attachment}"}}' in boot, (tier, attachment)


def test_stage_8_web_and_worker_roles_read_exactly_the_secrets_they_use(synthesized):
    synth = synthesized[8]
    databases = {_attachment(synth, d) for d in ("Database", *SPLIT)}
    cache = _logical_id(synth, "AWS::SecretsManager::Secret", "CacheAuthToken")
    jwt = _logical_id(synth, "AWS::SecretsManager::Secret", "JwtSecret")
    assert _secret_reads(synth, "WebRole") == databases | {cache, jwt}
    assert _secret_reads(synth, "WorkersRole") == databases | {cache}
    # No other role (CDK's helper functions, the load balancer's) reads a database secret.
    for policy in synth.resources("AWS::IAM::Policy").values():
        roles = [role["Ref"] for role in policy["Properties"].get("Roles", [])]
        if not any(r.startswith(("WebRole", "WorkersRole")) for r in roles):
            assert not any(a in json.dumps(policy) for a in databases), roles


def test_stage_8_databases_admit_postgresql_from_the_web_and_worker_tiers_only(synthesized):
    synth = synthesized[8]
    web = _logical_id(synth, "AWS::EC2::SecurityGroup", "WebSecurityGroup")
    workers = _logical_id(synth, "AWS::EC2::SecurityGroup", "WorkersSecurityGroup")
    for database in ("Database", *SPLIT):
        group = _logical_id(synth, "AWS::EC2::SecurityGroup", f"{database}SecurityGroup")
        sources = {
            rule["Properties"]["SourceSecurityGroupId"]["Fn::GetAtt"][0]
            for rule in synth.resources("AWS::EC2::SecurityGroupIngress").values()
            if rule["Properties"]["GroupId"] == {"Fn::GetAtt": [group, "GroupId"]}
            and (rule["Properties"]["FromPort"], rule["Properties"]["ToPort"]) == (5432, 5432)
        }
        assert sources == {web, workers}, database
        assert "SecurityGroupIngress" not in synth.template["Resources"][group]["Properties"]


def test_stage_8_shard_replicas_admit_postgresql_from_the_web_and_worker_tiers_only(synthesized):
    """Each shard's replica is in its shard's security group and no other: the rules the test
    above checks (5432 from the web and worker tiers, nothing else) are the replica's too."""
    synth = synthesized[8]
    instances = synth.resources("AWS::RDS::DBInstance")
    for shard in SHARDS:
        group = _logical_id(synth, "AWS::EC2::SecurityGroup", f"{shard}SecurityGroup")
        primary = _logical_id(synth, "AWS::RDS::DBInstance", f"{shard}Primary")
        [replica] = _replicas_of(synth, primary)
        props = instances[replica]["Properties"]
        assert props["VPCSecurityGroups"] == [{"Fn::GetAtt": [group, "GroupId"]}]
        assert props["PubliclyAccessible"] is False
        # Only the primary and its replica are in that group.
        members = [
            k
            for k, r in instances.items()
            if {"Fn::GetAtt": [group, "GroupId"]} in r["Properties"]["VPCSecurityGroups"]
        ]
        assert sorted(members) == sorted([primary, replica])
        # Where it lives: the data subnets, as the primary (no route to or from the internet).
        [subnet_group] = [
            v
            for k, v in synth.resources("AWS::RDS::DBSubnetGroup").items()
            if props["DBSubnetGroupName"] == {"Ref": k}
        ]
        data = {k for k in synth.resources("AWS::EC2::Subnet") if "Data" in k}
        assert {ref["Ref"] for ref in subnet_group["Properties"]["SubnetIds"]} == data
