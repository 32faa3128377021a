"""Orders through a queue (stage 7): the outbox, the relay, and the worker's handler, on the real
PostgreSQL and moto's SQS and SES (a threaded moto server, as the app would reach AWS).

Without a queue (the session's app) the follow-up work is done in the request; with one (an app
of this module's own, on the same database) the order is answered at once, `fulfilment:
pending`, and the event is applied by the handler `shop worker` runs, at most once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import httpx
import pytest
from sqlalchemy import text

from app.adapters.mail import Mail
from app.adapters.outbox import Event
from app.adapters.queue import Queue
from app.adapters.resources import Resources
from app.kernel.security import Role
from app.orders import flows
from app.worker import Worker
from tests.conftest import REDIS_URL, test_settings
from tests.integration.conftest import User, make_product, make_user

REGION = "us-east-1"
SENDER = "orders@shop.test"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # The app's own clients find credentials where boto3 looks for them.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        yield f"http://127.0.0.1:{port}"
    server.stop()


def sqs(endpoint: str) -> Any:
    return boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)


def make_queue(endpoint: str, *, max_receive_count: int = 5, visibility_s: int = 60) -> str:
    """A queue with a dead-letter queue, as infra/shop_infra/constructs/queue.py makes them."""
    client = sqs(endpoint)
    name = f"orders-{uuid.uuid4().hex[:8]}"
    dead = client.create_queue(QueueName=f"{name}-dead")["QueueUrl"]
    dead_arn = client.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    return str(
        client.create_queue(
            QueueName=name,
            Attributes={
                "VisibilityTimeout": str(visibility_s),
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dead_arn, "maxReceiveCount": str(max_receive_count)}
                ),
            },
        )["QueueUrl"]
    )


def drain(endpoint: str, url: str) -> list[dict[str, Any]]:
    """Every message waiting on a queue, taken off it (deleted: a message only hidden for a
    while would come back in a later test of a slow run)."""
    found: list[dict[str, Any]] = []
    client = sqs(endpoint)
    while True:
        got = client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=30
        )
        if not got.get("Messages"):
            return found
        found += [json.loads(m["Body"]) for m in got["Messages"]]
        client.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                for n, m in enumerate(got["Messages"])
            ],
        )


class RecordingMailer:
    def __init__(self) -> None:
        self.sent: list[Mail] = []

    async def send(self, mail: Mail) -> None:
        self.sent.append(mail)


@pytest.fixture(scope="module")
def queue_url(moto_endpoint: str) -> str:
    return make_queue(moto_endpoint)


@pytest.fixture
async def queued(
    database_url: str, moto_endpoint: str, queue_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, Resources]]:
    """An app like the session's, on the same database, with SHOP_QUEUE_URL set."""
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    drain(moto_endpoint, queue_url)
    settings = test_settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        queue_url=queue_url,
        aws_region=REGION,
        aws_endpoint_url=moto_endpoint,
        outbox_sweep_s=60,
    )
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:
            yield c, application.state.resources


async def place(client: httpx.AsyncClient, user: User, product_id: int, quantity: int = 1) -> Any:
    response = await client.post(
        "/orders",
        headers=user.headers,
        json={"lines": [{"product_id": product_id, "quantity": quantity}]},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def counts(resources: Resources, order_id: int) -> tuple[int, int]:
    """(ledger entries, shipments) of an order."""
    async with resources.db.read() as conn:
        entries = (
            await conn.execute(
                text("SELECT count(*) FROM ledger_entry WHERE order_id = :o"), {"o": order_id}
            )
        ).scalar_one()
        shipments = (
            await conn.execute(
                text("SELECT count(*) FROM shipment WHERE order_id = :o"), {"o": order_id}
            )
        ).scalar_one()
    return int(entries), int(shipments)


async def event_of(resources: Resources, order_id: int) -> Event:
    async with resources.db.read() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT id, kind, payload FROM outbox_event "
                    "WHERE (payload->>'order_id')::int = :o"
                ),
                {"o": order_id},
            )
        ).one()
    return Event(id=row.id, kind=row.kind, payload=row.payload)


async def balanced(client: httpx.AsyncClient, resources: Resources) -> bool:
    admin = await make_user(resources, role=Role.ADMIN)
    answer = (await client.get("/admin/ledger/trial-balance", headers=admin.headers)).json()
    return bool(answer["balanced"])


