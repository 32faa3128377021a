"""The app finds its schema's database in the RDS secret exactly as AWS would hand it over.

The secret's JSON is rebuilt from the synthesized template the way Secrets Manager and RDS make it:
the generated string from `GenerateSecretString` (its template plus the generated password), then
the keys the RDS secret attachment adds (engine, host, port, dbInstanceIdentifier). It is stored
in moto's Secrets Manager and read by the app's own start-up code.

This test lives in e2e, not in tests/infra: it joins the two sides (infra and its tests never
import the app; see tests/infra/test_boundaries.py).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest

from app.adapters import aws
from tests.conftest import test_settings

INFRA = Path(__file__).resolve().parents[2] / "infra"
STAGE = 2  # the first stage with RDS; every later one builds the secret the same way


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    sys.path.insert(0, str(INFRA))
    import aws_cdk as cdk
    from aws_cdk.assertions import Template
    from shop_infra.stack import DEFAULT_REGION, ShopStack
    from shop_infra.stages import stage

    image = tmp_path_factory.mktemp("image")
    (image / "Dockerfile").write_text("FROM scratch\n")
    context = json.loads((INFRA / "cdk.json").read_text())["context"]
    app = cdk.App(outdir=str(tmp_path_factory.mktemp("cdk.out")), context=context)
    stack = ShopStack(
        app,
        stage=stage(STAGE),
        image_directory=image,
        env=cdk.Environment(region=DEFAULT_REGION),
    )
    result: dict[str, Any] = Template.from_stack(stack).to_json()
    return result


def _secret_as_aws_writes_it(template: dict[str, Any]) -> dict[str, Any]:
    resources = template["Resources"]
    [attachment] = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::SecretsManager::SecretTargetAttachment"
    ]
    assert attachment["TargetType"] == "AWS::RDS::DBInstance"
    secret = resources[attachment["SecretId"]["Ref"]]["Properties"]["GenerateSecretString"]
    value = json.loads(secret["SecretStringTemplate"])
    value[secret["GenerateStringKey"]] = "generated-Passw0rd"
    # What the attachment adds for an RDS instance, and nothing else.
    value |= {
        "engine": "postgres",
        "host": "127.0.0.1",
        "port": 5432,
        "dbInstanceIdentifier": "shop-primary",
    }
    return value


@pytest.fixture(scope="module")
def secrets_manager() -> Iterator[Any]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "secretsmanager",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    yield client
    server.stop()


def _resolve(client: Any, name: str, value: dict[str, Any], monkeypatch: Any) -> aws.Resolved:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    arn = client.create_secret(Name=name, SecretString=json.dumps(value))["ARN"]
    settings = test_settings(
        aws_region="us-east-1",
        aws_endpoint_url=client.meta.endpoint_url,
        database_secret_arn=arn,
    )
    return aws.resolve(settings)


def test_the_app_connects_to_the_shop_database_named_in_the_rds_secret(
    template: dict[str, Any], secrets_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = _secret_as_aws_writes_it(template)

    resolved = _resolve(secrets_manager, "rds/shop", value, monkeypatch)

    url = urlsplit(resolved.primary_url)
    assert url.path == "/shop"
    assert (url.username, url.hostname, url.port) == ("shop", "127.0.0.1", 5432)
    [db] = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::RDS::DBInstance"
    ]
    assert db["DBName"] == "shop"  # RDS creates the database the secret names


def test_a_secret_without_a_database_name_is_refused_not_guessed(
    template: dict[str, Any], secrets_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = _secret_as_aws_writes_it(template)
    del value["dbname"]

    with pytest.raises(ValueError, match="dbname"):
        _resolve(secrets_manager, "rds/no-dbname", value, monkeypatch)


def test_stage_8s_federated_databases_and_shards_are_found_in_their_own_rds_secrets(
    template: dict[str, Any], secrets_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    arns = {}
    for function in ("main", "accounting", "delivery", "shard-1", "shard-2"):
        value = _secret_as_aws_writes_it(template) | {"host": f"{function}.db.internal"}
        name = f"rds/federated-{function}"
        arns[function] = secrets_manager.create_secret(Name=name, SecretString=json.dumps(value))[
            "ARN"
        ]
    settings = test_settings(
        aws_region="us-east-1",
        aws_endpoint_url=secrets_manager.meta.endpoint_url,
        queue_url="https://sqs.us-east-1.amazonaws.com/123456789012/orders",
        database_secret_arn=arns["main"],
        accounting_database_secret_arn=arns["accounting"],
        delivery_database_secret_arn=arns["delivery"],
        order_shard_secret_arns=f"{arns['shard-1']},{arns['shard-2']}",
        # Shard 1's two replicas share its secret's credentials; shard 2 has none.
        order_shard_replica_hosts="shard-1-a.db.internal:6432,shard-1-b.db.internal;",
    )

    resolved = aws.resolve(settings)

    assert urlsplit(resolved.primary_url).hostname == "main.db.internal"
    assert {name: urlsplit(url).hostname for name, url in resolved.function_urls.items()} == {
        "accounting": "accounting.db.internal",
        "delivery": "delivery.db.internal",
    }
    assert all(urlsplit(url).path == "/shop" for url in resolved.function_urls.values())
    assert [urlsplit(url).hostname for url in resolved.shard_urls] == [
        "shard-1.db.internal",
        "shard-2.db.internal",
    ]
    assert [
        [(urlsplit(u).hostname, urlsplit(u).port) for u in g] for g in resolved.shard_replica_urls
    ] == [
        [("shard-1-a.db.internal", 6432), ("shard-1-b.db.internal", 5432)],
        [],
    ]
    assert {urlsplit(u).username for u in resolved.shard_replica_urls[0]} == {
        urlsplit(resolved.shard_urls[0]).username
    }
    # One without a database name is refused, naming it, as the primary's is.
    broken = _secret_as_aws_writes_it(template)
    del broken["dbname"]
    arn = secrets_manager.create_secret(
        Name="rds/federated-broken", SecretString=json.dumps(broken)
    )["ARN"]
    with pytest.raises(ValueError, match=f"{arn}.*dbname"):
        aws.resolve(settings.model_copy(update={"delivery_database_secret_arn": arn}))
