"""Stage 8's shards: each customer's orders in one of two order databases, found through the
directory, with the stock in the main database and no transaction across both, on five real
PostgreSQL databases (main, accounting, delivery, two shards) and moto's SQS.

A placement takes the stock and holds it for an order id on the main database, then records
the order in the shard; the id's fence in the shard decides whether the hold is confirmed or
the stock returns. A crash at every point (an exception raised there: the transaction open at
that moment rolls back, as it would if the process died) ends with stock and orders that agree,
settled by the request itself or by the worker once the hold expires.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from app.adapters.db import Database
from app.adapters.outbox import Event
from app.adapters.resources import Resources
from app.adapters.shards import LOGICAL_SHARDS, DirectoryProblem, load_directory, read_directory
from app.catalog import service as catalog
from app.kernel.errors import InvalidRequest, Unauthenticated, Unavailable
from app.kernel.security import Role
from app.orders import flows
from app.orders import service as orders
from app.orders.moves import move_logical_shard
from app.orders.schemas import OrderCreate
from app.worker import HOLDS_CONFIRMED, HOLDS_SETTLED, REGISTRY, Retention
from tests.integration.conftest import User, make_product, make_user
from tests.integration.stage8 import migrated, rows, shop_on, work_off, worker_of
from tests.integration.test_outbox import moto_endpoint as moto_endpoint  # fixtures
from tests.integration.test_outbox import queue_url as queue_url

NAMES = ("main", "accounting", "delivery", "shard-1", "shard-2")


@pytest.fixture(scope="module")
def sharded_urls(fresh_database: Callable[[], str]) -> dict[str, str]:
    """Five empty databases, migrated (and the shards prepared) as `shop migrate` does."""
    return migrated(fresh_database, NAMES)


@pytest.fixture
async def shop(
    sharded_urls: dict[str, str], moto_endpoint: str, queue_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Resources]]:
    async with shop_on(
        moto_endpoint,
        queue_url,
        database_url=sharded_urls["main"],
        accounting_database_url=sharded_urls["accounting"],
        delivery_database_url=sharded_urls["delivery"],
        order_shard_urls=f"{sharded_urls['shard-1']},{sharded_urls['shard-2']}",
    ) as running:
        yield running


def shards(resources: Resources) -> list[Database]:
    return list(resources.databases.shards)


async def orders_per_shard(resources: Resources) -> list[list[int]]:
    return [
        [r[0] for r in await rows(db, "SELECT id FROM customer_order ORDER BY id")]
        for db in shards(resources)
    ]


async def reservations(resources: Resources) -> Counter[str]:
    found = await rows(resources.db, "SELECT state FROM reservation")
    return Counter(state for (state,) in found)


async def stock_of(resources: Resources, product_id: int) -> int:
    [(quantity,)] = await rows(
        resources.db, "SELECT quantity FROM stock_level WHERE product_id = :p", p=product_id
    )
    return int(quantity)


async def place(
    client: httpx.AsyncClient, user: User, product_id: int, quantity: int = 1, key: str = ""
) -> httpx.Response:
    headers = {**user.headers, **({"Idempotency-Key": key} if key else {})}
    return await client.post(
        "/orders",
        headers=headers,
        json={"lines": [{"product_id": product_id, "quantity": quantity}]},
    )


async def customers_on_both_shards(resources: Resources, count: int = 2) -> list[User]:
    """`count` customers, alternating shards (the directory starts as logical k to k % 2 + 1)."""
    made = [await make_user(resources) for _ in range(count)]
    assert {resources.databases.directory[u.id % LOGICAL_SHARDS] for u in made} == {1, 2}
    return made


async def expire_holds(resources: Resources) -> None:
    await rows(resources.db, "UPDATE reservation SET expires_at = now() - interval '1 second'")


async def killed(*_args: Any, **_kwargs: Any) -> Any:
    raise ConnectionError("killed here")


# --- where orders go -----------------------------------------------------------------------------


async def test_each_order_lives_in_its_customers_shard_under_an_id_that_names_it(
    shop: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str
) -> None:
    client, resources = shop
    alice, bob = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=10, price_cents=1500)

    mine = [(await place(client, alice, product.id)).json() for _ in range(2)]
    theirs = (await place(client, bob, product.id, 3)).json()

    directory = resources.databases.directory
    placed = await orders_per_shard(resources)
    for user, found in ((alice, mine), (bob, [theirs])):
        shard = directory[user.id % LOGICAL_SHARDS]
        assert sorted(o["id"] for o in found) == placed[shard - 1]
        assert all(o["id"] % LOGICAL_SHARDS == user.id % LOGICAL_SHARDS for o in found)
    assert await rows(resources.db, "SELECT count(*) FROM customer_order") == [(0,)]
    # Held until the worker's pass confirms them: main sees one transaction per order.
    assert await reservations(resources) == Counter(held=3)
    assert await stock_of(resources, product.id) == 5
    assert await orders.confirm_committed_holds(resources.databases) == 3
    assert await reservations(resources) == Counter(confirmed=3)

    # Every read finds it in its shard, and only for its owner.
    await work_off(resources, worker_of(resources, moto_endpoint, queue_url))
    listed = (await client.get("/orders", headers=alice.headers)).json()["items"]
    assert sorted(o["id"] for o in listed) == sorted(o["id"] for o in mine)
    one = await client.get(f"/orders/{theirs['id']}", headers=bob.headers)
    assert one.status_code == 200 and one.json()["fulfilment"] == "done"
    assert (await client.get(f"/orders/{theirs['id']}", headers=alice.headers)).status_code == 404
    shipment = await client.get(f"/orders/{theirs['id']}/shipment", headers=bob.headers)
    assert shipment.status_code == 200 and shipment.json()["status"] == "pending"
    ledger = (await client.get(f"/ledger/orders/{theirs['id']}", headers=bob.headers)).json()
    assert sum(e["debit_cents"] for e in ledger) == theirs["total_cents"]


async def test_order_ids_past_32_bits_are_placed_fulfilled_read_and_paged(
    shop: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str
) -> None:
    """An id is its number times 1,024 plus its logical shard: past about two million orders
    it no longer fits 32 bits, and every table and route that holds one must take it."""
    client, resources = shop
    await rows(resources.db, "SELECT setval('order_number_seq', 2200000)")
    alice, bob = await customers_on_both_shards(resources)
    admin = await make_user(resources, role=Role.ADMIN)
    product = await make_product(resources, initial_stock=10, price_cents=1500)

    placed = []
    for user in (alice, bob, alice):
        answer = await place(client, user, product.id)
        assert answer.status_code == 201, answer.text
        placed.append((user, answer.json()))
    assert all(order["id"] > 2**31 for _, order in placed)

    await work_off(resources, worker_of(resources, moto_endpoint, queue_url))
    for user, order in placed:
        one = await client.get(f"/orders/{order['id']}", headers=user.headers)
        assert one.status_code == 200 and one.json()["fulfilment"] == "done", one.text
        shipment = await client.get(f"/orders/{order['id']}/shipment", headers=user.headers)
        assert shipment.status_code == 200, shipment.text
        ledger = await client.get(f"/ledger/orders/{order['id']}", headers=user.headers)
        assert sum(e["debit_cents"] for e in ledger.json()) == order["total_cents"]
    seen: list[int] = []
    cursor: str | None = None
    for _ in placed:  # one order a page: every cursor carries a 64-bit id
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/admin/orders", headers=admin.headers, params=params)).json()
        seen += [o["id"] for o in page["items"]]
        cursor = page["next_cursor"]
    assert seen == sorted((o["id"] for _, o in placed), reverse=True)
    # Beyond what a JSON client reads exactly: refused, naming the parameter.
    too_big = await client.get(f"/orders/{2**53}", headers=alice.headers)
    assert too_big.status_code == 422 and too_big.json()["detail"][0]["loc"] == ["path", "order_id"]


async def test_a_replayed_key_answers_the_first_order_and_holds_no_more_stock(
    shop: tuple[httpx.AsyncClient, Resources],
) -> None:
    client, resources = shop
    alice, _ = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=10)

    first = await place(client, alice, product.id, 2, key="once")
    again = await place(client, alice, product.id, 2, key="once")
    other = await place(client, alice, product.id, 3, key="once")

    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert other.status_code == 422
    assert await stock_of(resources, product.id) == 8
    assert await reservations(resources) == Counter(held=1)


async def test_twenty_concurrent_retries_of_one_key_make_one_order(
    shop: tuple[httpx.AsyncClient, Resources],
) -> None:
    client, resources = shop
    alice, _ = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=100)

    answers = await asyncio.gather(
        *(place(client, alice, product.id, 2, key="same-checkout") for _ in range(20))
    )

    placed = [a for a in answers if a.status_code == 201]
    assert {a.json()["id"] for a in placed} == {placed[0].json()["id"]}
    assert all(a.status_code in (201, 409) for a in answers), [a.status_code for a in answers]
    assert sum(len(ids) for ids in await orders_per_shard(resources)) == 1
    assert await stock_of(resources, product.id) == 98
    assert await orders.confirm_committed_holds(resources.databases) == 1
    states = await reservations(resources)
    assert states["confirmed"] == 1 and states["held"] == 0


async def test_no_oversell_with_two_hundred_buyers_on_both_shards(
    shop: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str
) -> None:
    client, resources = shop
    buyers = await customers_on_both_shards(resources, 20)
    product = await make_product(resources, initial_stock=50)

    answers = await asyncio.gather(*(place(client, buyers[n % 20], product.id) for n in range(200)))

    codes = Counter(a.status_code for a in answers)
    assert codes == Counter({201: 50, 409: 150}), codes
    assert await stock_of(resources, product.id) == 0
    per_shard = await orders_per_shard(resources)
    assert sum(len(ids) for ids in per_shard) == 50 and all(per_shard)
    assert await orders.confirm_committed_holds(resources.databases, limit=20) == 20
    assert await orders.confirm_committed_holds(resources.databases) == 30
    assert await reservations(resources) == Counter(confirmed=50)
    await work_off(resources, worker_of(resources, moto_endpoint, queue_url))
    admin = await make_user(resources, role=Role.ADMIN)
    balance = (await client.get("/admin/ledger/trial-balance", headers=admin.headers)).json()
    total = sum(a.json()["total_cents"] for a in answers if a.status_code == 201)
    assert balance["balanced"] and balance["total_debit_cents"] == total


async def test_an_account_that_no_longer_exists_holds_no_stock(
    shop: tuple[httpx.AsyncClient, Resources],
) -> None:
    _, resources = shop
    product = await make_product(resources, initial_stock=5)

    with pytest.raises(Unauthenticated):
        await orders.place_order(
            resources.databases,
            customer_id=424_242,
            data=OrderCreate.model_validate({"lines": [{"product_id": product.id, "quantity": 1}]}),
            tax_rate_bp=2000,
            relay=resources.relay,
        )

    assert await stock_of(resources, product.id) == 5
    assert await reservations(resources) == Counter()


# --- crashes between the databases ---------------------------------------------------------------


async def test_killed_before_the_order_commits_the_stock_returns_at_once(
    shop: tuple[httpx.AsyncClient, Resources], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, resources = shop
    alice, _ = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=5)
    monkeypatch.setattr(flows, "record_placed", killed)

    with pytest.raises(ConnectionError):
        await place(client, alice, product.id, 2)

    assert await stock_of(resources, product.id) == 5
    assert await reservations(resources) == Counter(released=1)
    assert await orders_per_shard(resources) == [[], []]
    [(void,)] = await rows(resources.databases.shard_for(alice.id), "SELECT void FROM order_fence")
    assert void is True


async def test_a_hold_nobody_settled_is_released_by_the_worker_and_the_late_order_refused(
    shop: tuple[httpx.AsyncClient, Resources],
    moto_endpoint: str,
    queue_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed after the stock was held, before the order's transaction: nothing settles it
    until the hold expires and the worker fences the id. A request for that id arriving later
    (one that stalled instead of dying) is refused with 503, and the stock is back."""
    client, resources = shop
    alice, _ = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=5)
    worker = worker_of(resources, moto_endpoint, queue_url)
    stalled = asyncio.Event()
    resume = asyncio.Event()
    real_claim = orders._claim_key

    async def stall(*args: Any, **kwargs: Any) -> Any:
        stalled.set()
        await resume.wait()
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(orders, "_claim_key", stall)
    request = asyncio.create_task(place(client, alice, product.id, 2, key="slow"))
    await asyncio.wait_for(stalled.wait(), 10)
    assert await stock_of(resources, product.id) == 3
    assert await reservations(resources) == Counter(held=1)

    released = HOLDS_SETTLED.labels("released")._value.get()
    await expire_holds(resources)
    await worker.settle()
    assert await stock_of(resources, product.id) == 5
    assert await reservations(resources) == Counter(released=1)
    assert HOLDS_SETTLED.labels("released")._value.get() == released + 1  # on /metrics

    resume.set()
    late = await request
    assert late.status_code == 503 and late.headers["Retry-After"] == "1"
    assert await orders_per_shard(resources) == [[], []]
    assert await stock_of(resources, product.id) == 5
    # The client's retry with the same key starts afresh and places it.
    monkeypatch.setattr(orders, "_claim_key", real_claim)
    retried = await place(client, alice, product.id, 2, key="slow")
    assert retried.status_code == 201
    assert await stock_of(resources, product.id) == 3


