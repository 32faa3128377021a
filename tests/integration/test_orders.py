"""Placing and cancelling orders through HTTP, against PostgreSQL."""

from __future__ import annotations

import asyncio
import logging

import pytest
from httpx import AsyncClient

from app.adapters.resources import Resources
from tests.integration.conftest import User, make_product, snapshot


async def trial_balance(client: AsyncClient, admin: User) -> dict:  # type: ignore[type-arg]
    response = await client.get("/admin/ledger/trial-balance", headers=admin.headers)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


async def test_placing_an_order_reserves_stock_posts_the_ledger_and_opens_a_shipment(
    client: AsyncClient, resources: Resources, alice: User, admin: User
) -> None:
    mug = await make_product(resources, price_cents=1250, initial_stock=5)
    lamp = await make_product(resources, price_cents=4000, initial_stock=2)

    response = await client.post(
        "/orders",
        headers=alice.headers,
        json={
            "lines": [{"product_id": mug.id, "quantity": 2}, {"product_id": lamp.id, "quantity": 1}]
        },
    )

    assert response.status_code == 201
    order = response.json()
    assert order["subtotal_cents"] == 6500
    assert order["tax_cents"] == 1300  # 20 %
    assert order["total_cents"] == 7800
    assert [(line["product_id"], line["quantity"]) for line in order["lines"]] == [
        (mug.id, 2),
        (lamp.id, 1),
    ]
    assert (await client.get(f"/products/{mug.id}")).json()["stock"] == 3
    assert (await client.get(f"/products/{lamp.id}")).json()["stock"] == 1
    entries = (await client.get(f"/ledger/orders/{order['id']}", headers=alice.headers)).json()
    assert sum(e["debit_cents"] for e in entries) == sum(e["credit_cents"] for e in entries) == 7800
    tracking = (await client.get(f"/orders/{order['id']}/shipment", headers=alice.headers)).json()
    assert tracking["status"] == "pending"
    assert (await trial_balance(client, admin))["balanced"] is True


async def test_an_order_id_past_32_bits_is_placed_and_read_back(
    client: AsyncClient, resources: Resources, alice: User
) -> None:
    """Orders are numbered by one sequence without shards; a shop that has taken 2^31 of them
    still places the next, posts its ledger, opens its shipment and reads it back."""
    from sqlalchemy import text

    async with resources.db.write() as conn:
        await conn.execute(
            text("SELECT setval(pg_get_serial_sequence('customer_order', 'id'), 2147483650)")
        )
    mug = await make_product(resources, price_cents=1250, initial_stock=5)
    placed = await client.post(
        "/orders", headers=alice.headers, json={"lines": [{"product_id": mug.id, "quantity": 1}]}
    )
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    assert order_id > 2**31
    assert (await client.get(f"/orders/{order_id}", headers=alice.headers)).status_code == 200
    entries = (await client.get(f"/ledger/orders/{order_id}", headers=alice.headers)).json()
    assert sum(e["debit_cents"] for e in entries) == placed.json()["total_cents"]
    shipment = await client.get(f"/orders/{order_id}/shipment", headers=alice.headers)
    assert shipment.status_code == 200, shipment.text


async def test_an_order_keeps_the_price_it_was_placed_at(
    client: AsyncClient, resources: Resources, alice: User, admin: User
) -> None:
    product = await make_product(resources, price_cents=1000)
    placed = await client.post(
        "/orders",
        headers=alice.headers,
        json={"lines": [{"product_id": product.id, "quantity": 1}]},
    )
    await client.put(
        f"/admin/products/{product.id}/price", headers=admin.headers, json={"price_cents": 9999}
    )
    again = await client.get(f"/orders/{placed.json()['id']}", headers=alice.headers)
    assert again.json()["lines"][0]["unit_price_cents"] == 1000


async def test_ordering_more_than_is_in_stock_answers_409_and_changes_nothing(
    client: AsyncClient, resources: Resources, alice: User
) -> None:
    plenty = await make_product(resources, initial_stock=100)
    scarce = await make_product(resources, initial_stock=3)
    before = await snapshot(resources)

    response = await client.post(
        "/orders",
        headers=alice.headers,
        json={
            "lines": [
                {"product_id": plenty.id, "quantity": 5},
                {"product_id": scarce.id, "quantity": 4},
            ]
        },
    )

    assert response.status_code == 409
    body = response.json()
    assert body["product_id"] == scarce.id
    assert body["available"] == 3
    assert body["requested"] == 4
    assert await snapshot(resources) == before


async def test_ordering_an_unknown_product_answers_404_and_changes_nothing(
    client: AsyncClient, resources: Resources, alice: User
) -> None:
    product = await make_product(resources)
    before = await snapshot(resources)
    response = await client.post(
        "/orders",
        headers=alice.headers,
        json={
            "lines": [
                {"product_id": product.id, "quantity": 1},
                {"product_id": 999999, "quantity": 1},
            ]
        },
    )
    assert response.status_code == 404
    assert "999999" in response.json()["detail"]
    assert await snapshot(resources) == before