# --- without a queue: as before, plus the e-mail -------------------------------------------------


async def test_without_a_queue_the_order_is_fulfilled_in_the_request_and_mailed_after_it(
    client: httpx.AsyncClient, resources: Resources, alice: User, caplog: pytest.LogCaptureFixture
) -> None:
    product = await make_product(resources, name="Blue mug", price_cents=1250)

    with caplog.at_level(logging.INFO, logger="shop.mail"):
        order = await place(client, alice, product.id, 2)

    assert order["status"] == "placed"
    assert order["fulfilment"] == "done"
    assert await counts(resources, order["id"]) == (3, 1)
    [mail] = [r.getMessage() for r in caplog.records if r.name == "shop.mail"]
    assert f"mail to alice@example.com: Your order #{order['id']}" in mail
    assert "2 x Blue mug: 25.00" in mail and "Total (tax included): 30.00" in mail
    async with resources.db.read() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM outbox_event"))).scalar_one() == 0


# --- with a queue -------------------------------------------------------------------------------


async def test_with_a_queue_the_order_is_answered_pending_and_its_event_is_published(
    queued: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str, alice: User
) -> None:
    client, resources = queued
    product = await make_product(resources, initial_stock=5)

    order = await place(client, alice, product.id, 2)

    assert (order["status"], order["fulfilment"]) == ("placed", "pending")
    assert (await client.get(f"/products/{product.id}")).json()["stock"] == 3
    assert await counts(resources, order["id"]) == (0, 0)
    again = (await client.get(f"/orders/{order['id']}", headers=alice.headers)).json()
    assert again["fulfilment"] == "pending"
    assert resources.relay is not None
    await resources.relay.flush()
    [message] = drain(moto_endpoint, queue_url)
    assert message["kind"] == "order.placed"
    assert message["payload"]["order_id"] == order["id"]
    async with resources.db.read() as conn:
        published = (await conn.execute(text("SELECT published_at FROM outbox_event"))).scalar()
    assert published is not None


async def test_an_event_the_relay_did_not_publish_is_swept_later(
    queued: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str, alice: User
) -> None:
    """A process killed between its commit and its publish: the event is still in the table."""
    client, resources = queued
    assert resources.relay is not None
    product = await make_product(resources)
    order = await place(client, alice, product.id)
    await resources.relay.flush()
    drain(moto_endpoint, queue_url)
    async with resources.db.write() as conn:  # as if the publish had never happened
        await conn.execute(
            text(
                "UPDATE outbox_event SET published_at = NULL, "
                "created_at = created_at - interval '1 hour'"
            )
        )

    assert await resources.relay.sweep() == 1

    [message] = drain(moto_endpoint, queue_url)
    assert message["payload"]["order_id"] == order["id"]
    assert await resources.relay.sweep() == 0


async def test_an_event_applied_twice_or_at_once_twice_posts_ships_and_mails_once(
    queued: tuple[httpx.AsyncClient, Resources], alice: User
) -> None:
    client, resources = queued
    product = await make_product(resources, price_cents=500)
    order = await place(client, alice, product.id, 4)
    event = await event_of(resources, order["id"])
    mailer = RecordingMailer()

    outcomes = await asyncio.gather(
        *(
            flows.handle_order_placed(
                resources.db, mailer, event_id=event.id, payload=event.payload
            )
            for _ in range(3)
        ),
        return_exceptions=True,
    )
    await flows.handle_order_placed(resources.db, mailer, event_id=event.id, payload=event.payload)

    # A delivery that finds another sending the mail fails, so that its message comes back.
    assert all(o is None or isinstance(o, flows.MailInFlight) for o in outcomes), outcomes

    assert await counts(resources, order["id"]) == (3, 1)
    assert [m.to for m in mailer.sent] == ["alice@example.com"]
    seen = (await client.get(f"/orders/{order['id']}", headers=alice.headers)).json()
    assert seen["fulfilment"] == "done"
    listed = (await client.get("/orders", headers=alice.headers)).json()["items"][0]
    assert listed["fulfilment"] == "done"
    tracking = await client.get(f"/orders/{order['id']}/shipment", headers=alice.headers)
    assert tracking.json()["status"] == "pending"
    assert await balanced(client, resources)


