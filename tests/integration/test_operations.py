"""Health routes, secrets from Secrets Manager (moto server), and the embedded SQLite mode."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import boto3
import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.adapters import aws
from app.main import create_app
from app.migrations import runner
from tests.conftest import test_settings


async def test_healthz_needs_nothing_and_readyz_checks_database_and_cache(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "cache": "ok"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_readyz_answers_503_when_the_database_is_down() -> None:
    port = _free_port()  # nothing listens there
    settings = test_settings(
        database_url=f"postgresql+psycopg://nobody@127.0.0.1:{port}/none",
        database_pool_timeout_s=0.5,
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:
            assert (await c.get("/healthz")).status_code == 200
            ready = await c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"].startswith("unavailable")
            # A route that needs the database says so, with Retry-After, not a 500.
            products = await c.get("/products/1")
            assert products.status_code == 503
            assert products.headers["retry-after"] == "1"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_database_credentials_come_from_secrets_manager(
    moto_endpoint: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    parts = urlsplit(database_url)
    client = boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=moto_endpoint)
    db_arn = client.create_secret(
        Name="shop/db",
        SecretString=json.dumps(
            {
                "host": parts.hostname,
                "port": parts.port,
                "username": parts.username,
                "password": "p@ss:w/rd",
                "dbname": parts.path.lstrip("/"),
            }
        ),
    )["ARN"]
    jwt_arn = client.create_secret(Name="shop/jwt", SecretString="j" * 48)["ARN"]
    redis_arn = client.create_secret(Name="shop/redis", SecretString='{"token": "t/k@n"}')["ARN"]
    settings = test_settings(
        aws_region="eu-west-1",
        aws_endpoint_url=moto_endpoint,
        database_secret_arn=db_arn,
        database_replica_hosts="replica-a:6432,replica-b",
        jwt_secret_arn=jwt_arn,
        redis_url="rediss://cache.example:6379/0",
        redis_auth_secret_arn=redis_arn,
    )

    resolved = aws.resolve(settings)

    assert resolved.primary_url.startswith(
        "postgresql+psycopg://postgres:p%40ss%3Aw%2Frd@127.0.0.1"
    )
    assert [urlsplit(u).netloc.split("@")[1] for u in resolved.replica_urls] == [
        "replica-a:6432",
        "replica-b:5432",
    ]
    assert resolved.jwt_secret == "j" * 48
    assert resolved.redis_url == "rediss://:t%2Fk%40n@cache.example:6379/0"


async def test_the_shop_runs_on_embedded_sqlite_with_no_services(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = test_settings(sqlite_path=tmp_path / "shop.db", _env_file=None)
    assert settings.is_embedded
    runner.upgrade(settings.primary_url)
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:
            signed_up = await c.post(
                "/auth/sign-up",
                json={"email": "s@example.com", "password": "sqlite-passphrase", "full_name": "S"},
            )
            assert signed_up.status_code == 201
            token = (
                await c.post(
                    "/auth/token", json={"email": "s@example.com", "password": "sqlite-passphrase"}
                )
            ).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            from app.catalog import service as catalog
            from app.catalog.schemas import ProductCreate

            product = await catalog.create_product(
                app.state.resources.db,
                data=ProductCreate(sku="SQ-1", name="Lite", price_cents=300, initial_stock=3),
            )
            body = {"lines": [{"product_id": product.id, "quantity": 2}]}
            placed = await c.post(
                "/orders", headers={**headers, "Idempotency-Key": "sq"}, json=body
            )
            assert placed.status_code == 201
            replay = await c.post(
                "/orders", headers={**headers, "Idempotency-Key": "sq"}, json=body
            )
            assert replay.json() == placed.json()
            too_many = await c.post("/orders", headers=headers, json=body)
            assert too_many.status_code == 409
            assert (await c.get(f"/products/{product.id}")).json()["stock"] == 1
            cancelled = await c.post(f"/orders/{placed.json()['id']}/cancel", headers=headers)
            assert cancelled.json()["status"] == "cancelled"
            assert (await c.get(f"/products/{product.id}")).json()["stock"] == 3
            assert (await c.get("/readyz")).status_code == 200


async def test_reads_go_to_the_replicas_and_writes_to_the_primary(
    fresh_database: Callable[[], str], database_url: str
) -> None:
    """Stage 4's routing, shown with a second database standing in for a replica: a product
    written to the primary is not visible through reads until the 'replica' has it."""
    from app.adapters.db import Database
    from app.catalog import service as catalog
    from app.catalog.schemas import ProductCreate
    from app.kernel.errors import NotFound

    replica_url = fresh_database()
    runner.upgrade(replica_url)
    primary_only = Database(replica_url)  # to write the stand-in replica directly
    db = Database(database_url, [replica_url])
    await primary_only.open()
    await db.open()
    try:
        created = await catalog.create_product(
            db, data=ProductCreate(sku="REPL-1", name="Routed", price_cents=1, initial_stock=1)
        )
        with pytest.raises(NotFound):
            await catalog.get_product(db, product_id=created.id)  # the replica lacks it
        await catalog.create_product(
            primary_only,
            data=ProductCreate(sku="REPL-1", name="On the replica", price_cents=1),
        )
        found = await catalog.list_products(db, text="REPL", limit=5, offset=0)
        assert [p.name for p in found.items] == ["On the replica"]
    finally:
        await db.dispose()
        await primary_only.dispose()
