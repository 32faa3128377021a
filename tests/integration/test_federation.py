"""Stage 8's federation: accounting and delivery in databases of their own, written by the worker
from the queue's events, on three real PostgreSQL databases and moto's SQS.

An order is placed on the main database; the worker marks it fulfilled there, posts its ledger
in accounting's and opens its shipment in delivery's, each step once. A cancellation cancels
the shipment in delivery's, then the order in main's, and the worker posts the reversal from
the `order.cancelled` event. A crash between any two of those transactions (an exception
raised there: the transaction open at that moment rolls back, as it would if the process
died) is finished by a retry or by the worker's reconciliation, and the ledger balances.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from app import worker as worker_module
from app.adapters.db import Database
from app.adapters.outbox import Event
from app.adapters.resources import Resources
from app.delivery import service as delivery
from app.kernel.security import Principal, Role
from app.orders import flows
from app.orders import service as orders
from app.worker import Retention
from tests.integration.conftest import User, make_product, make_user
from tests.integration.stage8 import migrated, published, rows, shop_on, work_off, worker_of
from tests.integration.test_outbox import RecordingMailer
from tests.integration.test_outbox import moto_endpoint as moto_endpoint  # fixtures
from tests.integration.test_outbox import queue_url as queue_url

FUNCTIONS = ("main", "accounting", "delivery")


@pytest.fixture(scope="module")
def federated_urls(fresh_database: Callable[[], str]) -> dict[str, str]:
    """Three empty databases, each migrated as `shop migrate` does."""
    return migrated(fresh_database, FUNCTIONS)


@pytest.fixture
async def shop(
    federated_urls: dict[str, str], moto_endpoint: str, queue_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Resources]]:
    """The shop with SHOP_ACCOUNTING_DATABASE_URL and SHOP_DELIVERY_DATABASE_URL set."""
    async with shop_on(
        moto_endpoint,
        queue_url,
        database_url=federated_urls["main"],
        accounting_database_url=federated_urls["accounting"],
        delivery_database_url=federated_urls["delivery"],
    ) as running:
        yield running


async def count(db: Database, table: str, order_id: int) -> int:
    [(n,)] = await rows(db, f"SELECT count(*) FROM {table} WHERE order_id = :o", o=order_id)
    return int(n)


async def where_it_is(resources: Resources, order_id: int) -> dict[str, tuple[int, int]]:
    """(ledger entries, shipments) of an order in each database."""
    dbs = resources.databases
    return {
        name: (await count(db, "ledger_entry", order_id), await count(db, "shipment", order_id))
        for name, db in (
            ("main", dbs.main),
            ("accounting", dbs.accounting),
            ("delivery", dbs.delivery),
        )
    }


async def place(client: httpx.AsyncClient, user: User, product_id: int, quantity: int) -> Any:
    response = await client.post(
        "/orders",
        headers=user.headers,
        json={"lines": [{"product_id": product_id, "quantity": quantity}]},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def events_of(resources: Resources, order_id: int) -> list[Event]:
    found = await rows(
        resources.db,
        "SELECT id, kind, payload FROM outbox_event WHERE (payload->>'order_id')::int = :o "
        "ORDER BY created_at",
        o=order_id,
    )
    return [Event(id=i, kind=k, payload=p) for i, k, p in found]


async def net_by_account(resources: Resources, order_id: int) -> dict[str, int]:
    found = await rows(
        resources.databases.accounting,
        "SELECT account, sum(debit_cents - credit_cents) FROM ledger_entry "
        "WHERE order_id = :o GROUP BY account ORDER BY account",
        o=order_id,
    )
    return {account: int(net) for account, net in found}


async def stock_of(client: httpx.AsyncClient, admin: User, product_id: int) -> int:
    answer = (await client.get("/admin/stock", headers=admin.headers)).json()
    [item] = [i for i in answer["items"] if i["product_id"] == product_id]
    return int(item["quantity"])


def principal_of(user: User) -> Principal:
    return Principal(customer_id=user.id, role=Role.CUSTOMER)


async def apply(resources: Resources, event: Event, mailer: RecordingMailer | None = None) -> None:
    """Apply an event as the worker does (here from the table, not the queue)."""
    if event.kind == flows.ORDER_CANCELLED:
        await flows.handle_order_cancelled(
            resources.databases, event_id=event.id, payload=event.payload
        )
    else:
        await flows.handle_order_placed(
            resources.databases,
            mailer or RecordingMailer(),
            event_id=event.id,
            payload=event.payload,
        )


async def apply_killed_before(
    resources: Resources, event: Event, monkeypatch: pytest.MonkeyPatch, step: tuple[Any, str]
) -> None:
    """Apply an event with the process killed inside `step` (module, function): that step's
    transaction rolls back, those before it stay committed."""

    async def killed(*_args: Any, **_kwargs: Any) -> None:
        raise ConnectionError(f"killed inside {step[1]}")

    with monkeypatch.context() as patch:
        patch.setattr(*step, killed)
        with pytest.raises(ConnectionError):
            await apply(resources, event)


OPEN_SHIPMENT = (delivery, "open_shipment_once")
POST_LEDGER = (flows.accounting, "post_order_placed")


# --- placing -------------------------------------------------------------------------------------


async def test_an_order_is_recorded_in_main_its_ledger_in_accounting_its_shipment_in_delivery(
    shop: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str
) -> None:
    client, resources = shop
    alice = await make_user(resources)
    admin = await make_user(resources, role=Role.ADMIN)
    product = await make_product(resources, price_cents=1250)
    mailer = RecordingMailer()

    order = await place(client, alice, product.id, 2)
    assert order["fulfilment"] == "pending"
    await work_off(resources, worker_of(resources, moto_endpoint, queue_url, mailer=mailer))

    assert await where_it_is(resources, order["id"]) == {
        "main": (0, 0),
        "accounting": (3, 0),
        "delivery": (0, 1),
    }
    # Each step claimed once, in the database it wrote.
    [event] = await events_of(resources, order["id"])
    claims = {
        name: await rows(db, "SELECT step FROM processed_event WHERE event_id = :e", e=event.id)
        for name, db in (
            ("main", resources.db),
            ("accounting", resources.databases.accounting),
            ("delivery", resources.databases.delivery),
        )
    }
    assert claims == {"main": [("mail",)], "accounting": [("ledger",)], "delivery": [("ship",)]}
    assert [m.to for m in mailer.sent] == [alice.email]
    # The API reads each from where it lives.
    shipment = await client.get(f"/orders/{order['id']}/shipment", headers=alice.headers)
    assert shipment.status_code == 200 and shipment.json()["status"] == "pending"
    ledger = (await client.get(f"/ledger/orders/{order['id']}", headers=alice.headers)).json()
    assert sum(e["debit_cents"] for e in ledger) == order["total_cents"]
    balance = (await client.get("/admin/ledger/trial-balance", headers=admin.headers)).json()
    assert balance["balanced"] and balance["total_debit_cents"] == order["total_cents"]
    listed = (await client.get("/admin/shipments", headers=admin.headers)).json()
    assert [s["order_id"] for s in listed["items"]] == [order["id"]]
    # Another customer still sees nothing of it.
    bob = await make_user(resources)
    assert (
        await client.get(f"/ledger/orders/{order['id']}", headers=bob.headers)
    ).status_code == 404
    assert (
        await client.get(f"/orders/{order['id']}/shipment", headers=bob.headers)
    ).status_code == 404


async def test_an_event_applied_twice_posts_and_ships_once(
    shop: tuple[httpx.AsyncClient, Resources],
) -> None:
    client, resources = shop
    alice = await make_user(resources)
    product = await make_product(resources)
    order = await place(client, alice, product.id, 1)
    [event] = await events_of(resources, order["id"])
    mailer = RecordingMailer()

    for _ in range(3):
        await apply(resources, event, mailer)

    assert (await where_it_is(resources, order["id"]))["accounting"] == (3, 0)
    assert (await where_it_is(resources, order["id"]))["delivery"] == (0, 1)
    assert len(mailer.sent) == 1


async def test_a_crash_between_the_ledger_and_the_shipment_is_finished_by_the_next_delivery(
    shop: tuple[httpx.AsyncClient, Resources], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, resources = shop
    alice = await make_user(resources)
    product = await make_product(resources)
    order = await place(client, alice, product.id, 1)
    [event] = await events_of(resources, order["id"])

    await apply_killed_before(resources, event, monkeypatch, OPEN_SHIPMENT)
    assert await where_it_is(resources, order["id"]) == {
        "main": (0, 0),
        "accounting": (3, 0),
        "delivery": (0, 0),
    }

    await apply(resources, event)
    assert (await where_it_is(resources, order["id"]))["accounting"] == (3, 0)
    assert (await where_it_is(resources, order["id"]))["delivery"] == (0, 1)


# --- cancelling ----------------------------------------------------------------------------------


async def test_a_cancellation_cancels_in_delivery_returns_stock_and_reverses_in_accounting(
    shop: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str
) -> None:
    client, resources = shop
    alice = await make_user(resources)
    admin = await make_user(resources, role=Role.ADMIN)
    product = await make_product(resources, initial_stock=10)
    order = await place(client, alice, product.id, 3)
    worker = worker_of(resources, moto_endpoint, queue_url)
    await work_off(resources, worker)

    answer = await client.post(f"/orders/{order['id']}/cancel", headers=alice.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    assert await stock_of(client, admin, product.id) == 10
    tracking = (await client.get(f"/orders/{order['id']}/shipment", headers=alice.headers)).json()
    assert tracking["status"] == "cancelled"
    assert [e["status"] for e in tracking["events"]] == ["pending", "cancelled"]

    await work_off(resources, worker)
    assert [e.kind for e in await events_of(resources, order["id"])] == [
        "order.placed",
        "order.cancelled",
    ]
    assert (await where_it_is(resources, order["id"]))["accounting"] == (6, 0)
    assert set((await net_by_account(resources, order["id"])).values()) == {0}
    [(requested,)] = await rows(
        resources.db, "SELECT cancel_requested_at FROM customer_order WHERE id = :o", o=order["id"]
    )
    assert requested is None
    # A second cancellation is refused, naming why, and changes nothing.
    again = await client.post(f"/orders/{order['id']}/cancel", headers=alice.headers)
    assert again.status_code == 409
    assert await stock_of(client, admin, product.id) == 10


async def test_an_order_cancelled_before_its_shipment_opened_never_gets_one(
    shop: tuple[httpx.AsyncClient, Resources], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, resources = shop
    alice = await make_user(resources)
    product = await make_product(resources)
    order = await place(client, alice, product.id, 1)
    [placed] = await events_of(resources, order["id"])

    # Fulfilled and posted, its shipment not yet open: the customer cancels now.
    await apply_killed_before(resources, placed, monkeypatch, OPEN_SHIPMENT)
    answer = await client.post(f"/orders/{order['id']}/cancel", headers=alice.headers)
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"

    # The placement's message comes back: its shipment step finds the cancelled one.
    mailer = RecordingMailer()
    await apply(resources, placed, mailer)
    [_, cancelled] = await events_of(resources, order["id"])
    await apply(resources, cancelled)

    tracking = (await client.get(f"/orders/{order['id']}/shipment", headers=alice.headers)).json()
    assert tracking["status"] == "cancelled"
    assert [e["status"] for e in tracking["events"]] == ["cancelled"]
    assert set((await net_by_account(resources, order["id"])).values()) == {0}
    assert mailer.sent == []


async def test_the_reversal_applied_before_the_posting_still_nets_to_zero(
    shop: tuple[httpx.AsyncClient, Resources], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, resources = shop
    alice = await make_user(resources)
    product = await make_product(resources, price_cents=999)
    order = await place(client, alice, product.id, 2)
    [placed] = await events_of(resources, order["id"])
    # The main step only (fulfilled), as if the worker died before the ledger's commit.
    await apply_killed_before(resources, placed, monkeypatch, POST_LEDGER)
    assert (await client.post(f"/orders/{order['id']}/cancel", headers=alice.headers)).is_success
    [_, cancelled] = await events_of(resources, order["id"])

    await apply(resources, cancelled)
    assert set((await net_by_account(resources, order["id"])).values()) != {0}
    await apply(resources, placed)
    assert (await where_it_is(resources, order["id"]))["accounting"] == (6, 0)
    assert set((await net_by_account(resources, order["id"])).values()) == {0}


async def test_a_shipped_order_is_not_cancelled_and_keeps_no_request(
    shop: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str
) -> None:
    client, resources = shop
    alice = await make_user(resources)
    admin = await make_user(resources, role=Role.ADMIN)
    product = await make_product(resources, initial_stock=5)
    order = await place(client, alice, product.id, 1)
    await work_off(resources, worker_of(resources, moto_endpoint, queue_url))
    shipments = (await client.get("/admin/shipments", headers=admin.headers)).json()["items"]
    for target in ("packed", "shipped"):
        moved = await client.post(
            f"/admin/shipments/{shipments[0]['id']}/advance",
            headers=admin.headers,
            json={"to": target},
        )
        assert moved.status_code == 200, moved.text

    refused = await client.post(f"/orders/{order['id']}/cancel", headers=alice.headers)

    assert refused.status_code == 409
    assert refused.json()["allowed"] == ["delivered"]
    assert await rows(
        resources.db,
        "SELECT status, cancel_requested_at FROM customer_order WHERE id = :o",
        o=order["id"],
    ) == [("placed", None)]
    assert await stock_of(client, admin, product.id) == 4
    assert [e.kind for e in await events_of(resources, order["id"])] == ["order.placed"]


@pytest.mark.parametrize("crash_at", ["delivery", "main"])
async def test_a_cancellation_a_crash_left_half_done_is_finished_by_the_worker(
    shop: tuple[httpx.AsyncClient, Resources],
    moto_endpoint: str,
    queue_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    crash_at: str,
) -> None:
    """`delivery`: killed after the request was recorded, before the shipment's commit;
    `main`: killed after the shipment's commit, before the order's."""
    client, resources = shop
    alice = await make_user(resources)
    admin = await make_user(resources, role=Role.ADMIN)
    product = await make_product(resources, initial_stock=5)
    order = await place(client, alice, product.id, 2)
    worker = worker_of(resources, moto_endpoint, queue_url)
    await work_off(resources, worker)

    async def crash(*_args: Any, **_kwargs: Any) -> Any:
        raise ConnectionError(f"killed before the {crash_at} commit")

    target = (
        (delivery, "cancel_or_forestall") if crash_at == "delivery" else (flows, "record_cancelled")
    )
    with monkeypatch.context() as patch:
        patch.setattr(*target, crash)
        with pytest.raises(ConnectionError):
            await orders.cancel_order(
                resources.databases, order_id=order["id"], principal=principal_of(alice)
            )
    [(status, requested)] = await rows(
        resources.db,
        "SELECT status, cancel_requested_at FROM customer_order WHERE id = :o",
        o=order["id"],
    )
    assert status == "placed" and requested is not None
    assert await stock_of(client, admin, product.id) == 3
    # Not yet: a cancellation under way is left alone for a while.
    assert (
        await orders.finish_requested_cancels(resources.databases, older_than=timedelta(seconds=30))
        == 0
    )

    # The worker's reconciliation pass, with the wait it gives a cancellation shortened.
    monkeypatch.setattr(worker_module, "CANCEL_FINISHED_WITHIN", timedelta(0))
    finished = worker_module.CANCELS_FINISHED._value.get()
    await worker.settle()
    assert worker_module.CANCELS_FINISHED._value.get() == finished + 1  # on /metrics

    assert (await client.get(f"/orders/{order['id']}", headers=alice.headers)).json()[
        "status"
    ] == "cancelled"
    assert await stock_of(client, admin, product.id) == 5
    tracking = (await client.get(f"/orders/{order['id']}/shipment", headers=alice.headers)).json()
    assert tracking["status"] == "cancelled"
    # The event the reconciliation recorded is applied like any other.
    [_, cancelled] = await events_of(resources, order["id"])
    await apply(resources, cancelled)
    assert set((await net_by_account(resources, order["id"])).values()) == {0}
    assert await orders.finish_requested_cancels(resources.databases, older_than=timedelta(0)) == 0
    assert [r.getMessage() for r in caplog.records if "crash had left" in r.getMessage()] == [
        f"finished the cancellation of order {order['id']}, which a crash had left"
    ]


async def test_cancellations_racing_the_worker_leave_every_order_whole(
    shop: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str
) -> None:
    """Half the orders are cancelled while the worker applies their events: whichever of the
    two takes each order first, a cancelled order ends with its stock back, a ledger that nets
    to zero and no open shipment; a standing one with its posting and its pending shipment."""
    client, resources = shop
    admin = await make_user(resources, role=Role.ADMIN)
    buyers = [await make_user(resources) for _ in range(4)]
    product = await make_product(resources, initial_stock=100, price_cents=700)
    placed = [await place(client, buyers[n % 4], product.id, 1 + n % 3) for n in range(16)]
    worker = worker_of(resources, moto_endpoint, queue_url)
    stop = asyncio.Event()

    async def work() -> None:
        while not stop.is_set():
            await worker.run_once()
            await asyncio.sleep(0)

    async def cancel(n: int, order: dict[str, Any]) -> int:
        await asyncio.sleep(0.04 * n)  # spread over the worker's pass, not all before it
        answer = await client.post(f"/orders/{order['id']}/cancel", headers=buyers[n % 4].headers)
        return answer.status_code

    await published(resources)
    running = asyncio.create_task(work())
    try:
        codes = await asyncio.gather(*(cancel(n, o) for n, o in enumerate(placed) if n % 2 == 0))
    finally:
        stop.set()
        await running
    await work_off(resources, worker)

    assert codes == [200] * 8
    standing_units = 0
    for n, order in enumerate(placed):
        found = await where_it_is(resources, order["id"])
        assert found["main"] == (0, 0), order["id"]
        shipments = await rows(
            resources.databases.delivery,
            "SELECT status FROM shipment WHERE order_id = :o",
            o=order["id"],
        )
        nets = set((await net_by_account(resources, order["id"])).values())
        if n % 2 == 0:  # cancelled: before its fulfilment (nothing), or after (reversed)
            assert found["accounting"][0] in (0, 6), order["id"]
            assert nets <= {0}, order["id"]
            assert shipments in ([], [("cancelled",)]), order["id"]
        else:
            standing_units += 1 + n % 3
            assert found["accounting"][0] == 3, order["id"]
            assert shipments == [("pending",)], order["id"]
    assert await stock_of(client, admin, product.id) == 100 - standing_units
    balance = (await client.get("/admin/ledger/trial-balance", headers=admin.headers)).json()
    assert balance["balanced"]
    assert balance["total_debit_cents"] == balance["total_credit_cents"]
    assert await orders.finish_requested_cancels(resources.databases, older_than=timedelta(0)) == 0


async def test_the_purge_keeps_every_database_s_claims_bounded(
    shop: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str
) -> None:
    client, resources = shop
    alice = await make_user(resources)
    product = await make_product(resources)
    await place(client, alice, product.id, 1)
    await work_off(resources, worker_of(resources, moto_endpoint, queue_url))
    everything = Retention(keep_events=timedelta(0), keep_keys=timedelta(0))

    deleted = await worker_of(resources, moto_endpoint, queue_url, retention=everything).purge()

    assert deleted["processed_event"] == 3  # mail (main), ledger (accounting), ship (delivery)
    for db in (resources.db, *resources.databases.others()):
        assert await rows(db, "SELECT count(*) FROM processed_event") == [(0,)]


# --- configuration -------------------------------------------------------------------------------


def test_federated_databases_without_a_queue_are_refused_naming_what_is_missing() -> None:
    from pydantic import ValidationError

    from app.kernel.settings import Settings

    base = {"database_url": "postgresql://db/shop", "jwt_secret": "k" * 40, "_env_file": None}
    with pytest.raises(ValidationError, match=r"SHOP_ACCOUNTING_DATABASE_URL .*SHOP_QUEUE_URL"):
        Settings(**base, accounting_database_url="postgresql://db/ledger")  # type: ignore[arg-type]
    embedded = {"queue_url": "http://sqs/q", "_env_file": None}
    with pytest.raises(ValidationError, match="not the embedded database"):
        Settings(**embedded, delivery_database_url="postgresql://db/d")  # type: ignore[arg-type]
    federated = Settings(
        **base,  # type: ignore[arg-type]
        queue_url="http://sqs/q",
        accounting_database_url="postgresql://db/ledger",
    )
    assert federated.function_urls == {"accounting": "postgresql+psycopg://db/ledger"}
    with pytest.raises(ValidationError, match="not both"):
        Settings(
            **base,  # type: ignore[arg-type]
            queue_url="http://sqs/q",
            order_shard_urls="postgresql://db/s1",
            order_shard_secret_arns="arn:aws:secretsmanager:us-east-1:1:secret:s1",
        )
    # Replicas per shard: one group per shard, in shard order; a group may be empty.
    sharded = Settings(
        **base,  # type: ignore[arg-type]
        queue_url="http://sqs/q",
        order_shard_urls="postgresql://db/s1,postgresql://db/s2",
        order_shard_replica_urls=";postgresql://r1/s2, postgresql://r2/s2",
    )
    assert sharded.shard_replica_urls == [
        [],
        ["postgresql+psycopg://r1/s2", "postgresql+psycopg://r2/s2"],
    ]
    with pytest.raises(ValidationError, match=r"replicas of 2 shards.*names 1"):
        Settings(
            **base,  # type: ignore[arg-type]
            queue_url="http://sqs/q",
            order_shard_urls="postgresql://db/s1",
            order_shard_replica_urls="postgresql://r/s1;postgresql://r/s2",
        )


async def test_without_federation_one_database_plays_every_role(resources: Resources) -> None:
    assert not resources.databases.federated
    assert resources.databases.accounting is resources.db is resources.databases.delivery
    assert resources.databases.others() == []
    assert await orders.finish_requested_cancels(resources.databases, older_than=timedelta(0)) == 0