async def test_a_failed_mail_is_retried_without_posting_or_shipping_again(
    queued: tuple[httpx.AsyncClient, Resources], alice: User
) -> None:
    client, resources = queued
    product = await make_product(resources)
    order = await place(client, alice, product.id)
    event = await event_of(resources, order["id"])

    class Refusing:
        async def send(self, mail: Mail) -> None:
            raise RuntimeError("SES said no")

    with pytest.raises(RuntimeError):
        await flows.handle_order_placed(
            resources.db, Refusing(), event_id=event.id, payload=event.payload
        )
    assert await counts(resources, order["id"]) == (3, 1)  # the fulfilment step stands

    mailer = RecordingMailer()
    await flows.handle_order_placed(resources.db, mailer, event_id=event.id, payload=event.payload)

    assert await counts(resources, order["id"]) == (3, 1)
    assert len(mailer.sent) == 1


async def test_cancelling_before_the_worker_returns_the_stock_and_leaves_nothing_to_post(
    queued: tuple[httpx.AsyncClient, Resources], alice: User
) -> None:
    client, resources = queued
    product = await make_product(resources, initial_stock=10)
    order = await place(client, alice, product.id, 4)

    cancelled = await client.post(f"/orders/{order['id']}/cancel", headers=alice.headers)

    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["fulfilment"]) == ("cancelled", "skipped")
    assert (await client.get(f"/products/{product.id}")).json()["stock"] == 10
    # The worker comes later: it finds the order cancelled and posts, ships and mails nothing.
    event = await event_of(resources, order["id"])
    mailer = RecordingMailer()
    await flows.handle_order_placed(resources.db, mailer, event_id=event.id, payload=event.payload)
    assert await counts(resources, order["id"]) == (0, 0)
    assert mailer.sent == []
    assert (await client.get(f"/products/{product.id}")).json()["stock"] == 10
    assert await balanced(client, resources)
    again = await client.post(f"/orders/{order['id']}/cancel", headers=alice.headers)
    assert again.status_code == 409


async def test_cancelling_after_the_worker_reverses_the_entries_and_the_shipment(
    queued: tuple[httpx.AsyncClient, Resources], alice: User
) -> None:
    client, resources = queued
    product = await make_product(resources, initial_stock=10)
    order = await place(client, alice, product.id, 4)
    event = await event_of(resources, order["id"])
    await flows.handle_order_placed(
        resources.db, RecordingMailer(), event_id=event.id, payload=event.payload
    )

    cancelled = await client.post(f"/orders/{order['id']}/cancel", headers=alice.headers)

    assert (cancelled.json()["status"], cancelled.json()["fulfilment"]) == ("cancelled", "done")
    assert await counts(resources, order["id"]) == (6, 1)
    assert (await client.get(f"/products/{product.id}")).json()["stock"] == 10
    tracking = await client.get(f"/orders/{order['id']}/shipment", headers=alice.headers)
    assert tracking.json()["status"] == "cancelled"
    assert await balanced(client, resources)


async def test_a_cancellation_racing_the_worker_leaves_the_books_balanced(
    queued: tuple[httpx.AsyncClient, Resources], alice: User
) -> None:
    client, resources = queued
    product = await make_product(resources, initial_stock=100)
    orders = [await place(client, alice, product.id, 1) for _ in range(10)]
    events = [await event_of(resources, o["id"]) for o in orders]

    await asyncio.gather(
        *(
            flows.handle_order_placed(
                resources.db, RecordingMailer(), event_id=e.id, payload=e.payload
            )
            for e in events
        ),
        *(client.post(f"/orders/{o['id']}/cancel", headers=alice.headers) for o in orders),
    )

    assert (await client.get(f"/products/{product.id}")).json()["stock"] == 100
    for order in orders:
        entries, shipments = await counts(resources, order["id"])
        assert (entries, shipments) in {(0, 0), (6, 1)}
    assert await balanced(client, resources)