async def test_the_worker_confirms_the_holds_of_committed_orders_and_only_those(
    shop: tuple[httpx.AsyncClient, Resources],
    moto_endpoint: str,
    queue_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A placed order leaves its hold held; the worker's next pass confirms it (not counted as
    a settlement: nothing went wrong). A hold whose order has not committed, still within its
    time, is left alone by that pass, and released once it expires."""
    client, resources = shop
    alice, bob = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=5)
    worker = worker_of(resources, moto_endpoint, queue_url)
    answer = await place(client, alice, product.id, 2)
    assert answer.status_code == 201
    with monkeypatch.context() as patch:
        patch.setattr(flows, "record_placed", killed)  # this order never commits
        patch.setattr(orders, "settle_reservation", killed)  # and its request dies
        with pytest.raises(ConnectionError):
            await place(client, bob, product.id, 1)
    assert await reservations(resources) == Counter(held=2)
    assert await stock_of(resources, product.id) == 2

    confirmed = HOLDS_CONFIRMED._value.get()
    settled = HOLDS_SETTLED.labels("confirmed")._value.get()
    await worker.settle()
    assert await reservations(resources) == Counter(held=1, confirmed=1)
    assert HOLDS_CONFIRMED._value.get() == confirmed + 1  # on /metrics
    assert HOLDS_SETTLED.labels("confirmed")._value.get() == settled
    assert await stock_of(resources, product.id) == 2

    await expire_holds(resources)
    await worker.settle()
    assert await reservations(resources) == Counter(released=1, confirmed=1)
    assert await stock_of(resources, product.id) == 3
    assert await orders_per_shard(resources) in (
        [[answer.json()["id"]], []],
        [[], [answer.json()["id"]]],
    )


async def test_a_settlement_killed_after_its_fence_is_finished_by_the_next(
    shop: tuple[httpx.AsyncClient, Resources],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, resources = shop
    alice, _ = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=5)
    real_release = catalog.release_stock
    with monkeypatch.context() as patch:
        patch.setattr(flows, "record_placed", killed)  # the order never commits
        patch.setattr(catalog, "release_stock", killed)  # nor does the settlement's release
        with pytest.raises(ConnectionError):
            await place(client, alice, product.id, 2)
    assert await reservations(resources) == Counter(held=1)
    assert await stock_of(resources, product.id) == 3
    assert catalog.release_stock is real_release

    await expire_holds(resources)
    assert await orders.settle_expired_reservations(resources.databases) == {"released": 1}
    assert await stock_of(resources, product.id) == 5
    assert await orders.settle_expired_reservations(resources.databases) == {}


async def test_a_hold_whose_orders_fence_was_purged_is_confirmed_not_released(
    shop: tuple[httpx.AsyncClient, Resources],
) -> None:
    """Fences are purged by age; a hold left held past that (its worker's passes failing for
    days) must not be settled as if its order never committed: the order itself decides."""
    client, resources = shop
    alice, _ = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=5)
    answer = await place(client, alice, product.id, 2)
    assert answer.status_code == 201
    order_id = answer.json()["id"]
    for shard in shards(resources):  # as the purge would, the hold still held
        await rows(shard, "DELETE FROM order_fence WHERE order_id = :o", o=order_id)
    await expire_holds(resources)

    assert await orders.settle_expired_reservations(resources.databases) == {"confirmed": 1}
    assert await reservations(resources) == Counter(confirmed=1)
    assert await stock_of(resources, product.id) == 3
    fences = [await rows(s, "SELECT void FROM order_fence WHERE order_id = :o", o=order_id)
              for s in shards(resources)]  # fmt: skip
    assert sorted(fences, key=len) == [[], [(False,)]]


# --- cancelling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fulfilled", [False, True])
async def test_a_cancelled_order_returns_its_stock_through_the_event(
    shop: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str, fulfilled: bool
) -> None:
    client, resources = shop
    alice, _ = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=5)
    worker = worker_of(resources, moto_endpoint, queue_url)
    order = (await place(client, alice, product.id, 2)).json()
    if fulfilled:
        await work_off(resources, worker)

    cancelled = await client.post(f"/orders/{order['id']}/cancel", headers=alice.headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert await stock_of(resources, product.id) == 3  # not yet: the stock is elsewhere
    await work_off(resources, worker)

    assert await stock_of(resources, product.id) == 5
    entries = await rows(
        resources.databases.accounting,
        "SELECT count(*), coalesce(sum(debit_cents - credit_cents), 0) FROM ledger_entry "
        "WHERE order_id = :o",
        o=order["id"],
    )
    assert entries == ([(6, 0)] if fulfilled else [(0, 0)])
    # The event applied again changes nothing.
    [event] = [
        Event(id=i, kind=k, payload=p)
        for i, k, p in await rows(
            resources.databases.shard_for(alice.id),
            "SELECT id, kind, payload FROM outbox_event WHERE kind = 'order.cancelled'",
        )
    ]
    await flows.handle_order_cancelled(
        resources.databases, event_id=event.id, payload=event.payload
    )
    assert await stock_of(resources, product.id) == 5


# --- the directory and the purge -----------------------------------------------------------------


async def test_a_directory_naming_a_shard_not_configured_is_refused(
    shop: tuple[httpx.AsyncClient, Resources],
) -> None:
    _, resources = shop
    directory = await load_directory(resources.db, shards=2)
    assert sorted(Counter(directory.values()).items()) == [(1, 512), (2, 512)]

    with pytest.raises(DirectoryProblem, match="SHOP_ORDER_SHARD_URLS gives 1"):
        await load_directory(resources.db, shards=1)


async def test_the_purge_forgets_settled_holds_and_their_fences(
    shop: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str
) -> None:
    client, resources = shop
    alice, bob = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=5)
    for user in (alice, bob):
        assert (await place(client, user, product.id)).status_code == 201
    await work_off(resources, worker_of(resources, moto_endpoint, queue_url))
    everything = Retention(keep_events=timedelta(0), keep_keys=timedelta(0))

    worker = worker_of(resources, moto_endpoint, queue_url, retention=everything)
    await worker.settle()  # the pass that purges settles first: held holds are kept
    deleted = await worker.purge()

    assert deleted["reservation"] == 4  # two holds in main, two fences, one in each shard
    assert await reservations(resources) == Counter()
    for shard in shards(resources):
        assert await rows(shard, "SELECT count(*) FROM order_fence") == [(0,)]
        assert await rows(shard, "SELECT count(*) FROM outbox_event") == [(0,)]
    metrics = generate_latest(REGISTRY).decode()
    for table in ("outbox_event", "idempotency_key", "reservation", "order_fence"):
        assert f'shop_worker_table_rows{{table="{table}"}}' in metrics


# --- the admins' listing across shards -----------------------------------------------------------


async def test_the_admin_listing_merges_every_shard_newest_first_and_never_shifts(
    shop: tuple[httpx.AsyncClient, Resources],
) -> None:
    client, resources = shop
    alice, bob = await customers_on_both_shards(resources)
    admin = await make_user(resources, role=Role.ADMIN)
    product = await make_product(resources, initial_stock=50)
    placed = [(await place(client, (alice, bob)[n % 2], product.id)).json()["id"] for n in range(5)]
    newest_first = placed[::-1]

    seen: list[int] = []
    cursor: str | None = None
    for page in range(3):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        answer = await client.get("/admin/orders", headers=admin.headers, params=params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        seen += [o["id"] for o in body["items"]]
        assert {o["customer_id"] for o in body["items"]} <= {alice.id, bob.id}
        cursor = body["next_cursor"]
        if page == 0:  # placed while an admin pages: only on a first page
            late = (await place(client, alice, product.id)).json()["id"]
    assert cursor is None
    assert seen == newest_first
    first = (await client.get("/admin/orders", headers=admin.headers)).json()["items"]
    assert [o["id"] for o in first] == [late, *newest_first]


async def test_the_admin_listing_is_for_admins_and_refuses_a_made_up_cursor(
    shop: tuple[httpx.AsyncClient, Resources],
) -> None:
    client, resources = shop
    alice, _ = await customers_on_both_shards(resources)
    admin = await make_user(resources, role=Role.ADMIN)

    assert (await client.get("/admin/orders")).status_code == 401
    assert (await client.get("/admin/orders", headers=alice.headers)).status_code == 403
    for cursor in ("abc", "1.2.3", "9" * 20 + ".1", "-5.1"):
        refused = await client.get(
            "/admin/orders", headers=admin.headers, params={"cursor": cursor}
        )
        assert refused.status_code == 422, (cursor, refused.text)
        assert refused.json()["detail"][0]["loc"] == ["query", "cursor"]
    empty = await client.get("/admin/orders", headers=admin.headers, params={"cursor": "0.1"})
    assert empty.json() == {"items": [], "limit": 20, "next_cursor": None}


# --- moving a logical shard online ---------------------------------------------------------------


def _logical(user: User) -> int:
    return user.id % LOGICAL_SHARDS


async def _orders_of(db: Database, logical: int) -> list[int]:
    found = await rows(
        db, "SELECT id FROM customer_order WHERE id % 1024 = :k ORDER BY id", k=logical
    )
    return [order_id for (order_id,) in found]


async def _follow(resources: Resources) -> None:
    """What every process's `follow_directory` does within seconds of a move."""
    resources.databases.directory.update((await read_directory(resources.db))[1])


