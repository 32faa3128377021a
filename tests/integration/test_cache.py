"""The catalog cache (stage 5) against real Redis servers: the shared one (database 15) and
servers of the tests' own, which they stop, stall and restart under a running shop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from app.adapters.cache import Cache
from app.adapters.resources import Resources
from app.kernel.security import Role
from app.main import create_app
from app.migrations import runner
from tests import pg_cluster
from tests.conftest import REDIS_URL, test_settings
from tests.integration.conftest import User, make_product, make_user


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own, without persistence, that it may stop and restart."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            )
            if probe.stdout.strip() == "PONG":
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # in case a test left it stalled
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def stall(self, stalled: bool) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP if stalled else signal.SIGCONT)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@asynccontextmanager
async def shop(database_url: str, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A shop of the test's own on the session's database, with these settings."""
    app = create_app(test_settings(database_url=database_url, **overrides))
    async with LifespanManager(app, startup_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:
            c.cache = app.state.resources.cache  # type: ignore[attr-defined]
            c.resources = app.state.resources  # type: ignore[attr-defined]
            yield c


async def product_keys(redis: Redis, cache: Cache, product_id: int) -> list[bytes]:
    """The Redis keys holding the cached answer of one product (any generation)."""
    return [k async for k in redis.scan_iter(cache.key("catalog", "*", "product", product_id))]


async def mget_calls(redis: Redis) -> int:
    """MGETs the server has answered: one per cached read that went to Redis."""
    return int((await redis.info("commandstats")).get("cmdstat_mget", {}).get("calls", 0))


async def set_calls(redis: Redis) -> int:
    return int((await redis.info("commandstats")).get("cmdstat_set", {}).get("calls", 0))


@pytest.fixture
async def shared_redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


def session_cache(resources: Resources) -> Cache:
    assert resources.cache is not None, "the session's shop has SHOP_REDIS_URL set"
    return resources.cache


# --- what is cached, and what makes it visible at once -------------------------------------------


async def test_a_product_read_twice_is_answered_from_redis_the_second_time(
    client: httpx.AsyncClient, resources: Resources, shared_redis: Redis
) -> None:
    cache = session_cache(resources)
    product = await make_product(resources, price_cents=700)
    before = cache.stats.hits

    first = await client.get(f"/products/{product.id}")
    assert await product_keys(shared_redis, cache, product.id)
    second = await client.get(f"/products/{product.id}")

    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["content-type"] == "application/json"
    assert cache.stats.hits == before + 1


async def test_a_price_change_is_visible_at_once_in_products_and_pages(
    client: httpx.AsyncClient, resources: Resources, admin: User
) -> None:
    cache = session_cache(resources)
    created = await client.post(
        "/admin/products",
        headers=admin.headers,
        json={"sku": "KETTLE-1", "name": "Kettle", "price_cents": 3000, "initial_stock": 4},
    )
    product_id = created.json()["id"]
    hits = cache.stats.hits
    for _ in range(2):
        assert (await client.get(f"/products/{product_id}")).json()["price_cents"] == 3000
        assert (await client.get("/products?q=kettle")).json()["items"][0]["price_cents"] == 3000
    assert cache.stats.hits == hits + 2  # both answers are cached

    changed = await client.put(
        f"/admin/products/{product_id}/price", headers=admin.headers, json={"price_cents": 2500}
    )

    assert changed.status_code == 200
    assert (await client.get(f"/products/{product_id}")).json()["price_cents"] == 2500
    assert (await client.get("/products?q=kettle")).json()["items"][0]["price_cents"] == 2500


async def test_a_restock_is_visible_at_once(
    client: httpx.AsyncClient, resources: Resources, admin: User
) -> None:
    cache = session_cache(resources)
    product = await make_product(resources, initial_stock=2)
    hits = cache.stats.hits
    for _ in range(2):
        assert (await client.get(f"/products/{product.id}")).json()["stock"] == 2
        assert (await client.get("/products")).json()["items"][0]["stock"] == 2
    assert cache.stats.hits == hits + 2

    await client.post(
        f"/admin/products/{product.id}/restock", headers=admin.headers, json={"quantity": 5}
    )

    assert (await client.get(f"/products/{product.id}")).json()["stock"] == 7
    assert (await client.get("/products")).json()["items"][0]["stock"] == 7


async def test_a_new_product_appears_at_once_in_a_cached_page(
    client: httpx.AsyncClient, resources: Resources, admin: User
) -> None:
    cache = session_cache(resources)
    await make_product(resources, name="Bowl")
    hits = cache.stats.hits
    for _ in range(2):
        assert [p["name"] for p in (await client.get("/products")).json()["items"]] == ["Bowl"]
    assert cache.stats.hits == hits + 1

    await client.post(
        "/admin/products",
        headers=admin.headers,
        json={"sku": "CUP-1", "name": "Cup", "price_cents": 900},
    )

    assert [p["name"] for p in (await client.get("/products")).json()["items"]] == ["Bowl", "Cup"]


async def test_an_unknown_product_still_answers_404_and_is_not_cached(
    client: httpx.AsyncClient, resources: Resources, shared_redis: Redis
) -> None:
    assert (await client.get("/products/424242")).status_code == 404
    assert await product_keys(shared_redis, session_cache(resources), 424242) == []
    product = await make_product(resources)
    assert (await client.get(f"/products/{product.id}")).status_code == 200


async def test_stock_taken_by_orders_ages_within_the_bound_and_never_decides_an_order(
    database_url: str, resources: Resources, alice: User
) -> None:
    product = await make_product(resources, initial_stock=1)
    order = {"lines": [{"product_id": product.id, "quantity": 1}]}
    async with shop(database_url, redis_url=REDIS_URL, cache_stock_staleness_s=0.5) as c:
        assert (await c.get(f"/products/{product.id}")).json()["stock"] == 1  # now cached
        assert (await c.post("/orders", headers=alice.headers, json=order)).status_code == 201

        # Orders do not invalidate: the cached answer may show the old stock...
        assert (await c.get(f"/products/{product.id}")).json()["stock"] == 1
        # ...but a reservation is judged by the database, never by the cache.
        refused = await c.post("/orders", headers=alice.headers, json=order)
        assert refused.status_code == 409
        assert refused.json()["available"] == 0

        await asyncio.sleep(0.6)  # SHOP_CACHE_STOCK_STALENESS_S
        assert (await c.get(f"/products/{product.id}")).json()["stock"] == 0


async def test_a_fill_that_raced_a_write_is_never_served_after_it() -> None:
    """The read-then-write race of cache-aside: a fill that read the database before a write
    committed is stored after the write's invalidation. It must not be served."""
    namespace = f"race-{time.time_ns()}"
    cache = Cache.from_url(REDIS_URL, namespace=namespace, ttl_s=60, timeout_s=1, backoff_s=1)
    # Another process of the fleet, which learnt the generation before the write.
    other = Cache.from_url(REDIS_URL, namespace=namespace, ttl_s=60, timeout_s=1, backoff_s=1)
    read_done = asyncio.Event()
    may_store = asyncio.Event()

    async def old_fill(_not_before: int) -> bytes:
        read_done.set()  # it has read the old row...
        await may_store.wait()  # ...and is slow to store it
        return b"old price"

    async def new_fill(_not_before: int) -> bytes:
        return b"new price"

    def key(generation: int) -> tuple[object, ...]:
        return ("generation", generation, "product", 1)

    try:
        await other.read_through(generation="g", key=lambda n: (n, "warm-up"), fill=new_fill)
        racing = asyncio.ensure_future(cache.read_through(generation="g", key=key, fill=old_fill))
        await read_done.wait()
        assert await cache.new_generation("g")  # the write commits, then invalidates
        may_store.set()
        assert await racing == b"old price"  # what that request read, before the write

        assert await cache.read_through(generation="g", key=key, fill=new_fill) == b"new price"
        assert await cache.read_through(generation="g", key=key, fill=old_fill) == b"new price"
        assert await other.read_through(generation="g", key=key, fill=old_fill) == b"new price"
    finally:
        await cache.close()
        await other.close()


async def test_every_key_expires_and_a_generation_outlives_its_entries(
    client: httpx.AsyncClient, resources: Resources, shared_redis: Redis
) -> None:
    """Nothing stays in Redis for ever (a shop on a new database leaves its old keys to
    expire), and a generation is kept far longer than an entry can live."""
    cache = session_cache(resources)
    product = await make_product(resources)  # a write: a new generation
    await client.get(f"/products/{product.id}")
    keys = [k async for k in shared_redis.scan_iter(cache.key("*"))]
    assert keys
    lives = {k: await shared_redis.ttl(k) for k in keys}
    assert -1 not in lives.values(), lives  # -1: no expiry (-2: expired since the scan)
    generation = await shared_redis.ttl(cache.key("catalog:generation"))
    assert generation > 1000 * cache.ttl_s


async def test_an_invalidation_that_failed_is_sent_when_redis_answers_again(
    redis_server: RedisServer,
) -> None:
    """A writer whose Redis call fails right after its commit: the other processes, which
    still reach Redis, serve the old answer only until the writer's cache reconnects."""
    namespace = f"late-{time.time_ns()}"
    reader = Cache.from_url(
        redis_server.url, namespace=namespace, ttl_s=60, timeout_s=1, backoff_s=1
    )
    # Every command of this one times out (1 µs); its reconnect allows itself a second.
    writer = Cache.from_url(
        redis_server.url, namespace=namespace, ttl_s=60, timeout_s=1e-6, backoff_s=0.05
    )

    async def fill(body: bytes) -> bytes:
        return body

    def key(generation: int) -> tuple[object, ...]:
        return ("generation", generation, "product", 1)

    try:
        assert await reader.read_through(generation="g", key=key, fill=lambda _: fill(b"old")) == (
            b"old"
        )
        assert not await writer.new_generation("g")

        async def reconnected() -> bool:
            return writer.available

        await wait_until(reconnected)
        fresh = await reader.read_through(generation="g", key=key, fill=lambda _: fill(b"new"))
        assert fresh == b"new"
    finally:
        await reader.close()
        await writer.close()


# --- a connection broken under redis-py --------------------------------------------------------


def _break_pooled_connections(client: Redis) -> int:
    """Close the transport of every idle pooled connection behind redis-py's back, as a
    handshake cut off by a timeout leaves it: the next command on it raises RuntimeError
    under uvloop (the loop `shop serve` runs), which is not a RedisError."""
    pool = client.connection_pool
    broken = 0
    for connection in list(pool._available_connections):  # type: ignore[attr-defined]
        connection._writer.transport.abort()
        broken += 1
    return broken


def test_a_connection_broken_under_the_client_costs_no_request_and_heals() -> None:
    import uvloop

    async def scenario() -> None:
        cache = Cache.from_url(
            REDIS_URL, namespace=f"broken-{time.time_ns()}", ttl_s=5, timeout_s=1, backoff_s=0.05
        )
        fills = 0

        async def fill(_not_before: int) -> bytes:
            nonlocal fills
            fills += 1
            return b"from the database"

        def key(generation: int) -> tuple[object, ...]:
            return ("generation", generation, "product", 1)

        try:
            assert await cache.read_through(generation="g", key=key, fill=fill)
            assert _break_pooled_connections(cache._redis) >= 1  # type: ignore[attr-defined]
            # Served from the database, no exception; the breaker opens.
            assert await cache.read_through(generation="g", key=key, fill=fill) == (
                b"from the database"
            )
            assert not cache.available

            async def reconnected() -> bool:
                return cache.available

            await wait_until(reconnected)  # new connections: Redis answers again
            hits = cache.stats.hits
            await cache.read_through(generation="g", key=key, fill=fill)
            assert cache.stats.hits == hits + 1
        finally:
            await cache.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_a_sign_in_limit_on_a_broken_connection_counts_locally_then_in_redis_again() -> None:
    import uvloop

    from app.adapters.ratelimit import Budget, RateLimit

    async def scenario() -> None:
        redis = Redis.from_url(REDIS_URL)
        limit = RateLimit(name=f"broken-{time.time_ns()}", window_s=60, redis=redis)
        budget = [Budget(key="someone@example.com", limit=2)]
        try:
            assert await limit.retry_after(budget) is None
            assert _break_pooled_connections(redis) >= 1
            await limit.record_failure(["someone@example.com"])  # no exception: local count
            await limit.record_failure(["someone@example.com"])  # Redis again, after a drop
            assert await limit.retry_after(budget) is None  # one in Redis, one in the process
            await limit.record_failure(["someone@example.com"])
            assert await limit.retry_after(budget) is not None
        finally:
            await redis.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# --- the in-process layer in front of Redis ---------------------------------------------------


async def test_a_hot_product_is_answered_from_process_memory_without_a_round_trip(
    database_url: str, resources: Resources, redis_server: RedisServer
) -> None:
    product = await make_product(resources, price_cents=1200)
    redis = Redis.from_url(redis_server.url)
    async with shop(database_url, redis_url=redis_server.url) as c:
        cache: Cache = c.cache  # type: ignore[attr-defined]
        await listening(c, product.id)
        before = await mget_calls(redis)
        for _ in range(20):
            assert (await c.get(f"/products/{product.id}")).json()["price_cents"] == 1200
        assert await mget_calls(redis) == before  # not one of them asked Redis
        assert cache.stats.local_hits >= 20
        # Redis keeps the entry for the staleness bound; a copy in memory never outlives it.
        (key,) = await product_keys(redis, cache, product.id)
        assert 0 < await redis.pttl(key) <= 5.0 * 1000
    await redis.aclose()


async def test_a_price_changed_by_another_process_drops_this_process_copy_at_once(
    database_url: str, resources: Resources, redis_server: RedisServer, admin: User
) -> None:
    """Two processes of one fleet: the copy one keeps in memory dies when the other writes,
    long before its time to live (30 s here)."""
    product = await make_product(resources, price_cents=1000)
    settings = {"redis_url": redis_server.url, "cache_local_s": 30, "cache_stock_staleness_s": 60}
    async with shop(database_url, **settings) as reader, shop(database_url, **settings) as writer:
        await listening(reader, product.id)
        await listening(writer, product.id)
        changed = await writer.put(
            f"/admin/products/{product.id}/price",
            headers=admin.headers,
            json={"price_cents": 800},
        )
        assert changed.status_code == 200
        seen = []
        deadline = time.monotonic() + 0.5  # a pub/sub message on one machine: well under 1 ms
        while time.monotonic() < deadline:
            seen.append((await reader.get(f"/products/{product.id}")).json()["price_cents"])
            if seen[-1] == 800:
                break
            await asyncio.sleep(0.001)
        assert seen[-1] == 800, seen
        assert (await reader.get("/products?limit=100")).json()["items"][0]["price_cents"] == 800


async def test_without_its_subscription_a_process_keeps_nothing_in_memory(
    database_url: str, resources: Resources, redis_server: RedisServer, admin: User
) -> None:
    """A process that cannot hear new generations must not trust its copies: reads go to
    Redis until it has subscribed again, and a change made meanwhile is seen at once."""
    product = await make_product(resources, price_cents=1000)
    redis = Redis.from_url(redis_server.url)
    async with (
        shop(database_url, redis_url=redis_server.url, cache_backoff_s=2) as reader,
        shop(database_url, redis_url=redis_server.url) as writer,
    ):
        cache: Cache = reader.cache  # type: ignore[attr-defined]
        await listening(reader, product.id)
        await listening(writer, product.id)
        killed = await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed == 2

        async def deaf() -> bool:
            return not cache.listening

        await wait_until(deaf)
        # A write the reader cannot hear about.
        changed = await writer.put(
            f"/admin/products/{product.id}/price", headers=admin.headers, json={"price_cents": 700}
        )
        assert changed.status_code == 200
        local = cache.stats.local_hits
        before = await mget_calls(redis)
        for _ in range(5):
            assert (await reader.get(f"/products/{product.id}")).json()["price_cents"] == 700
        assert cache.stats.local_hits == local
        assert await mget_calls(redis) >= before + 5

        await listening(reader, product.id)  # subscribed again: memory serves once more
    await redis.aclose()


async def test_a_request_carrying_its_own_write_position_skips_the_memory_copy() -> None:
    """Read-your-writes (stage 4): a customer whose token says "after my write" is answered
    from Redis or the database, never from a copy this process took before hearing of it."""
    from app.adapters.replicas import client_position

    namespace = f"position-{time.time_ns()}"
    cache = Cache.from_url(
        REDIS_URL, namespace=namespace, ttl_s=5, timeout_s=1, backoff_s=1, local_s=1
    )

    async def fill(_not_before: int) -> bytes:
        return b"answer"

    def key(generation: int) -> tuple[object, ...]:
        return ("generation", generation, "product", 1)

    try:
        for _ in range(50):
            await cache.read_through(generation="g", key=key, fill=fill)
            if cache.stats.local_hits:
                break
            await asyncio.sleep(0.02)
        assert cache.stats.local_hits, "the layer never started"
        local = cache.stats.local_hits
        with client_position(42):
            assert await cache.read_through(generation="g", key=key, fill=fill) == b"answer"
        assert cache.stats.local_hits == local
    finally:
        await cache.close()


async def test_a_copy_taken_from_redis_dies_with_its_entry_not_later() -> None:
    """The staleness bound holds across processes: a process that reads an entry late in its
    life keeps its copy only for what the entry had left, then asks the database again."""
    namespace = f"age-{time.time_ns()}"
    filler, reader = (
        Cache.from_url(REDIS_URL, namespace=namespace, ttl_s=2, timeout_s=1, backoff_s=1, local_s=2)
        for _ in range(2)
    )
    fills = {"filler": 0, "reader": 0, "other": 0}

    def fill_for(who: str) -> Callable[[int], Awaitable[bytes]]:
        async def fill(_not_before: int) -> bytes:
            fills[who] += 1
            return f"answer of {time.monotonic()}".encode()

        return fill

    def key(generation: int) -> tuple[object, ...]:
        return ("generation", generation, "product", 1)

    try:
        for cache in (filler, reader):
            await cache.read_through(generation="g", key=key, fill=fill_for("other"))

            async def subscribed(cache: Cache = cache) -> bool:
                return cache.listening

            await wait_until(subscribed)
        await filler.delete(filler.key(*key(0)))  # start afresh, now that both listen
        filled_at = time.monotonic()
        first = await filler.read_through(generation="g", key=key, fill=fill_for("filler"))
        await asyncio.sleep(1.4)
        assert await reader.read_through(generation="g", key=key, fill=fill_for("reader")) == first
        local = reader.stats.local_hits
        assert await reader.read_through(generation="g", key=key, fill=fill_for("reader")) == first
        assert reader.stats.local_hits == local + 1  # kept in memory...
        await asyncio.sleep(max(0.0, filled_at + 2.2 - time.monotonic()))
        later = await reader.read_through(generation="g", key=key, fill=fill_for("reader"))
        assert later != first  # ...but not past the entry's 2 s
        assert fills["reader"] == 1
    finally:
        await filler.close()
        await reader.close()


async def test_a_process_keeps_at_most_its_entry_bound_in_memory_the_oldest_go_first() -> None:
    cache = Cache.from_url(
        REDIS_URL,
        namespace=f"bound-{time.time_ns()}",
        ttl_s=5,
        timeout_s=1,
        backoff_s=1,
        local_s=1,
        local_entries=2,
    )

    async def fill(_not_before: int) -> bytes:
        return b"answer"

    async def read(product: int) -> bool:
        """Whether the in-process layer answered."""
        before = cache.stats.local_hits
        await cache.read_through(
            generation="g", key=lambda n: ("generation", n, "product", product), fill=fill
        )
        return cache.stats.local_hits > before

    try:

        async def subscribed() -> bool:
            return cache.listening

        await read(0)
        await wait_until(subscribed)
        for product in (1, 2, 3):
            await read(product)
        assert await read(3) and await read(2)
        assert not await read(1)  # the oldest of three, dropped for the bound of two
    finally:
        await cache.close()


async def listening(c: httpx.AsyncClient, product_id: int) -> None:
    """Read until the process answers from memory: its subscription is up and it has a copy."""
    cache: Cache = c.cache  # type: ignore[attr-defined]

    async def from_memory() -> bool:
        before = cache.stats.local_hits
        assert (await c.get(f"/products/{product_id}")).status_code == 200
        return cache.stats.local_hits > before

    await wait_until(from_memory)


# --- no stampede ---------------------------------------------------------------------------------


async def queries_waiting_on_a_lock(dsn: str) -> int:
    """Statements of this database that PostgreSQL shows waiting for a lock."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_concurrent_misses_of_a_cold_key_cost_one_database_query(
    database_url: str, resources: Resources, redis_server: RedisServer
) -> None:
    """20 requests for a product nobody has cached: one fills, 19 wait for it. The database
    is held (a table lock) until all 20 are waiting, so the count does not depend on timing,
    and PostgreSQL itself shows how many queries were sent."""
    product = await make_product(resources)
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    redis = Redis.from_url(redis_server.url)
    async with shop(database_url, redis_url=redis_server.url, cache_timeout_ms=1000) as c:
        cache: Cache = c.cache  # type: ignore[attr-defined]
        async with await psycopg.AsyncConnection.connect(dsn) as locker:
            await locker.execute("LOCK TABLE product IN ACCESS EXCLUSIVE MODE")
            url = f"/products/{product.id}"
            requests = [asyncio.ensure_future(c.get(url)) for _ in range(20)]

            async def all_waiting() -> bool:
                return cache.stats.coalesced == 19 and await queries_waiting_on_a_lock(dsn) > 0

            await wait_until(all_waiting)
            await asyncio.sleep(0.1)  # time for a second query, if one were coming
            queries = await queries_waiting_on_a_lock(dsn)
            await locker.rollback()
        responses = await asyncio.gather(*requests)
        assert {r.status_code for r in responses} == {200}
        assert len({r.content for r in responses}) == 1
        assert queries == 1
        assert (cache.stats.refills, cache.stats.coalesced) == (1, 19)
        assert await set_calls(redis) == 1
        # And the next request is a hit: no query, no SET.
        assert (await c.get(f"/products/{product.id}")).status_code == 200
        assert (cache.stats.refills, await set_calls(redis)) == (1, 1)
    await redis.aclose()


# --- Redis down or slow is not an outage ---------------------------------------------------------


async def test_redis_stopped_mid_loop_costs_no_request_and_fills_again_once_restarted(
    database_url: str, resources: Resources, redis_server: RedisServer
) -> None:
    product = await make_product(resources, price_cents=1500)
    async with shop(database_url, redis_url=redis_server.url, cache_backoff_s=0.2) as c:
        cache: Cache = c.cache  # type: ignore[attr-defined]
        statuses = []
        for i in range(60):
            if i == 20:
                await asyncio.to_thread(redis_server.stop)
            if i == 40:
                ready = await c.get("/readyz")
                assert ready.status_code == 200
                assert ready.json()["checks"]["database"] == "ok"
                assert ready.json()["checks"]["cache"].startswith("degraded")
                assert not cache.available  # the breaker is open: requests skip Redis
            response = await c.get(f"/products/{product.id}")
            statuses.append(response.status_code)
            assert response.json()["price_cents"] == 1500
            await asyncio.sleep(0.005)
        assert statuses == [200] * 60
        assert cache.stats.skipped > 0

        await asyncio.to_thread(redis_server.start)
        deadline = time.monotonic() + 10
        while not cache.available and time.monotonic() < deadline:
            assert (await c.get(f"/products/{product.id}")).status_code == 200
            await asyncio.sleep(0.05)
        assert cache.available

        redis = Redis.from_url(redis_server.url)
        hits = cache.stats.hits
        assert (await c.get(f"/products/{product.id}")).status_code == 200  # fills
        assert await product_keys(redis, cache, product.id)
        assert (await c.get(f"/products/{product.id}")).status_code == 200  # a hit
        assert cache.stats.hits > hits
        assert (await c.get("/readyz")).json()["checks"]["cache"] == "ok"
        await redis.aclose()


async def test_a_stalled_redis_costs_a_request_at_most_the_cache_timeout(
    database_url: str, resources: Resources, redis_server: RedisServer
) -> None:
    product = await make_product(resources)
    async with shop(database_url, redis_url=redis_server.url, cache_timeout_ms=100) as c:
        cache: Cache = c.cache  # type: ignore[attr-defined]
        assert (await c.get(f"/products/{product.id}")).status_code == 200  # connected
        redis_server.stall(True)  # SIGSTOP: connections stay open, nothing answers
        try:
            started = time.monotonic()
            slow = await c.get(f"/products/{product.id}")
            took = time.monotonic() - started
            skipped = cache.stats.skipped
            again = await c.get(f"/products/{product.id}")
            ready = await c.get("/readyz")
        finally:
            redis_server.stall(False)
    assert slow.status_code == again.status_code == 200
    assert slow.json() == again.json()
    assert took < 1.0  # the timeout (0.1 s) plus the database read
    assert cache.stats.failures == 1
    assert cache.stats.skipped > skipped  # the breaker is open: Redis is not even asked
    assert ready.status_code == 200
    assert ready.json()["checks"]["cache"].startswith("degraded")


async def test_the_shop_starts_and_serves_when_nothing_listens_at_the_cache_address(
    database_url: str, resources: Resources
) -> None:
    product = await make_product(resources)
    nowhere = f"redis://127.0.0.1:{_free_port()}/0"
    async with shop(database_url, redis_url=nowhere) as c:
        for _ in range(3):
            assert (await c.get(f"/products/{product.id}")).status_code == 200
            assert (await c.get("/products")).status_code == 200
        ready = await c.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["cache"].startswith("degraded")


async def test_a_stalled_redis_does_not_stall_sign_in(
    database_url: str, alice: User, redis_server: RedisServer
) -> None:
    """Sign-in counts failures in the same Redis: a stalled server must not hold it up."""
    async with shop(database_url, redis_url=redis_server.url) as c:
        redis_server.stall(True)
        try:
            started = time.monotonic()
            wrong = await c.post(
                "/auth/token", json={"email": alice.email, "password": "not-the-password"}
            )
            right = await c.post(
                "/auth/token", json={"email": alice.email, "password": "correct-horse-42"}
            )
            took = time.monotonic() - started
        finally:
            redis_server.stall(False)
    assert (wrong.status_code, right.status_code) == (401, 200)
    assert took < 2.0


# --- with read replicas (stage 4 + 5) ------------------------------------------------------------


@pytest.fixture(scope="module")
def primary_and_replica() -> Iterator[tuple[pg_cluster.Cluster, str, str]]:
    reason = pg_cluster.why_unavailable()
    if reason is not None:
        pytest.skip(str(reason))
    with pg_cluster.private_cluster() as primary:
        url = primary.create_database("shop")
        runner.upgrade(url)
        with pg_cluster.streaming_replica(primary) as replica:
            yield replica, url, replica.url("shop")


def replica_and_cache(replica_url: str, redis_url: str) -> dict[str, Any]:
    """A shop's settings with one replica, kept in use while its replay is paused, and a cache."""
    return {
        "database_replica_urls": [replica_url],
        "database_replica_check_s": 0.1,
        "database_replica_max_lag_s": 60,
        "redis_url": redis_url,
    }


async def test_a_price_change_is_not_cached_from_a_replica_that_lacks_it(
    primary_and_replica: tuple[pg_cluster.Cluster, str, str], redis_server: RedisServer
) -> None:
    """An admin changes a price through one instance while the replica's replay is paused; a
    visitor of another instance (no read-after token) must see the new price, not have the
    old one read from the replica and cached under the new generation."""
    replica, url, replica_url = primary_and_replica
    common = replica_and_cache(replica_url, redis_server.url)
    async with shop(url, **common) as admin_side, shop(url, **common) as visitor_side:
        resources: Resources = admin_side.resources  # type: ignore[attr-defined]
        admin = await make_user(resources, role=Role.ADMIN)
        product = await make_product(resources, price_cents=1000)
        await asyncio.sleep(0.5)  # the replica has the product, and both shops know it
        assert (await visitor_side.get(f"/products/{product.id}")).json()["price_cents"] == 1000
        replica.query("SELECT pg_wal_replay_pause()")
        try:
            changed = await admin_side.put(
                f"/admin/products/{product.id}/price",
                headers=admin.headers,
                json={"price_cents": 1500},
            )
            assert changed.status_code == 200
            seen = await visitor_side.get(f"/products/{product.id}")
            again = await visitor_side.get(f"/products/{product.id}")
        finally:
            replica.query("SELECT pg_wal_replay_resume()")
    assert seen.json()["price_cents"] == again.json()["price_cents"] == 1500


async def test_the_admin_stock_is_exact_while_the_cache_and_a_paused_replica_are_not(
    primary_and_replica: tuple[pg_cluster.Cluster, str, str], redis_server: RedisServer
) -> None:
    """What an inventory count (and the load suite's invariant check) reads: `GET /admin/stock`
    shows an order's units gone at once, where the public catalog may show them for a while."""
    replica, url, replica_url = primary_and_replica
    settings = replica_and_cache(replica_url, redis_server.url) | {"cache_stock_staleness_s": 60}
    async with shop(url, **settings) as c:
        resources: Resources = c.resources  # type: ignore[attr-defined]
        admin = await make_user(resources, role=Role.ADMIN)
        buyer = await make_user(resources)
        product = await make_product(resources, initial_stock=5)
        await asyncio.sleep(0.5)  # the replica has the product
        assert (await c.get(f"/products/{product.id}")).json()["stock"] == 5  # now cached
        replica.query("SELECT pg_wal_replay_pause()")
        try:
            order = {"lines": [{"product_id": product.id, "quantity": 2}]}
            assert (await c.post("/orders", headers=buyer.headers, json=order)).status_code == 201
            public = (await c.get(f"/products/{product.id}")).json()["stock"]
            pages, offset = [], 0
            while offset is not None:
                page = await c.get(f"/admin/stock?offset={offset}", headers=admin.headers)
                assert page.status_code == 200
                pages.extend(page.json()["items"])
                offset = page.json()["next_offset"]
        finally:
            replica.query("SELECT pg_wal_replay_resume()")
    assert public == 5  # the cached figure, for up to SHOP_CACHE_STOCK_STALENESS_S
    assert {"product_id": product.id, "quantity": 3} in pages
    ids = [item["product_id"] for item in pages]
    assert ids == sorted(set(ids))  # every product once, by id
