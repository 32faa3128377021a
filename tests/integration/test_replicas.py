"""Stage 4 on a real streaming replica: writes go to the primary, a customer reads their own
writes through any instance, and a lagging or stopped replica costs no request.

A private primary (tests/pg_cluster.py) and a hot standby made from it with pg_basebackup; two
shops (two create_app, no memory in common) on both. Which server answered a read is read from
the replica's own statistics (pg_stat_statements), never from the app.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.adapters.resources import Resources
from app.main import create_app
from app.migrations import runner
from tests import pg_cluster
from tests.conftest import test_settings
from tests.integration.conftest import make_product, make_user

pytestmark = pytest.mark.skipif(
    pg_cluster.why_unavailable() is not None, reason=str(pg_cluster.why_unavailable())
)

READ_AFTER = "X-Shop-Read-After"
ORDER_READS = "%order_line%customer_order%"  # GET /orders/{id}: the order joined to its lines
PRODUCT_READS = "%FROM product%"
WRITTEN = "SELECT pg_current_wal_insert_lsn() - '0/0'"
REPLAYED = "SELECT pg_last_wal_replay_lsn() - '0/0'"


@dataclass
class Servers:
    primary: pg_cluster.Cluster
    replica: pg_cluster.Cluster
    url: str
    replica_url: str

    def reads_on_replica(self, pattern: str) -> int:
        """Statements matching `pattern` the replica has run: its own count, not the app's."""
        calls = self.replica.query(
            f"SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '{pattern}'",
            "shop",
        )
        return int(calls)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    settings = ("shared_preload_libraries=pg_stat_statements",)
    with pg_cluster.private_cluster(settings=settings) as primary:
        url = primary.create_database("shop")
        runner.upgrade(url)
        primary.query("CREATE EXTENSION pg_stat_statements", "shop")
        with pg_cluster.streaming_replica(primary) as replica:
            yield Servers(primary, replica, url, replica.url("shop"))


@dataclass
class Shop:
    resources: Resources
    http: httpx.AsyncClient


@asynccontextmanager
async def shop(servers: Servers, **overrides: Any) -> AsyncIterator[Shop]:
    """One app instance on the primary and the replica, with an HTTP client of its own that
    keeps no cookies (an API client): the read-after token goes back only where a test sends it."""
    settings = test_settings(
        database_url=servers.url,
        database_replica_urls=[servers.replica_url],
        **{"database_replica_check_s": 0.2, **overrides},
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=20):
        transport = httpx.ASGITransport(app=app)
        no_cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://shop.test", cookies=no_cookies
        ) as http:
            yield Shop(app.state.resources, http)


