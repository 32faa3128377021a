"""Stage 8's order shards with read replicas: a customer's order reads go to their shard's
replica, read-your-writes holds per shard, and a logical shard moved into a shard with replicas
is read there at once.

Main, accounting, delivery and shard 1 are databases on the shared server; shard 2 is a private
primary with a hot standby made from it (tests/pg_cluster.py), so that its replay can be paused.
Which server answered a read is read from the standby's own statistics (pg_stat_statements),
never from the app.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from app.adapters.resources import Resources
from app.adapters.shards import LOGICAL_SHARDS, read_directory
from app.migrations import runner
from app.orders.moves import move_logical_shard
from tests import pg_cluster
from tests.integration.conftest import User, make_product, make_user
from tests.integration.stage8 import migrated, shop_on
from tests.integration.test_outbox import moto_endpoint as moto_endpoint  # fixtures
from tests.integration.test_outbox import queue_url as queue_url

pytestmark = pytest.mark.skipif(
    pg_cluster.why_unavailable() is not None, reason=str(pg_cluster.why_unavailable())
)

READ_AFTER = "X-Shop-Read-After"
ORDER_READS = "%order_line%customer_order%"  # GET /orders/{id}: the order joined to its lines


@dataclass
class Servers:
    urls: dict[str, str]
    shard: pg_cluster.Cluster
    standby: pg_cluster.Cluster

    def reads_on_standby(self) -> int:
        """Order reads shard 2's standby has run: its own count, not the app's."""
        calls = self.standby.query(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
            f"WHERE query LIKE '{ORDER_READS}'",
            "shop",
        )
        return int(calls)


@pytest.fixture(scope="module")
def servers(fresh_database: Callable[[], str]) -> Iterator[Servers]:
    urls = migrated(fresh_database, ("main", "accounting", "delivery", "shard-1"))
    settings = ("shared_preload_libraries=pg_stat_statements",)
    with pg_cluster.private_cluster(settings=settings) as shard:
        url = shard.create_database("shop")
        runner.upgrade(url)
        runner.prepare_shard(url)
        shard.query("CREATE EXTENSION pg_stat_statements", "shop")
        with pg_cluster.streaming_replica(shard) as standby:
            yield Servers(urls | {"shard-2": url}, shard, standby)


@pytest.fixture
async def shop(
    servers: Servers, moto_endpoint: str, queue_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Resources]]:
    """The shop on both shards; only shard 2 has a replica (shard 1's group is empty)."""
    urls = servers.urls
    async with shop_on(
        moto_endpoint,
        queue_url,
        database_url=urls["main"],
        accounting_database_url=urls["accounting"],
        delivery_database_url=urls["delivery"],
        order_shard_urls=f"{urls['shard-1']},{urls['shard-2']}",
        order_shard_replica_urls=f";{servers.standby.url('shop')}",
        database_replica_check_s=0.2,
        database_replica_max_lag_s=30,  # paused replay must not take the standby out
    ) as running:
        yield running


async def customer_on(resources: Resources, shard: int) -> User:
    while True:
        user = await make_user(resources)
        if resources.databases.directory[user.id % LOGICAL_SHARDS] == shard:
            return user


async def standby_caught_up(servers: Servers, resources: Resources) -> None:
    """Until the shop has seen shard 2's standby healthy and past all shard 2 has written."""
    wanted = int(servers.shard.query("SELECT pg_current_wal_insert_lsn() - '0/0'"))
    [replica] = resources.databases.shards[1].replicas.replicas
    deadline = time.monotonic() + 10
    while not (replica.healthy and replica.position >= wanted):
        assert time.monotonic() < deadline, replica
        await asyncio.sleep(0.05)


async def place(client: httpx.AsyncClient, user: User, product_id: int) -> httpx.Response:
    placed = await client.post(
        "/orders", headers=user.headers, json={"lines": [{"product_id": product_id, "quantity": 1}]}
    )
    assert placed.status_code == 201, placed.text
    return placed


async def test_a_customers_order_reads_go_to_their_shards_replica_and_include_their_writes(
    servers: Servers, shop: tuple[httpx.AsyncClient, Resources]
) -> None:
    client, resources = shop
    product = await make_product(resources, initial_stock=5)
    alice = await customer_on(resources, 2)
    await standby_caught_up(servers, resources)
    servers.standby.query("SELECT pg_wal_replay_pause()")
    try:
        placed = await place(client, alice, product.id)
        order_id = placed.json()["id"]
        token = placed.headers[READ_AFTER]
        # The token names main's position and shard 2's, none for shard 1.
        main, shard_1, shard_2 = token.split(".")[0].split("-")
        assert main and not shard_1 and shard_2
        client.cookies.clear()  # the token goes only where the test sends it
        before = servers.reads_on_standby()

        seen = await client.get(f"/orders/{order_id}", headers={**alice.headers, READ_AFTER: token})
        assert seen.status_code == 200 and seen.json() == placed.json()
        assert servers.reads_on_standby() == before  # shard 2's primary answered

        # Without it, the read lands on the paused standby, which lacks the order.
        blind = await client.get(f"/orders/{order_id}", headers=alice.headers)
        assert blind.status_code == 404
        assert servers.reads_on_standby() == before + 1
    finally:
        servers.standby.query("SELECT pg_wal_replay_resume()")

    await standby_caught_up(servers, resources)
    caught = await client.get(f"/orders/{order_id}", headers=alice.headers)
    assert caught.status_code == 200 and caught.json() == placed.json()
    assert servers.reads_on_standby() == before + 2  # the standby answers, now with it


async def test_a_logical_shard_moved_into_a_shard_with_replicas_is_read_there_at_once(
    servers: Servers, shop: tuple[httpx.AsyncClient, Resources]
) -> None:
    client, resources = shop
    product = await make_product(resources, initial_stock=5)
    bob = await customer_on(resources, 1)
    placed = await place(client, bob, product.id)
    await standby_caught_up(servers, resources)
    # The standby stops replaying for a second and a half, across the move's copy: the move
    # must not send the logical shard's reads there before it holds the copy.
    servers.standby.query("SELECT pg_wal_replay_pause()")

    async def resume_later() -> None:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(servers.standby.query, "SELECT pg_wal_replay_resume()")

    resumed = asyncio.create_task(resume_later())
    said: list[str] = []
    started = time.monotonic()
    try:
        await move_logical_shard(
            resources.databases, logical=bob.id % LOGICAL_SHARDS, to=2, grace_s=0, say=said.append
        )
        took = time.monotonic() - started
    finally:
        await resumed
    assert took >= 1.5  # it waited for the standby
    assert any("shard 2's replicas hold the copy" in line for line in said), said
    resources.databases.directory.update((await read_directory(resources.databases.main))[1])

    client.cookies.clear()
    before = servers.reads_on_standby()
    moved = await client.get(f"/orders/{placed.json()['id']}", headers=bob.headers)
    assert moved.status_code == 200 and moved.json() == placed.json()
    assert servers.reads_on_standby() == before + 1  # read from the standby, found