async def test_a_logical_shard_moves_with_its_orders_keys_and_events_and_stays_served(
    shop: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str
) -> None:
    client, resources = shop
    alice, bob = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=20, price_cents=1000)
    first = (await place(client, alice, product.id, key="once")).json()
    second = (await place(client, alice, product.id)).json()
    theirs = (await place(client, bob, product.id)).json()
    await work_off(resources, worker_of(resources, moto_endpoint, queue_url))
    k = _logical(alice)
    source = resources.databases.directory[k]
    to = 3 - source
    origin, target = shards(resources)[source - 1], shards(resources)[to - 1]

    said: list[str] = []
    moved = await move_logical_shard(
        resources.databases, logical=k, to=to, grace_s=0, say=said.append
    )
    await _follow(resources)

    assert (moved.source, moved.target) == (source, to)
    assert moved.rows["customer_order"] == 2 and moved.rows["order_line"] == 2
    assert moved.rows["idempotency_key"] == 1 and moved.rows["outbox_event"] == 2
    assert await _orders_of(origin, k) == [] and await rows(
        origin,
        "SELECT count(*) FROM outbox_event WHERE (payload->>'order_id')::bigint % 1024 = :k",
        k=k,
    ) == [(0,)]
    assert await _orders_of(target, k) == sorted([first["id"], second["id"]])
    assert any("copied to shard" in line for line in said)
    # Served from its new shard: reads, a replayed key, a new order, the worker's steps.
    listed = (await client.get("/orders", headers=alice.headers)).json()["items"]
    assert sorted(o["id"] for o in listed) == sorted([first["id"], second["id"]])
    one = await client.get(f"/orders/{first['id']}", headers=alice.headers)
    assert one.status_code == 200 and one.json()["fulfilment"] == "done"
    again = await place(client, alice, product.id, key="once")
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json()["id"] == first["id"]
    third = await place(client, alice, product.id)
    assert third.status_code == 201, third.text
    await work_off(resources, worker_of(resources, moto_endpoint, queue_url))
    assert third.json()["id"] in await _orders_of(target, k)
    done = await client.get(f"/orders/{third.json()['id']}", headers=alice.headers)
    assert done.json()["fulfilment"] == "done"
    # The other logical shards did not move.
    assert (await client.get(f"/orders/{theirs['id']}", headers=bob.headers)).status_code == 200
    assert await stock_of(resources, product.id) == 16
    # Moving it again where it is already is refused, naming the parameter.
    with pytest.raises(InvalidRequest, match="already"):
        await move_logical_shard(resources.databases, logical=k, to=to, grace_s=0)