async def eventually(check: Callable[[], bool], what: str, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"not in {within_s} s: {what}"
        await asyncio.sleep(0.05)


async def caught_up(servers: Servers, *shops: Shop) -> None:
    """Until every shop has seen the replica healthy and past everything written so far."""
    wanted = int(servers.primary.query("SELECT pg_current_wal_insert_lsn() - '0/0'"))

    def ready() -> bool:
        return all(
            r.healthy and r.position >= wanted
            for s in shops
            for r in s.resources.db.replicas.replicas
        )

    await eventually(ready, "the replica caught up and healthy")


async def test_a_customer_reads_their_writes_through_another_instance_while_replay_is_paused(
    servers: Servers,
) -> None:
    async with shop(servers, database_replica_max_lag_s=30) as one, shop(servers) as other:
        product = await make_product(one.resources, initial_stock=5)
        alice = await make_user(one.resources)
        await caught_up(servers, one, other)
        servers.replica.query("SELECT pg_wal_replay_pause()")
        try:
            placed = await one.http.post(
                "/orders",
                headers=alice.headers,
                json={"lines": [{"product_id": product.id, "quantity": 1}]},
            )
            assert placed.status_code == 201
            token = placed.headers[READ_AFTER]
            order_id = placed.json()["id"]
            before = servers.reads_on_replica(ORDER_READS)

            with_token = {**alice.headers, READ_AFTER: token}
            seen = await other.http.get(f"/orders/{order_id}", headers=with_token)
            assert seen.status_code == 200
            assert seen.json() == placed.json()
            listed = await other.http.get("/orders", headers=with_token)
            assert [o["id"] for o in listed.json()["items"]] == [order_id]
            assert servers.reads_on_replica(ORDER_READS) == before  # the primary answered

            # Without its token the same request lands on the paused replica, which lacks it.
            assert (
                await other.http.get(f"/orders/{order_id}", headers=alice.headers)
            ).status_code == 404
            assert servers.reads_on_replica(ORDER_READS) == before + 1

            # The cookie carries the same position, for browsers.
            assert f"shop_read_after={token};" in placed.headers["Set-Cookie"]
            by_cookie = await other.http.get(
                f"/orders/{order_id}",
                headers={**alice.headers, "Cookie": f"shop_read_after={token}"},
            )
            assert by_cookie.status_code == 200
            forged = {**alice.headers, READ_AFTER: "ffffffffff." + token.split(".")[1]}
            assert (await other.http.get(f"/orders/{order_id}", headers=forged)).status_code == 404

            # A cancellation on the second instance is seen on the first with the new token.
            cancelled = await other.http.post(f"/orders/{order_id}/cancel", headers=with_token)
            assert cancelled.status_code == 200
            again = await one.http.get(
                f"/orders/{order_id}",
                headers={**alice.headers, READ_AFTER: cancelled.headers[READ_AFTER]},
            )
            assert again.json()["status"] == "cancelled"

        finally:
            servers.replica.query("SELECT pg_wal_replay_resume()")


async def test_a_sign_in_right_after_a_sign_up_on_another_instance_lets_the_customer_in(
    servers: Servers,
) -> None:
    """No read-after token (an app that drops headers it does not know): the account is read
    from the primary, so the lagging replica answers neither 401 nor a failure toward the
    lockout, and the new token works on that instance at once."""
    async with shop(servers, database_replica_max_lag_s=30) as one, shop(servers) as other:
        await make_product(one.resources)  # a first write for the replica to catch up with
        await caught_up(servers, one, other)
        servers.replica.query("SELECT pg_wal_replay_pause()")
        try:
            credentials = {"email": "new@example.com", "password": "correct-horse-42"}
            signed_up = await one.http.post(
                "/auth/sign-up", json={**credentials, "full_name": "New Customer"}
            )
            assert signed_up.status_code == 201

            signed_in = await other.http.post("/auth/token", json=credentials)

            assert signed_in.status_code == 200, signed_in.text
            bearer = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
            mine = await other.http.get("/orders", headers=bearer)
            assert mine.status_code == 200, mine.text
            assert mine.json()["items"] == []
        finally:
            servers.replica.query("SELECT pg_wal_replay_resume()")


async def test_a_retried_checkout_answers_its_order_while_the_replica_lags(
    servers: Servers,
) -> None:
    """The first answer was lost with its read-after token; the retry lands on another
    instance whose replica has not replayed the order yet."""
    async with shop(servers, database_replica_max_lag_s=30) as one, shop(servers) as other:
        product = await make_product(one.resources, initial_stock=5)
        alice = await make_user(one.resources)
        await caught_up(servers, one, other)
        put = await one.http.put(
            f"/cart/items/{product.id}", headers=alice.headers, json={"quantity": 2}
        )
        assert put.status_code == 200, put.text
        version = put.json()["version"]
        await caught_up(servers, one, other)
        servers.replica.query("SELECT pg_wal_replay_pause()")
        try:
            first = await one.http.post(
                "/cart/checkout", headers=alice.headers, json={"version": version}
            )
            assert first.status_code == 201, first.text

            retry = await other.http.post(
                "/cart/checkout", headers=alice.headers, json={"version": version}
            )

            assert retry.status_code == 201, retry.text
            assert retry.headers["Idempotent-Replayed"] == "true"
            assert retry.json()["id"] == first.json()["id"]
        finally:
            servers.replica.query("SELECT pg_wal_replay_resume()")


async def test_a_read_after_a_write_goes_to_the_replica_once_it_has_replayed_the_write(
    servers: Servers,
) -> None:
    """Between two polls (30 s apart here) an instance does not know the replica caught up:
    it asks, and the replica, not the primary, answers the customer's read."""
    slow_polls = {"database_replica_check_s": 30.0, "database_replica_max_lag_s": 120}
    async with shop(servers, **slow_polls) as one, shop(servers, **slow_polls) as other:
        product = await make_product(one.resources, initial_stock=5)
        alice = await make_user(one.resources)

        def replayed(position: int) -> Callable[[], bool]:
            return lambda: int(servers.replica.query(REPLAYED)) >= position

        await eventually(replayed(int(servers.primary.query(WRITTEN))), "the replica caught up")
        await other.resources.db.replicas.check()  # the last poll before the write
        (known,) = other.resources.db.replicas.replicas
        assert known.healthy
        placed = await one.http.post(
            "/orders",
            headers=alice.headers,
            json={"lines": [{"product_id": product.id, "quantity": 1}]},
        )
        assert placed.status_code == 201
        written = int(servers.primary.query(WRITTEN))
        await eventually(replayed(written), "the replica replayed the order")
        assert known.position < written  # the instance has not seen it yet
        token = placed.headers[READ_AFTER]
        before = servers.reads_on_replica(ORDER_READS)
        seen = await other.http.get(
            f"/orders/{placed.json()['id']}", headers={**alice.headers, READ_AFTER: token}
        )
        assert seen.status_code == 200
        assert seen.json() == placed.json()
        assert servers.reads_on_replica(ORDER_READS) == before + 1  # the replica answered
        assert known.position >= written  # and the instance now knows where the replica is


async def test_a_lagging_replica_is_skipped_and_rejoins_once_it_catches_up(
    servers: Servers,
) -> None:
    async with shop(servers, database_replica_max_lag_s=1) as visitor:
        await caught_up(servers, visitor)
        (replica,) = visitor.resources.db.replicas.replicas
        servers.replica.query("SELECT pg_wal_replay_pause()")
        try:
            product = await make_product(visitor.resources)
            await eventually(lambda: not replica.healthy, "the lagging replica skipped", 5)
            before = servers.reads_on_replica(PRODUCT_READS)
            # An anonymous visitor, no token: the replica lacks the product, the primary has it.
            assert (await visitor.http.get(f"/products/{product.id}")).status_code == 200
            assert servers.reads_on_replica(PRODUCT_READS) == before
        finally:
            servers.replica.query("SELECT pg_wal_replay_resume()")
        await eventually(lambda: replica.healthy, "the replica back once caught up", 5)
        for _ in range(5):
            assert (await visitor.http.get(f"/products/{product.id}")).status_code == 200
        assert servers.reads_on_replica(PRODUCT_READS) == before + 5


async def test_stopping_the_replica_loses_no_request_and_it_takes_reads_again_when_back(
    servers: Servers,
) -> None:
    async with shop(servers) as one:
        product = await make_product(one.resources, initial_stock=100)
        alice = await make_user(one.resources)  # made outside a request: no token
        await caught_up(servers, one)
        placed = await one.http.post(
            "/orders",
            headers=alice.headers,
            json={"lines": [{"product_id": product.id, "quantity": 1}]},
        )
        assert placed.status_code == 201, placed.text
        order_id = placed.json()["id"]
        await caught_up(servers, one)
        (replica,) = one.resources.db.replicas.replicas
        statuses: list[int] = []
        stop = asyncio.Event()

        async def customer() -> None:
            while not stop.is_set():
                for path, headers in (
                    (f"/products/{product.id}", {}),
                    (f"/orders/{order_id}", alice.headers),
                    ("/orders", alice.headers),
                ):
                    statuses.append((await one.http.get(path, headers=headers)).status_code)

        customers = [asyncio.create_task(customer()) for _ in range(8)]
        try:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(servers.replica.stop)
            await eventually(lambda: not replica.healthy, "the stopped replica skipped", 5)
            await asyncio.sleep(0.5)  # reads go on, on the primary
        finally:
            stop.set()
            await asyncio.gather(*customers)
            await asyncio.to_thread(servers.replica.start)
        assert len(statuses) > 50
        assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}

        await eventually(lambda: replica.healthy, "the restarted replica back", 10)
        before = servers.reads_on_replica(PRODUCT_READS)
        for _ in range(5):
            assert (await one.http.get(f"/products/{product.id}")).status_code == 200
        assert servers.reads_on_replica(PRODUCT_READS) == before + 5