async def test_a_message_that_keeps_failing_goes_to_the_dead_letter_queue_and_is_logged(
    resources: Resources, moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = make_queue(moto_endpoint, max_receive_count=2, visibility_s=1)
    queue = Queue(url, region=REGION, endpoint_url=moto_endpoint)
    worker = Worker(resources.db, queue, RecordingMailer(), wait_s=1)
    worker.max_receives = await queue.max_receive_count()
    await queue.send(
        {"1": Event(id=uuid.uuid4(), kind="order.unheard-of", payload={}).to_message()}
    )

    with caplog.at_level(logging.WARNING, logger="shop.worker"):
        for _ in range(3):
            await worker.run_once()
            await asyncio.sleep(1.1)

    dead_url = url + "-dead"
    assert len(drain(moto_endpoint, dead_url)) == 1
    assert drain(moto_endpoint, url) == []
    assert any("dead-letter queue" in r.getMessage() for r in caplog.records)


def test_a_worker_needs_no_jwt_key_where_a_server_refuses_the_published_one() -> None:
    from pydantic import ValidationError

    from app.kernel.settings import Settings, WorkerSettings

    deployed = {"env": "production", "database_url": "postgresql://db/shop", "_env_file": None}
    with pytest.raises(ValidationError, match="published default"):
        Settings(**deployed)  # type: ignore[arg-type]
    assert WorkerSettings(**deployed).queue_url is None  # type: ignore[arg-type]


async def test_with_a_queue_fifty_simultaneous_orders_for_ten_sell_ten_and_record_ten_events(
    queued: tuple[httpx.AsyncClient, Resources],
) -> None:
    client, resources = queued
    product = await make_product(resources, price_cents=1999, initial_stock=10)
    buyers = [await make_user(resources) for _ in range(50)]

    answers = await asyncio.gather(
        *(
            client.post(
                "/orders",
                headers=b.headers,
                json={"lines": [{"product_id": product.id, "quantity": 1}]},
            )
            for b in buyers
        )
    )

    assert sorted(a.status_code for a in answers).count(201) == 10
    assert (await client.get(f"/products/{product.id}")).json()["stock"] == 0
    placed = [a.json()["id"] for a in answers if a.status_code == 201]
    for order_id in placed:
        event = await event_of(resources, order_id)
        await flows.handle_order_placed(
            resources.db, RecordingMailer(), event_id=event.id, payload=event.payload
        )
        assert await counts(resources, order_id) == (3, 1)
    async with resources.db.read() as conn:
        events = (await conn.execute(text("SELECT count(*) FROM outbox_event"))).scalar_one()
    assert events == 10
    assert await balanced(client, resources)


async def test_a_cart_checkout_is_finished_through_the_queue_like_any_order(
    queued: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str, alice: User
) -> None:
    client, resources = queued
    product = await make_product(resources, initial_stock=5)
    put = await client.put(f"/cart/items/{product.id}", headers=alice.headers, json={"quantity": 2})
    assert put.status_code == 200, put.text
    version = (await client.get("/cart", headers=alice.headers)).json()["version"]
    checkout = await client.post("/cart/checkout", headers=alice.headers, json={"version": version})
    assert checkout.status_code == 201, checkout.text
    order = checkout.json()
    assert (order["status"], order["fulfilment"]) == ("placed", "pending")
    assert resources.relay is not None
    await resources.relay.flush()
    [message] = drain(moto_endpoint, queue_url)
    assert message["payload"]["order_id"] == order["id"]


async def test_the_relay_does_not_wait_for_rows_a_sweep_is_sending(
    queued: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, queue_url: str, alice: User
) -> None:
    """Under a backlog the sweep and the relay send the same old events; the relay used to wait
    on the sweep's row locks until lock_timeout, once per batch."""
    client, resources = queued
    assert resources.relay is not None
    product = await make_product(resources)
    await place(client, alice, product.id)
    await resources.relay.flush()
    drain(moto_endpoint, queue_url)
    async with resources.db.read() as conn:
        rows = (await conn.execute(text("SELECT id, kind, payload FROM outbox_event"))).all()
    events = [Event(id=r.id, kind=r.kind, payload=r.payload) for r in rows]
    async with resources.db.write() as conn:  # still unpublished, as under a backlog
        await conn.execute(text("UPDATE outbox_event SET published_at = NULL"))
    async with resources.db.write() as sweep:  # a sweep holding the row while it sends
        await sweep.execute(text("SELECT id FROM outbox_event FOR UPDATE"))
        assert await asyncio.wait_for(resources.relay.publish(events), timeout=3) == 1
    drain(moto_endpoint, queue_url)


# --- the confirmation e-mail: never for a cancelled order, not retried when SES refuses it -----


async def test_an_order_cancelled_while_its_mail_was_failing_is_never_mailed(
    queued: tuple[httpx.AsyncClient, Resources], alice: User
) -> None:
    """The worker fulfilled the order but SES failed; the customer cancelled before the retry."""
    client, resources = queued
    product = await make_product(resources)
    order = await place(client, alice, product.id)
    event = await event_of(resources, order["id"])

    class Failing:
        async def send(self, mail: Mail) -> None:
            raise RuntimeError("SES timed out")

    with pytest.raises(RuntimeError):
        await flows.handle_order_placed(
            resources.db, Failing(), event_id=event.id, payload=event.payload
        )
    cancelled = await client.post(f"/orders/{order['id']}/cancel", headers=alice.headers)
    assert cancelled.json()["status"] == "cancelled"

    mailer = RecordingMailer()
    await flows.handle_order_placed(resources.db, mailer, event_id=event.id, payload=event.payload)

    assert mailer.sent == []
    assert await balanced(client, resources)


async def test_a_mail_ses_refuses_for_good_is_given_up_and_its_message_deleted_at_once(
    queued: tuple[httpx.AsyncClient, Resources],
    moto_endpoint: str,
    alice: User,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unverified sender (SES's sandbox answers MessageRejected): a retry cannot fix it, so
    the message is not received five times and dead-lettered; the order is fulfilled and the
    give-up is logged with its id."""
    from app.adapters.mail import SesMailer

    client, resources = queued
    url = make_queue(moto_endpoint, max_receive_count=5, visibility_s=1)
    queue = Queue(url, region=REGION, endpoint_url=moto_endpoint)
    unverified = SesMailer(
        f"unverified-{uuid.uuid4().hex[:8]}@shop.test", region=REGION, endpoint_url=moto_endpoint
    )
    worker = Worker(resources.db, queue, unverified, wait_s=1)
    worker.max_receives = await queue.max_receive_count()
    product = await make_product(resources)
    order = await place(client, alice, product.id)
    event = await event_of(resources, order["id"])
    await queue.send({"1": event.to_message()})

    with caplog.at_level(logging.WARNING):
        assert await worker.run_once() == 1
        await asyncio.sleep(1.1)
        assert await worker.run_once() == 0

    assert drain(moto_endpoint, url) == []
    assert drain(moto_endpoint, url + "-dead") == []
    assert await counts(resources, order["id"]) == (3, 1)
    [given_up] = [r.getMessage() for r in caplog.records if r.name == "shop.orders"]
    assert f"order {order['id']}" in given_up and "MessageRejected" in given_up
    refused, sent_at = await confirmation_of(resources, order["id"])
    assert refused is not None and "MessageRejected" in refused and sent_at is None
    # Handled again (the relay published it twice), it does not ask SES again.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        await flows.handle_order_placed(
            resources.db, unverified, event_id=event.id, payload=event.payload
        )
    assert not [r for r in caplog.records if r.name == "shop.orders"]


async def confirmation_of(resources: Resources, order_id: int) -> tuple[str | None, Any]:
    """What the order records of its confirmation: (why SES refused it, when it was sent)."""
    async with resources.db.read(primary=True) as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT confirmation_refused, confirmation_sent_at FROM customer_order"
                    " WHERE id = :id"
                ),
                {"id": order_id},
            )
        ).one()
    return row[0], row[1]


async def test_no_transaction_stays_open_while_ses_answers_and_the_sending_is_recorded(
    queued: tuple[httpx.AsyncClient, Resources], database_url: str, alice: User
) -> None:
    """SES can take tens of seconds; a transaction held across the call would hold a pooled
    connection and the claim's row locks that long. During the call no session of the shop's
    database is idle in a transaction; after it the order records when the mail was sent."""
    import psycopg

    client, resources = queued
    product = await make_product(resources)
    order = await place(client, alice, product.id)
    event = await event_of(resources, order["id"])
    plain = database_url.replace("postgresql+psycopg://", "postgresql://")
    seen: list[int] = []

    class Watching:
        async def send(self, mail: Mail) -> None:
            async with await psycopg.AsyncConnection.connect(plain, autocommit=True) as conn:
                cursor = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
                )
                seen.append(int((await cursor.fetchone() or [0])[0]))

    await flows.handle_order_placed(
        resources.db, Watching(), event_id=event.id, payload=event.payload
    )

    assert seen == [0]
    refused, sent_at = await confirmation_of(resources, order["id"])
    assert refused is None and sent_at is not None
    # Delivered again, the event sends nothing more.
    mailer = RecordingMailer()
    await flows.handle_order_placed(resources.db, mailer, event_id=event.id, payload=event.payload)
    assert mailer.sent == []


async def test_a_second_delivery_while_the_first_is_sending_sends_nothing_and_comes_back(
    queued: tuple[httpx.AsyncClient, Resources], alice: User
) -> None:
    """The same event handled twice at once (the relay published it twice): the second finds
    the first's lease on the order's confirmation, fails so that its message comes back, and
    once the first has recorded the mail, handling it again sends nothing."""
    client, resources = queued
    product = await make_product(resources)
    order = await place(client, alice, product.id)
    event = await event_of(resources, order["id"])
    second = RecordingMailer()

    class Slow(RecordingMailer):
        async def send(self, mail: Mail) -> None:
            with pytest.raises(flows.MailInFlight):
                await flows.handle_order_placed(
                    resources.db, second, event_id=event.id, payload=event.payload
                )
            await super().send(mail)

    first = Slow()
    await flows.handle_order_placed(resources.db, first, event_id=event.id, payload=event.payload)
    await flows.handle_order_placed(resources.db, second, event_id=event.id, payload=event.payload)

    assert len(first.sent) == 1 and second.sent == []
    assert await counts(resources, order["id"]) == (3, 1)


# --- retention: the worker keeps its tables bounded ----------------------------------------------


async def rows(resources: Resources, table: str) -> int:
    async with resources.db.read(primary=True) as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def test_under_a_stream_of_orders_the_worker_keeps_its_tables_bounded(
    queued: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, alice: User
) -> None:
    """Each order adds an outbox event, two processed-event claims and an Idempotency-Key;
    with a retention shorter than a wave, what is left after each wave's purge is what that
    wave alone added, never the sum of the waves, and /metrics shows the sizes."""
    from datetime import timedelta

    from prometheus_client import generate_latest

    from app.worker import REGISTRY, Retention

    client, resources = queued
    assert resources.relay is not None
    url = make_queue(moto_endpoint)
    queue = Queue(url, region=REGION, endpoint_url=moto_endpoint)
    retention = Retention(keep_events=timedelta(0), keep_keys=timedelta(0), batch=4)
    worker = Worker(resources.db, queue, RecordingMailer(), wait_s=0, retention=retention)
    product = await make_product(resources, initial_stock=1000)
    tables = ("outbox_event", "processed_event", "idempotency_key")

    for wave in range(4):
        placed = []
        for n in range(8):
            answer = await client.post(
                "/orders",
                headers={**alice.headers, "Idempotency-Key": f"wave-{wave}-{n}"},
                json={"lines": [{"product_id": product.id, "quantity": 1}]},
            )
            assert answer.status_code == 201, answer.text
            placed.append(await event_of(resources, answer.json()["id"]))
        await queue.send({str(i): e.to_message() for i, e in enumerate(placed)})
        handled = 0
        while handled < len(placed):
            handled += await worker.run_once()

        deleted = await worker.purge()

        # This wave's 8 events, 16 claims and 8 keys, in batches of 4 (at most 10 per pass).
        assert deleted == {"outbox_event": 8, "processed_event": 16, "idempotency_key": 8}
        assert [await rows(resources, t) for t in tables] == [0, 0, 0]

    for order_event in placed:
        assert await counts(resources, int(order_event.payload["order_id"])) == (3, 1)
    metrics = generate_latest(REGISTRY).decode()
    for table in tables:
        assert f'shop_worker_table_rows{{table="{table}"}}' in metrics
        assert f'shop_worker_rows_purged_total{{table="{table}"}}' in metrics


async def test_the_purge_keeps_unpublished_events_and_recent_claims(
    queued: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, alice: User
) -> None:
    from datetime import timedelta

    from app.worker import Retention

    client, resources = queued
    product = await make_product(resources)
    order = await place(client, alice, product.id)
    event = await event_of(resources, order["id"])
    await flows.handle_order_placed(
        resources.db, RecordingMailer(), event_id=event.id, payload=event.payload
    )
    async with resources.db.write() as conn:  # as if the relay had not published it yet
        await conn.execute(text("UPDATE outbox_event SET published_at = NULL"))
    queue = Queue(make_queue(moto_endpoint), region=REGION, endpoint_url=moto_endpoint)
    keep_a_day = Retention(keep_events=timedelta(days=1), keep_keys=timedelta(days=1))
    everything = Retention(keep_events=timedelta(0), keep_keys=timedelta(0))

    assert await Worker(resources.db, queue, RecordingMailer(), retention=keep_a_day).purge() == {
        "outbox_event": 0,
        "processed_event": 0,
        "idempotency_key": 0,
    }
    deleted = await Worker(resources.db, queue, RecordingMailer(), retention=everything).purge()

    assert deleted["outbox_event"] == 0  # unpublished: the sweep still has to send it
    assert deleted["processed_event"] == 2
    assert await rows(resources, "outbox_event") == 1


# --- reconciliation: no order stays pending -----------------------------------------------------


async def test_orders_whose_message_was_lost_dead_lettered_or_never_sent_are_fulfilled_once(
    queued: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, alice: User
) -> None:
    """Four orders: one handled normally, one whose message was lost, one whose message went to
    the dead-letter queue, one whose event was never published. Past the bound the worker
    applies the three it never finished; the dead-lettered message, moved back by `shop worker
    redrive`, then changes nothing. Every order is posted, shipped and mailed once."""
    from datetime import timedelta

    from app.worker import Retention

    client, resources = queued
    url = make_queue(moto_endpoint)
    queue = Queue(url, region=REGION, endpoint_url=moto_endpoint)
    mailer = RecordingMailer()
    retention = Retention(
        keep_events=timedelta(days=15),
        keep_keys=timedelta(hours=24),
        redrive_after=timedelta(minutes=15),
    )
    worker = Worker(resources.db, queue, mailer, wait_s=0, retention=retention)
    product = await make_product(resources, price_cents=700, initial_stock=10)
    handled, lost, dead, unsent = [await place(client, alice, product.id) for _ in range(4)]
    events = {o["id"]: await event_of(resources, o["id"]) for o in (handled, lost, dead, unsent)}
    await queue.send({"1": events[handled["id"]].to_message()})
    assert await worker.run_once() == 1
    dead_queue = await queue.dead_letter_queue()
    assert dead_queue is not None
    await dead_queue.send({"1": events[dead["id"]].to_message()})
    async with resources.db.write() as conn:
        await conn.execute(
            text("UPDATE outbox_event SET published_at = NULL WHERE id = :id"),
            {"id": events[unsent["id"]].id},
        )
    assert await worker.reconcile() == 0  # not past the bound yet
    async with resources.db.write() as conn:  # 20 minutes later
        await conn.execute(
            text("UPDATE outbox_event SET created_at = created_at - interval '20 minutes'")
        )

    assert await worker.reconcile() == 3
    assert await worker.reconcile() == 0
    moved = await dead_queue.move_to(queue)
    assert moved == 1
    while await worker.run_once():
        pass

    for order in (handled, lost, dead, unsent):
        assert await counts(resources, order["id"]) == (3, 1)
        seen = (await client.get(f"/orders/{order['id']}", headers=alice.headers)).json()
        assert seen["fulfilment"] == "done"
    assert sorted(m.subject for m in mailer.sent) == sorted(
        f"Your order #{o['id']}" for o in (handled, lost, dead, unsent)
    )
    assert drain(moto_endpoint, url + "-dead") == []
    assert await balanced(client, resources)
    # The sweep does not publish the event reconciliation applied: it is handled.
    assert resources.relay is not None
    assert await resources.relay.sweep() == 0


def test_shop_worker_redrive_moves_the_dead_letters_back(moto_endpoint: str) -> None:
    import subprocess
    import sys

    url = make_queue(moto_endpoint)
    sqs(moto_endpoint).send_message(QueueUrl=url + "-dead", MessageBody='{"stuck": true}')
    env = {
        "PATH": "/usr/bin:/bin",
        "SHOP_QUEUE_URL": url,
        "SHOP_AWS_REGION": REGION,
        "SHOP_AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }

    done = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "worker", "redrive"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert "moved 1 dead-lettered messages back" in done.stderr
    assert drain(moto_endpoint, url) == [{"stuck": True}]
    assert drain(moto_endpoint, url + "-dead") == []


# --- the relay: no network call inside a transaction, a bounded backlog ---------------------------


class StalledQueue(Queue):
    """A queue whose sends wait until `go` is set, as SQS does when it stalls."""

    def __init__(self, url: str, endpoint: str) -> None:
        super().__init__(url, region=REGION, endpoint_url=endpoint)
        self.go = asyncio.Event()
        self.sending = asyncio.Event()

    async def send(self, bodies: Any) -> dict[str, str]:
        self.sending.set()
        await self.go.wait()
        return await super().send(bodies)


async def test_a_sweep_waiting_on_the_queue_holds_no_lock_and_no_second_sweep_sends_its_events(
    queued: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, alice: User
) -> None:
    from app.adapters.outbox import Relay

    client, resources = queued
    product = await make_product(resources)
    order = await place(client, alice, product.id)
    assert resources.relay is not None
    await resources.relay.flush()
    async with resources.db.write() as conn:  # left behind, as by a process that died
        await conn.execute(
            text(
                "UPDATE outbox_event SET published_at = NULL, "
                "created_at = created_at - interval '1 hour'"
            )
        )
    url = make_queue(moto_endpoint)
    stalled = StalledQueue(url, moto_endpoint)
    relay = Relay(resources.db, stalled, sweep_after_s=1)
    other = Relay(resources.db, Queue(url, region=REGION, endpoint_url=moto_endpoint))

    sweeping = asyncio.create_task(relay.sweep())
    await asyncio.wait_for(stalled.sending.wait(), 5)
    try:
        # While SQS keeps the sweep waiting, the row is not locked: a cancellation or any
        # other writer goes through at once (lock_timeout would fail it otherwise) ...
        async with resources.db.write() as conn:
            await conn.execute(text("SET LOCAL lock_timeout = '200ms'"))
            await conn.execute(text("SELECT id FROM outbox_event FOR UPDATE"))
        # ... and another process's sweep does not send the claimed event a second time.
        assert await other.sweep() == 0
    finally:
        stalled.go.set()
    assert await sweeping == 1
    [message] = drain(moto_endpoint, url)
    assert message["payload"]["order_id"] == order["id"]
    assert await relay.sweep() == 0


async def test_a_stalled_queue_fills_a_bounded_backlog_that_metrics_show_and_the_sweep_empties(
    queued: tuple[httpx.AsyncClient, Resources], moto_endpoint: str, alice: User
) -> None:
    from app.adapters.outbox import Relay

    client, resources = queued
    url = make_queue(moto_endpoint)
    stalled = StalledQueue(url, moto_endpoint)
    relay = Relay(resources.db, stalled, sweep_after_s=0.5, max_pending=3)
    product = await make_product(resources, initial_stock=100)
    events = []
    for _ in range(12):
        order = await place(client, alice, product.id)
        events.append(await event_of(resources, order["id"]))
    assert resources.relay is not None
    await resources.relay.stop()  # only this test's relay publishes them
    async with resources.db.write() as conn:
        await conn.execute(text("UPDATE outbox_event SET published_at = NULL"))
    await relay.start()
    try:
        relay.publish_soon(events)

        assert relay.pending <= 3
        metrics = (await client.get("/metrics")).text
        assert "shop_outbox_relay_pending" in metrics
        dropped = re.search(r"^shop_outbox_relay_dropped_total (\S+)$", metrics, re.M)
        assert dropped is not None and float(dropped.group(1)) >= 9
        stalled.go.set()
        await relay.flush()
        await asyncio.sleep(1.0)
        assert await relay.sweep() >= 0
    finally:
        stalled.go.set()
        await relay.stop()
    published = drain(moto_endpoint, url)
    assert {m["id"] for m in published} == {str(e.id) for e in events}
    async with resources.db.read(primary=True) as conn:
        left = (
            await conn.execute(text("SELECT count(*) FROM outbox_event WHERE published_at IS NULL"))
        ).scalar_one()
    assert left == 0