async def test_an_order_for_a_logical_shard_being_copied_waits_and_keeps_no_stock(
    shop: tuple[httpx.AsyncClient, Resources],
) -> None:
    client, resources = shop
    alice, bob = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=5)
    k = _logical(alice)
    origin = shards(resources)[resources.databases.directory[k] - 1]
    await rows(origin, "INSERT INTO shard_move VALUES (:k, 'moving', now())", k=k)

    paused = await place(client, alice, product.id)
    assert paused.status_code == 503 and paused.headers["Retry-After"] == "1", paused.text
    assert "moving" in paused.json()["detail"]
    # Its transaction on the shard did nothing, so the stock came back at once.
    assert await stock_of(resources, product.id) == 5
    assert await reservations(resources) == Counter(released=1)
    assert await _orders_of(origin, k) == []
    # Other customers' orders go on.
    assert (await place(client, bob, product.id)).status_code == 201


async def test_a_process_with_the_old_directory_is_refused_and_rereads_it(
    shop: tuple[httpx.AsyncClient, Resources],
) -> None:
    _, resources = shop
    alice, _ = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=5)
    k = _logical(alice)
    old = dict(resources.databases.directory)
    to = 3 - old[k]
    await move_logical_shard(resources.databases, logical=k, to=to, grace_s=0)
    # Another process, which has not looked at the directory since the move.
    elsewhere = replace(resources.databases, directory=old, stale=asyncio.Event())
    data = OrderCreate.model_validate({"lines": [{"product_id": product.id, "quantity": 1}]})

    relay = resources.relay

    with pytest.raises(Unavailable):
        await orders.place_order(
            elsewhere, customer_id=alice.id, data=data, tax_rate_bp=0, relay=relay
        )
    assert elsewhere.stale.is_set()  # its follower reads the directory now, not in seconds
    assert await stock_of(resources, product.id) == 5
    elsewhere.directory.update((await read_directory(resources.db))[1])
    placed = await orders.place_order(
        elsewhere, customer_id=alice.id, data=data, tax_rate_bp=0, relay=relay
    )
    assert placed.status_code == 201
    assert await _orders_of(shards(resources)[to - 1], k) == [placed.body["id"]]


