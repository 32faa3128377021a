"""Tracking an order at stage 7: before a worker opens its shipment, the answer says so (202,
pending, Retry-After) instead of a bare 404 a client could not tell from someone else's order."""

from __future__ import annotations

import httpx

from app.adapters.resources import Resources
from app.orders import flows
from tests.integration.conftest import User, make_product
from tests.integration.test_outbox import RecordingMailer, event_of, place
from tests.integration.test_outbox import moto_endpoint as moto_endpoint  # fixtures
from tests.integration.test_outbox import queue_url as queue_url
from tests.integration.test_outbox import queued as queued


async def test_a_pending_order_answers_202_until_its_shipment_opens_then_the_shipment(
    queued: tuple[httpx.AsyncClient, Resources], alice: User, bob: User
) -> None:
    client, resources = queued
    product = await make_product(resources, initial_stock=5)
    order = await place(client, alice, product.id, 1)
    url = f"/orders/{order['id']}/shipment"

    pending = await client.get(url, headers=alice.headers)
    assert pending.status_code == 202, pending.text
    assert pending.headers["retry-after"] == "1"
    assert pending.json()["order_id"] == order["id"]
    assert pending.json()["fulfilment"] == "pending"
    assert (await client.get(url, headers=bob.headers)).status_code == 404  # not bob's order

    event = await event_of(resources, order["id"])
    await flows.handle_order_placed(
        resources.db, RecordingMailer(), event_id=event.id, payload=event.payload
    )
    opened = await client.get(url, headers=alice.headers)
    assert opened.status_code == 200, opened.text
    assert opened.json()["order_id"] == order["id"] and opened.json()["status"] == "pending"


async def test_an_order_cancelled_before_fulfilment_has_no_shipment_to_track(
    queued: tuple[httpx.AsyncClient, Resources], alice: User
) -> None:
    client, resources = queued
    product = await make_product(resources, initial_stock=5)
    order = await place(client, alice, product.id, 1)
    cancelled = await client.post(f"/orders/{order['id']}/cancel", headers=alice.headers)
    assert cancelled.json()["fulfilment"] == "skipped"
    gone = await client.get(f"/orders/{order['id']}/shipment", headers=alice.headers)
    assert gone.status_code == 404