async def test_cancelling_returns_the_stock_and_posts_the_reversal(
    client: AsyncClient, resources: Resources, alice: User, admin: User
) -> None:
    product = await make_product(resources, price_cents=500, initial_stock=10)
    order = (
        await client.post(
            "/orders",
            headers=alice.headers,
            json={"lines": [{"product_id": product.id, "quantity": 4}]},
        )
    ).json()

    response = await client.post(f"/orders/{order['id']}/cancel", headers=alice.headers)

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert (await client.get(f"/products/{product.id}")).json()["stock"] == 10
    entries = (await client.get(f"/ledger/orders/{order['id']}", headers=alice.headers)).json()
    assert [e["event"] for e in entries].count("order_cancelled") == 3
    balance = await trial_balance(client, admin)
    assert balance["balanced"] is True
    assert all(a["balance_cents"] == 0 for a in balance["accounts"])
    tracking = (await client.get(f"/orders/{order['id']}/shipment", headers=alice.headers)).json()
    assert tracking["status"] == "cancelled"
    assert [e["status"] for e in tracking["events"]] == ["pending", "cancelled"]


async def test_cancelling_twice_answers_409_and_returns_the_stock_once(
    client: AsyncClient, resources: Resources, alice: User
) -> None:
    product = await make_product(resources, initial_stock=10)
    order = (
        await client.post(
            "/orders",
            headers=alice.headers,
            json={"lines": [{"product_id": product.id, "quantity": 4}]},
        )
    ).json()
    first, second = await asyncio.gather(
        client.post(f"/orders/{order['id']}/cancel", headers=alice.headers),
        client.post(f"/orders/{order['id']}/cancel", headers=alice.headers),
    )
    assert sorted([first.status_code, second.status_code]) == [200, 409]
    assert (await client.get(f"/products/{product.id}")).json()["stock"] == 10


async def test_an_order_cannot_be_cancelled_once_shipped(
    client: AsyncClient, resources: Resources, alice: User, admin: User
) -> None:
    product = await make_product(resources, initial_stock=10)
    order = (
        await client.post(
            "/orders",
            headers=alice.headers,
            json={"lines": [{"product_id": product.id, "quantity": 1}]},
        )
    ).json()
    shipment = (await client.get(f"/orders/{order['id']}/shipment", headers=alice.headers)).json()
    for step in ("packed", "shipped"):
        moved = await client.post(
            f"/admin/shipments/{shipment['id']}/advance", headers=admin.headers, json={"to": step}
        )
        assert moved.status_code == 200
    before = await snapshot(resources)

    response = await client.post(f"/orders/{order['id']}/cancel", headers=alice.headers)

    assert response.status_code == 409
    assert response.json()["current"] == "shipped"
    assert response.json()["allowed"] == ["delivered"]
    assert await snapshot(resources) == before


async def test_my_orders_are_listed_newest_first_a_page_at_a_time(
    client: AsyncClient, resources: Resources, alice: User, bob: User
) -> None:
    product = await make_product(resources, initial_stock=100)
    line = {"lines": [{"product_id": product.id, "quantity": 1}]}
    ids = [
        (await client.post("/orders", headers=alice.headers, json=line)).json()["id"]
        for _ in range(5)
    ]
    await client.post("/orders", headers=bob.headers, json=line)

    first = (await client.get("/orders?limit=3", headers=alice.headers)).json()
    second = (await client.get("/orders?limit=3&offset=3", headers=alice.headers)).json()

    assert [o["id"] for o in first["items"]] == ids[::-1][:3]
    assert first["next_offset"] == 3
    assert [o["id"] for o in second["items"]] == ids[::-1][3:]
    assert second["next_offset"] is None


async def test_a_placed_order_is_confirmed_to_the_customers_address(
    client: AsyncClient, resources: Resources, alice: User, caplog: pytest.LogCaptureFixture
) -> None:
    mug = await make_product(resources, name="Blue mug", price_cents=1250, initial_stock=5)

    with caplog.at_level(logging.INFO, logger="shop.mail"):
        response = await client.post(
            "/orders",
            headers=alice.headers,
            json={"lines": [{"product_id": mug.id, "quantity": 2}]},
        )

    assert response.status_code == 201
    order_id = response.json()["id"]
    mails = [r.getMessage() for r in caplog.records if r.name == "shop.mail"]
    assert len(mails) == 1
    assert mails[0].startswith(f"mail to {alice.email}: Your order #{order_id}")
    assert "2 x Blue mug: 25.00" in mails[0]
    assert "Total (tax included): 30.00" in mails[0]


async def test_admins_list_every_customers_orders_newest_first_page_by_page(
    client: AsyncClient, resources: Resources, alice: User, bob: User, admin: User
) -> None:
    product = await make_product(resources, initial_stock=20)
    placed = []
    for buyer in (alice, bob, alice):
        answer = await client.post(
            "/orders",
            headers=buyer.headers,
            json={"lines": [{"product_id": product.id, "quantity": 1}]},
        )
        placed.append((answer.json()["id"], buyer.id))

    first = (await client.get("/admin/orders", headers=admin.headers, params={"limit": 2})).json()
    rest = (
        await client.get(
            "/admin/orders", headers=admin.headers, params={"cursor": first["next_cursor"]}
        )
    ).json()

    listed = [(o["id"], o["customer_id"]) for o in first["items"] + rest["items"]]
    assert listed == placed[::-1]
    assert rest["next_cursor"] is None
    assert (await client.get("/admin/orders", headers=alice.headers)).status_code == 403