async def test_orders_placed_while_their_logical_shard_moves_all_end_in_the_new_shard(
    shop: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str
) -> None:
    """Under load: buyers of one logical shard and of another order without pause while the
    first moves; each retries a 503 as its Retry-After says (faster here). Every order
    answered 201 is in its customer's shard afterwards, once; the stock agrees."""
    client, resources = shop
    alice, bob = await customers_on_both_shards(resources)
    product = await make_product(resources, initial_stock=1000)
    k = _logical(alice)
    to = 3 - resources.databases.directory[k]

    moved = asyncio.Event()
    after_move: list[int] = []

    async def buyer(user: User, count: int) -> list[int]:
        placed = []
        while len(placed) < count or (user is alice and not after_move):
            for _attempt in range(100):
                answer = await place(client, user, product.id)
                if answer.status_code != 503:
                    break
                await asyncio.sleep(0.05)
            assert answer.status_code == 201, answer.text
            placed.append(answer.json()["id"])
            if moved.is_set() and user is alice:
                after_move.append(placed[-1])
        return placed

    async def mover() -> None:
        await asyncio.sleep(0.2)
        await move_logical_shard(resources.databases, logical=k, to=to, grace_s=0.5)
        moved.set()

    mine, theirs, _ = await asyncio.gather(buyer(alice, 40), buyer(bob, 40), mover())
    # The move happened in the middle of the buying, not before or after it.
    assert 0 < len(after_move) < len(mine)

    assert await _orders_of(shards(resources)[to - 1], k) == sorted(mine)
    assert await _orders_of(shards(resources)[2 - to], k) == []
    assert await orders_per_shard(resources) != [[], []]
    await expire_holds(resources)
    await worker_of(resources, moto_endpoint, queue_url).settle()
    assert await stock_of(resources, product.id) == 1000 - len(mine) - len(theirs)
    held = await reservations(resources)
    assert held["confirmed"] == len(mine) + len(theirs) and held["held"] == 0
    for order_id in mine[-3:]:
        one = await client.get(f"/orders/{order_id}", headers=alice.headers)
        assert one.status_code == 200
