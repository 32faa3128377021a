"""The ways in (CDN only from stage 5, HTTPS with a domain) and what each role may do."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from typing import Any

import pytest
from shop_infra.stages import STAGES

BEHIND_CLOUDFRONT = [s.number for s in STAGES if s.edge]
PUBLIC_LOAD_BALANCER = [s.number for s in STAGES if s.load_balanced and not s.edge]
ANYWHERE = ("0.0.0.0/0", "::/0")


# --- the load balancer --------------------------------------------------------------------------


def _load_balancer(synth) -> dict[str, Any]:
    [alb] = synth.resources("AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    return alb["Properties"]


def _load_balancer_ingress(synth) -> Iterator[dict[str, Any]]:
    """Every ingress rule of every security group attached to the load balancer."""
    groups = {ref["Fn::GetAtt"][0] for ref in _load_balancer(synth)["SecurityGroups"]}
    for logical_id, group in synth.resources("AWS::EC2::SecurityGroup").items():
        if logical_id in groups:
            yield from group["Properties"].get("SecurityGroupIngress", [])
    for rule in synth.resources("AWS::EC2::SecurityGroupIngress").values():
        target = rule["Properties"]["GroupId"]
        if isinstance(target, dict) and target.get("Fn::GetAtt", [None])[0] in groups:
            yield rule["Properties"]


@pytest.mark.parametrize("number", BEHIND_CLOUDFRONT)
def test_behind_cloudfront_the_load_balancer_is_internal_and_closed_to_the_internet(
    synthesized, number
):
    synth = synthesized[number]
    alb = _load_balancer(synth)
    assert alb["Scheme"] == "internal"
    subnets = {ref["Ref"] for ref in alb["Subnets"]}
    assert subnets and not any("Public" in subnet for subnet in subnets)
    rules = list(_load_balancer_ingress(synth))
    assert rules
    for rule in rules:
        assert rule.get("CidrIp") not in ANYWHERE and rule.get("CidrIpv6") not in ANYWHERE
        assert "SourcePrefixListId" not in rule
        # The only source: the security group of CloudFront's VPC origin interfaces.
        [lookup, field] = rule["SourceSecurityGroupId"]["Fn::GetAtt"]
        assert synth.template["Resources"][lookup]["Type"] == "Custom::AWS"
        assert field == "SecurityGroups.0.GroupId"
        assert (rule["FromPort"], rule["ToPort"]) == (80, 80)


@pytest.mark.parametrize("number", BEHIND_CLOUDFRONT)
def test_cloudfront_reaches_the_load_balancer_through_a_vpc_origin_only(synthesized, number):
    synth = synthesized[number]
    [(origin_id, vpc_origin)] = synth.resources("AWS::CloudFront::VpcOrigin").items()
    [alb_id] = synth.resources("AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert vpc_origin["Properties"]["VpcOriginEndpointConfig"]["Arn"] == {"Ref": alb_id}
    [distribution] = synth.resources("AWS::CloudFront::Distribution").values()
    config = distribution["Properties"]["DistributionConfig"]
    origins = {origin["Id"]: origin for origin in config["Origins"]}
    default = origins[config["DefaultCacheBehavior"]["TargetOriginId"]]
    assert default["VpcOriginConfig"]["VpcOriginId"] == {"Fn::GetAtt": [origin_id, "Id"]}
    # No origin is fetched over the internet by a public name (the old HTTP-only ALB origin).
    assert not any("CustomOriginConfig" in origin for origin in config["Origins"])
    lookup = json.dumps(synth.resources("Custom::AWS"))
    assert "CloudFront-VPCOrigins-Service-SG" in lookup


@pytest.mark.parametrize("number", BEHIND_CLOUDFRONT)
def test_the_vpc_origin_security_group_is_looked_up_once_the_distribution_is_deployed(
    synthesized, number
):
    """CloudFront makes that group when it deploys the distribution, not with the VPC origin:
    a look-up that waits for the origin alone can find nothing and roll the stack back."""
    synth = synthesized[number]
    [distribution] = synth.resources("AWS::CloudFront::Distribution")
    [origin] = synth.resources("AWS::CloudFront::VpcOrigin")
    [lookup] = [
        resource
        for resource in synth.resources("Custom::AWS").values()
        if "CloudFront-VPCOrigins-Service-SG" in json.dumps(resource)
    ]
    assert {distribution, origin} <= set(lookup["DependsOn"])


@pytest.mark.parametrize("number", PUBLIC_LOAD_BALANCER)
def test_without_a_cdn_the_load_balancer_is_still_reachable_from_anywhere(synthesized, number):
    synth = synthesized[number]
    assert _load_balancer(synth)["Scheme"] == "internet-facing"
    assert any(
        rule.get("CidrIp") == "0.0.0.0/0" and rule["FromPort"] == 80
        for rule in _load_balancer_ingress(synth)
    )


# --- HTTPS -----------------------------------------------------------------------------------


def _listeners(synth) -> dict[int, dict[str, Any]]:
    return {
        listener["Properties"]["Port"]: listener["Properties"]
        for listener in synth.resources("AWS::ElasticLoadBalancingV2::Listener").values()
    }


def test_with_a_hosted_zone_stage_3_serves_https_and_redirects_http(with_hosted_zone):
    synth = with_hosted_zone[3]
    [certificate] = synth.resources("AWS::CertificateManager::Certificate")
    listeners = _listeners(synth)
    assert set(listeners) == {80, 443}
    https = listeners[443]
    assert https["Protocol"] == "HTTPS"
    assert https["Certificates"] == [{"CertificateArn": {"Ref": certificate}}]
    assert https["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    [redirect] = listeners[80]["DefaultActions"]
    assert redirect["Type"] == "redirect"
    assert redirect["RedirectConfig"] == {
        "Port": "443",
        "Protocol": "HTTPS",
        "StatusCode": "HTTP_301",
    }
    assert any(
        rule.get("CidrIp") == "0.0.0.0/0" and rule["FromPort"] == 443
        for rule in _load_balancer_ingress(synth)
    )
    outputs = synth.template["Outputs"]
    assert outputs["TargetUrl"]["Value"] == "https://horizontal.shop.example.com"
    assert outputs["Protocol"]["Value"].startswith("HTTPS")


@pytest.mark.parametrize("number", [1, 2, *PUBLIC_LOAD_BALANCER])
def test_without_a_hosted_zone_a_plain_http_stage_says_so_and_how_to_get_https(synthesized, number):
    note = synthesized[number].template["Outputs"]["Protocol"]["Value"]
    assert note.startswith("plain HTTP") and "shop:hosted_zone" in note
    assert set(_listeners(synthesized[number])) <= {80}


def test_with_a_hosted_zone_the_single_box_serves_https_from_its_proxy_not_acm(with_hosted_zone):
    # No load balancer to hold an ACM certificate: Caddy on the box gets one from Let's Encrypt
    # (tests/infra/test_private_metrics_and_tls.py walks its boot script).
    synth = with_hosted_zone[1]
    outputs = synth.template["Outputs"]
    assert outputs["Protocol"]["Value"].startswith("HTTPS from Caddy on the box")
    assert outputs["TargetUrl"]["Value"] == "https://single-box.shop.example.com"
    assert not synth.resources("AWS::CertificateManager::Certificate")


@pytest.mark.parametrize("number", BEHIND_CLOUDFRONT)
def test_cdn_stages_say_they_serve_https(synthesized, number):
    assert synthesized[number].template["Outputs"]["Protocol"]["Value"].startswith("HTTPS")


@pytest.mark.parametrize("number", BEHIND_CLOUDFRONT)
def test_a_signed_in_customer_never_gets_the_cdn_copy_of_a_visitor_page(synthesized, number):
    """The storefront's home and catalog are public for visitors; CloudFront keys pages by the
    session and cart cookies too, so one with either reaches the app (which answers private).
    (tests/unit/test_cookie_names.py checks the names against the storefront's.)"""
    policies = synthesized[number].resources("AWS::CloudFront::CachePolicy").values()
    [pages] = [p for p in policies if "pages" in p["Properties"]["CachePolicyConfig"]["Comment"]]
    key = pages["Properties"]["CachePolicyConfig"]["ParametersInCacheKeyAndForwardedToOrigin"]
    assert key["CookiesConfig"]["CookieBehavior"] == "whitelist"
    assert set(key["CookiesConfig"]["Cookies"]) == {"shop_session", "shop_cart"}
    assert key["HeadersConfig"]["Headers"] == ["Authorization"]


# --- least privilege, per role -----------------------------------------------------------------


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement.get("Action", [])
    return [action] if isinstance(action, str) else list(action)


def _statements_by_role(synth) -> dict[str, list[dict[str, Any]]]:
    """Every Allow statement attached to each role (inline, attached policy, managed policy)."""
    roles: dict[str, list[dict[str, Any]]] = {
        logical_id: [
            statement
            for policy in role["Properties"].get("Policies", [])
            for statement in policy["PolicyDocument"]["Statement"]
        ]
        for logical_id, role in synth.resources("AWS::IAM::Role").items()
    }
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for policy in synth.resources(kind).values():
            for role in policy["Properties"].get("Roles", []):
                roles[role["Ref"]] += policy["Properties"]["PolicyDocument"]["Statement"]
    return {
        role: [s for s in statements if s["Effect"] == "Allow"]
        for role, statements in roles.items()
    }


def _role(synth, prefix: str) -> list[dict[str, Any]]:
    [statements] = [s for role, s in _statements_by_role(synth).items() if role.startswith(prefix)]
    return statements


def _allows(statements: list[dict[str, Any]], action: str) -> bool:
    """True when some statement allows `action`, wildcards in the policy included."""
    return any(
        fnmatch.fnmatchcase(action.lower(), pattern.lower())
        for statement in statements
        for pattern in _actions(statement)
    )


def _resource_refs(statements: list[dict[str, Any]], action_prefix: str) -> str:
    return json.dumps(
        [
            s.get("Resource")
            for s in statements
            if any(a.startswith(action_prefix) for a in _actions(s))
        ]
    )


NO_ROLE_MAY = [
    "dynamodb:Scan",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
    "dynamodb:DescribeStream",
    "dynamodb:ListStreams",
    "dynamodb:DeleteTable",
]


@pytest.mark.parametrize("number", [s.number for s in STAGES])
def test_no_role_may_scan_a_table_or_read_its_stream(synthesized, number):
    for role, statements in _statements_by_role(synthesized[number]).items():
        for action in NO_ROLE_MAY:
            assert not _allows(statements, action), (role, action)


@pytest.mark.parametrize("number", [s.number for s in STAGES])
def test_the_web_role_sends_no_mail(synthesized, number):
    web = _role(synthesized[number], "WebRole")
    assert not _allows(web, "ses:SendEmail")
    assert not _allows(web, "ses:SendRawEmail")


@pytest.mark.parametrize("number", BEHIND_CLOUDFRONT)
def test_the_web_role_uses_carts_by_key_and_the_assets_objects(synthesized, number):
    web = _role(synthesized[number], "WebRole")
    for action in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"):
        assert _allows(web, action)
    assert _allows(web, "s3:GetObject") and _allows(web, "s3:PutObject")
    assert _allows(web, "s3:ListBucket")  # `shop assets publish` skips what is there
    assert not _allows(web, "dynamodb:Query") and not _allows(web, "dynamodb:BatchWriteItem")


@pytest.mark.parametrize("number", [s.number for s in STAGES])
def test_web_instances_publish_the_static_files_where_the_cdn_serves_them(synthesized, number):
    """From stage 5 CloudFront serves /static/* from the bucket: each web instance publishes
    (idempotently) before it serves; before stage 5 the app serves them itself."""
    template = json.dumps(synthesized[number].template)
    publishes = "shop migrate && shop assets publish && exec shop serve" in template
    assert publishes == (number in BEHIND_CLOUDFRONT)


def test_stage_7_web_role_enqueues_orders_but_does_not_consume_them(synthesized):
    web = _role(synthesized[7], "WebRole")
    assert _allows(web, "sqs:SendMessage")
    assert not _allows(web, "sqs:ReceiveMessage") and not _allows(web, "sqs:DeleteMessage")


def test_stage_7_workers_consume_orders_and_send_mail_and_nothing_of_the_web_tier(synthesized):
    synth = synthesized[7]
    workers = _role(synth, "WorkersRole")
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "ses:SendEmail"):
        assert _allows(workers, action), action
    for action in ("sqs:SendMessage", "dynamodb:GetItem", "dynamodb:PutItem", "s3:PutObject"):
        assert not _allows(workers, action), action
    [jwt] = [k for k in synth.resources("AWS::SecretsManager::Secret") if k.startswith("JwtSecret")]
    read = _resource_refs(workers, "secretsmanager:")
    assert jwt not in read
    assert "DatabaseSecret" in read  # the workers write orders' side effects to the database
    [template] = [
        t
        for k, t in synth.resources("AWS::EC2::LaunchTemplate").items()
        if k.startswith("WorkerGroup")
    ]
    boot = json.dumps(template["Properties"]["LaunchTemplateData"]["UserData"])
    assert "SHOP_QUEUE_URL=" in boot
    for setting in ("SHOP_JWT_SECRET_ARN=", "SHOP_CARTS_TABLE=", "SHOP_ASSETS_BUCKET="):
        assert setting not in boot
