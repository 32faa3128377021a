"""What every database connection is told (timeouts, prepared statements), that the fast path
compiles its SQL with a connected dialect, and that retries have a bound."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import bindparam, func, insert, literal, select, text

from app.adapters.db import Database, run, unique_violation
from app.adapters.resources import Resources
from app.catalog import service as catalog
from app.kernel.security import Role
from app.main import create_app
from app.orders.models import Reservation
from tests.conftest import test_settings
from tests.integration.conftest import make_product, make_user


def make_database(url: str, **rules: object) -> Database:
    return Database(url, **rules)  # type: ignore[arg-type]


async def fetch_driver_setting(db: Database, sql: str) -> tuple[str, str]:
    """Two text columns from a connection of the driver pool that serves the fast path."""
    async with db._fast_pools[0].connection() as conn:
        row = await (await conn.execute(sql)).fetchone()
    assert row is not None
    first, second = row.values()
    return first, second


async def settings_seen_by_every_pool(db: Database) -> set[tuple[str, str]]:
    """(statement_timeout, lock_timeout) as each kind of connection reports it."""
    seen = set()
    show = (
        "SELECT current_setting('statement_timeout') AS statement, "
        "current_setting('lock_timeout') AS lock"
    )
    async with db.write() as conn:
        seen.add(tuple((await conn.execute(text(show))).one()))
    async with db.read() as conn:
        seen.add(tuple((await conn.execute(text(show))).one()))
    seen.add(await fetch_driver_setting(db, show))
    return seen


async def test_every_connection_carries_the_statement_and_lock_timeouts(
    database_url: str,
) -> None:
    db = make_database(database_url, statement_timeout_ms=1234, lock_timeout_ms=567)
    await db.open()
    try:
        assert await settings_seen_by_every_pool(db) == {("1234ms", "567ms")}
    finally:
        await db.dispose()


async def test_a_statement_over_the_timeout_answers_503_and_the_shop_goes_on(
    database_url: str,
) -> None:
    app = create_app(test_settings(database_url=database_url, database_statement_timeout_ms=200))
    async with LifespanManager(app, startup_timeout=30):
        resources: Resources = app.state.resources
        admin = await make_user(resources, role=Role.ADMIN)
        product = await make_product(resources)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            # Hold the product's stock row so that a restock has to wait longer than allowed.
            async with resources.db.write() as holder:
                await holder.execute(
                    text("SELECT 1 FROM stock_level WHERE product_id = :p FOR UPDATE"),
                    {"p": product.id},
                )
                response = await client.post(
                    f"/admin/products/{product.id}/restock",
                    headers=admin.headers,
                    json={"quantity": 1},
                )
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert (await client.get(f"/products/{product.id}")).json()["stock"] == product.stock


async def test_a_statement_refused_at_a_pipelines_commit_leaves_the_connection_usable(
    database_url: str,
) -> None:
    """A statement whose error only shows at the pipelined transaction's COMMIT (its result was
    never read: stage 8's fence, taken meanwhile) once left the pool's one connection aborted,
    and every later checkout failed."""
    db = make_database(database_url, pool_size=1, max_overflow=0)
    await db.open()
    try:
        taken = insert(Reservation).values(
            order_id=bindparam("order_id"),
            customer_id=1,
            lines=[],
            state="held",
            expires_at=bindparam("at"),
            created_at=bindparam("at"),
        )
        at = datetime.now(UTC)
        async with db.write() as conn:
            await run(conn, taken, {"order_id": 987_654, "at": at})
        with pytest.raises(psycopg.Error) as refused:
            async with db.pipelined() as conn:
                await run(conn, taken, {"order_id": 987_654, "at": at})
        assert unique_violation(refused.value)
        for _ in range(2):  # the driver pool's one connection, usable again
            async with db.pipelined() as conn:
                assert (await run(conn, select(literal(1).label("one")))) == [{"one": 1}]
        for _ in range(2):
            async with db.write() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        async with db.write() as conn:
            await conn.execute(text("DELETE FROM reservation WHERE order_id = 987654"))
        await db.dispose()


async def test_prepared_statements_can_be_turned_off_for_a_pooling_proxy(
    database_url: str,
) -> None:
    app = create_app(test_settings(database_url=database_url, database_prepared_statements=False))
    async with LifespanManager(app, startup_timeout=30):
        resources: Resources = app.state.resources
        product = await make_product(resources)
        alice = await make_user(resources)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            for _ in range(8):  # psycopg would prepare by itself after 5 runs
                assert (await client.get(f"/products/{product.id}")).status_code == 200
                placed = await client.post(
                    "/orders",
                    headers=alice.headers,
                    json={"lines": [{"product_id": product.id, "quantity": 1}]},
                )
                assert placed.status_code == 201
        prepared = await fetch_driver_setting(
            resources.db,
            "SELECT count(*)::text AS prepared, '' AS nothing FROM pg_prepared_statements",
        )
        assert prepared[0] == "0"


async def test_the_fast_path_compiles_its_sql_with_a_connected_dialect(
    database_url: str, resources: Resources
) -> None:
    await make_product(resources, name="Blue kettle")
    db = make_database(database_url)
    await db.open()
    try:
        # Compiled from a dialect that has not met the server, the search's SQL came out
        # wrong on some SQLAlchemy versions (500 on every call).
        assert db.primary.dialect.server_version_info is not None
        found = await catalog.list_products(db, text="kettle", limit=5, offset=0)
        assert [p.name for p in found.items] == ["Blue kettle"]
        assert db.primary.dialect.server_version_info is not None
    finally:
        await db.dispose()


async def test_a_shipment_that_keeps_changing_gives_up_with_409_not_a_hang(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    admin = await make_user(resources, role=Role.ADMIN)
    alice = await make_user(resources)
    product = await make_product(resources)
    placed = await client.post(
        "/orders",
        headers=alice.headers,
        json={"lines": [{"product_id": product.id, "quantity": 1}]},
    )
    shipment = (
        await client.get(f"/orders/{placed.json()['id']}/shipment", headers=alice.headers)
    ).json()
    # A trigger that silently skips every update: each compare-and-set round is lost, as if
    # another move won it.
    async with resources.db.write() as conn:
        await conn.execute(
            text(
                "CREATE FUNCTION skip_update() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RETURN NULL; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER skip_shipment_update BEFORE UPDATE ON shipment "
                "FOR EACH ROW EXECUTE FUNCTION skip_update()"
            )
        )
    try:
        response = await asyncio.wait_for(
            client.post(
                f"/admin/shipments/{shipment['id']}/advance",
                headers=admin.headers,
                json={"to": "packed"},
            ),
            timeout=30,
        )
        assert response.status_code == 409
        assert "retry" in response.json()["detail"]
    finally:
        async with resources.db.write() as conn:
            await conn.execute(text("DROP TRIGGER skip_shipment_update ON shipment"))
            await conn.execute(text("DROP FUNCTION skip_update()"))


async def test_pooled_connections_the_server_closed_are_replaced_not_failed(
    database_url: str,
) -> None:
    # A restart, failover or terminate closes the connections idle in the pool: the next
    # transactions get new ones, not an error (the pool checks a connection's socket as it
    # leaves, instead of a round trip to the server before every transaction); a healthy
    # pooled connection is reused.
    from app.adapters.db import make_engine

    engine = make_engine(database_url, pool_size=2, max_overflow=0)
    try:
        async with engine.begin() as one, engine.begin() as two:
            pids = {
                (await one.execute(text("SELECT pg_backend_pid()"))).scalar_one(),
                (await two.execute(text("SELECT pg_backend_pid()"))).scalar_one(),
            }
        async with engine.begin() as conn:
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() in pids

        other = make_engine(database_url, pool_size=1, max_overflow=0)
        try:
            async with other.begin() as admin:
                await admin.execute(
                    text("SELECT pg_terminate_backend(p) FROM unnest(CAST(:pids AS int[])) AS p"),
                    {"pids": sorted(pids)},
                )
        finally:
            await other.dispose()
        await asyncio.sleep(0.2)  # the server's goodbye reaches the pooled sockets
        async with engine.begin() as one, engine.begin() as two:
            now = {
                (await one.execute(text("SELECT pg_backend_pid()"))).scalar_one(),
                (await two.execute(text("SELECT pg_backend_pid()"))).scalar_one(),
            }
        assert not now & pids
    finally:
        await engine.dispose()


async def test_a_pipelined_insert_does_not_wait_for_a_key_it_never_asked_for(
    database_url: str,
) -> None:
    # An INSERT into a table with a generated key once carried an implicit RETURNING of that
    # key, and `run` waited for it: a round trip more per order, and a placing request killed
    # while its shard was locked had not yet sent its COMMIT. Queued, it returns at once even
    # while the server is held up; a RETURNING the statement asks for is still waited for.
    from app.delivery.service import _OPEN

    db = make_database(database_url, pool_size=1, max_overflow=0)
    await db.open()
    try:
        blocker = await psycopg.AsyncConnection.connect(database_url.replace("+psycopg", ""))
        try:
            await blocker.execute("LOCK TABLE shipment IN EXCLUSIVE MODE")
            with pytest.raises(LookupError):  # thrown below: the block rolls back
                async with db.pipelined() as conn:
                    params = {"order_id": 2_000_000_001, "customer_id": 1, "at": datetime.now(UTC)}
                    assert await asyncio.wait_for(run(conn, _OPEN, params), 2) == []
                    asked = asyncio.ensure_future(run(conn, select(literal(1).label("one"))))
                    with pytest.raises(TimeoutError):  # behind the locked INSERT
                        await asyncio.wait_for(asyncio.shield(asked), 0.5)
                    await blocker.rollback()
                    assert await asked == [{"one": 1}]
                    raise LookupError("undo")
            async with db.write() as conn:
                left = await conn.execute(
                    text("SELECT count(*) FROM shipment WHERE order_id = 2000000001")
                )
                assert left.scalar_one() == 0
        finally:
            await blocker.close()
    finally:
        await db.dispose()


async def test_the_driver_pools_replace_connections_the_server_closed(database_url: str) -> None:
    # Orders and the fast reads use the driver's pool: a restart that closed its idle
    # connections costs new connections, not failed requests.
    db = make_database(database_url, pool_size=2, max_overflow=0)
    await db.open()
    try:
        pool = db._fast_pools[0]
        async with pool.connection() as one, pool.connection() as two:
            pids = {one.info.backend_pid, two.info.backend_pid}
        async with db.write() as admin:
            await admin.execute(
                text("SELECT pg_terminate_backend(p) FROM unnest(CAST(:pids AS int[])) AS p"),
                {"pids": sorted(pids)},
            )
        await asyncio.sleep(0.2)  # the server's goodbye reaches the pooled sockets
        for _ in range(3):
            async with db.pipelined() as conn:
                rows = await run(conn, select(func.pg_backend_pid().label("pid")))
            assert rows[0]["pid"] not in pids
            assert (await db.fetch_all(select(literal(1).label("one")))) == [{"one": 1}]
    finally:
        await db.dispose()