async def test_a_read_block_that_loses_its_replica_skips_it_from_the_next_read(
    servers: Servers,
) -> None:
    async with shop(servers, database_replica_check_s=60) as one:  # no check meanwhile
        db = one.resources.db
        (replica,) = db.replicas.replicas
        assert replica.healthy
        with pytest.raises(DBAPIError):
            async with db.read() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        assert not replica.healthy
        assert db.replicas.choose() is None  # the primary answers meanwhile
        await db.replicas.check()
        assert replica.healthy


async def test_stock_a_visitor_sees_can_be_older_than_the_cache_ttl_by_the_replica_lag(
    servers: Servers,
) -> None:
    """The cache keeps an answer its time to live, but the answer may have been read from a
    replica up to its lag bound (plus a check interval) behind: the stated bound is the sum."""
    from tests.conftest import REDIS_URL

    ttl = 0.5
    async with shop(
        servers, redis_url=REDIS_URL, cache_stock_staleness_s=ttl, database_replica_max_lag_s=30
    ) as visitor:
        settings = visitor.resources.settings
        product = await make_product(visitor.resources, initial_stock=5)
        alice = await make_user(visitor.resources)
        await caught_up(servers, visitor)
        servers.replica.query("SELECT pg_wal_replay_pause()")
        try:
            placed = await visitor.http.post(
                "/orders",
                headers=alice.headers,
                json={"lines": [{"product_id": product.id, "quantity": 2}]},
            )
            assert placed.status_code == 201
            sold = time.monotonic()
            await asyncio.sleep(ttl * 3)

            seen = await visitor.http.get(f"/products/{product.id}")

            age = time.monotonic() - sold
            assert seen.json()["stock"] == 5  # the sale is older than the cache's TTL
            assert ttl < age <= settings.stock_staleness_bound_s
            assert settings.stock_staleness_bound_s == ttl + 30 + 0.2
        finally:
            servers.replica.query("SELECT pg_wal_replay_resume()")
        await caught_up(servers, visitor)
        await asyncio.sleep(ttl)
        assert (await visitor.http.get(f"/products/{product.id}")).json()["stock"] == 3
