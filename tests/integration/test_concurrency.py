"""Under concurrency: no oversell, ever, and idempotency keys that survive a race."""

from __future__ import annotations

import asyncio

from httpx import AsyncClient

from app.adapters.resources import Resources
from app.kernel.security import Role
from tests.integration.conftest import make_product, make_user, snapshot


async def test_fifty_simultaneous_orders_for_ten_in_stock_sell_exactly_ten(
    client: AsyncClient, resources: Resources
) -> None:
    product = await make_product(resources, price_cents=1999, initial_stock=10)
    buyers = [await make_user(resources) for _ in range(50)]
    admin = await make_user(resources, role=Role.ADMIN)

    responses = await asyncio.gather(
        *(
            client.post(
                "/orders",
                headers=buyer.headers,
                json={"lines": [{"product_id": product.id, "quantity": 1}]},
            )
            for buyer in buyers
        )
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 10
    assert statuses.count(409) == 40
    assert (await client.get(f"/products/{product.id}")).json()["stock"] == 0
    balance = (await client.get("/admin/ledger/trial-balance", headers=admin.headers)).json()
    assert balance["balanced"] is True
    assert balance["total_debit_cents"] == 10 * (1999 + 400)
    shipments = (await client.get("/admin/shipments?limit=100", headers=admin.headers)).json()
    assert len(shipments["items"]) == 10


async def test_concurrent_multi_line_orders_never_deadlock_or_oversell(
    client: AsyncClient, resources: Resources
) -> None:
    a = await make_product(resources, initial_stock=7)
    b = await make_product(resources, initial_stock=7)
    buyers = [await make_user(resources) for _ in range(20)]

    # Half the orders list the products in one order, half in the other.
    responses = await asyncio.gather(
        *(
            client.post(
                "/orders",
                headers=buyer.headers,
                json={
                    "lines": [
                        {"product_id": first.id, "quantity": 1},
                        {"product_id": second.id, "quantity": 1},
                    ]
                },
            )
            for i, buyer in enumerate(buyers)
            for first, second in [(a, b) if i % 2 else (b, a)]
        )
    )

    assert sorted(r.status_code for r in responses).count(201) == 7
    assert (await client.get(f"/products/{a.id}")).json()["stock"] == 0
    assert (await client.get(f"/products/{b.id}")).json()["stock"] == 0


async def test_the_same_idempotency_key_sent_twice_at_once_creates_one_order(
    client: AsyncClient, resources: Resources
) -> None:
    product = await make_product(resources, initial_stock=100)
    buyer = await make_user(resources)
    headers = {**buyer.headers, "Idempotency-Key": "race-1"}
    body = {"lines": [{"product_id": product.id, "quantity": 3}]}

    responses = await asyncio.gather(
        *(client.post("/orders", headers=headers, json=body) for _ in range(10))
    )

    assert {r.status_code for r in responses} == {201}, [r.json() for r in responses][:2]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 9
    assert (await client.get(f"/products/{product.id}")).json()["stock"] == 97
    mine = (await client.get("/orders", headers=buyer.headers)).json()
    assert len(mine["items"]) == 1


async def test_a_retry_with_the_same_key_and_body_returns_the_first_answer(
    client: AsyncClient, resources: Resources
) -> None:
    product = await make_product(resources, initial_stock=100)
    buyer = await make_user(resources)
    headers = {**buyer.headers, "Idempotency-Key": "retry-1"}
    body = {"lines": [{"product_id": product.id, "quantity": 2}]}
    first = await client.post("/orders", headers=headers, json=body)
    # Even after the order changed, the retry answers what the first request answered.
    await client.post(f"/orders/{first.json()['id']}/cancel", headers=buyer.headers)
    before = await snapshot(resources)

    retry = await client.post("/orders", headers=headers, json=body)

    assert retry.status_code == 201
    assert retry.json() == first.json()
    assert await snapshot(resources) == before


async def test_the_same_key_with_another_body_answers_422_and_creates_nothing(
    client: AsyncClient, resources: Resources
) -> None:
    product = await make_product(resources, initial_stock=100)
    buyer = await make_user(resources)
    headers = {**buyer.headers, "Idempotency-Key": "k-1"}
    await client.post(
        "/orders", headers=headers, json={"lines": [{"product_id": product.id, "quantity": 1}]}
    )
    before = await snapshot(resources)

    other = await client.post(
        "/orders", headers=headers, json={"lines": [{"product_id": product.id, "quantity": 2}]}
    )

    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await snapshot(resources) == before


async def test_a_key_whose_first_request_failed_can_be_retried(
    client: AsyncClient, resources: Resources
) -> None:
    product = await make_product(resources, initial_stock=1)
    buyer = await make_user(resources)
    headers = {**buyer.headers, "Idempotency-Key": "after-restock"}
    body = {"lines": [{"product_id": product.id, "quantity": 2}]}
    assert (await client.post("/orders", headers=headers, json=body)).status_code == 409
    admin = await make_user(resources, role=Role.ADMIN)
    await client.post(
        f"/admin/products/{product.id}/restock", headers=admin.headers, json={"quantity": 5}
    )
    assert (await client.post("/orders", headers=headers, json=body)).status_code == 201


async def test_keys_are_per_customer(client: AsyncClient, resources: Resources) -> None:
    product = await make_product(resources, initial_stock=100)
    alice, bob = await make_user(resources), await make_user(resources)
    body = {"lines": [{"product_id": product.id, "quantity": 1}]}
    a = await client.post(
        "/orders", headers={**alice.headers, "Idempotency-Key": "same"}, json=body
    )
    b = await client.post("/orders", headers={**bob.headers, "Idempotency-Key": "same"}, json=body)
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]
