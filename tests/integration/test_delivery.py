"""Advancing shipments through HTTP: legal moves, and 409s that name the allowed ones."""

from __future__ import annotations

import pytest
from httpx import AsyncClient

from app.adapters.resources import Resources
from tests.integration.conftest import User, make_product


async def open_shipment(client: AsyncClient, resources: Resources, customer: User) -> int:
    product = await make_product(resources)
    order = await client.post(
        "/orders",
        headers=customer.headers,
        json={"lines": [{"product_id": product.id, "quantity": 1}]},
    )
    tracking = await client.get(f"/orders/{order.json()['id']}/shipment", headers=customer.headers)
    return int(tracking.json()["id"])


async def advance(client: AsyncClient, admin: User, shipment_id: int, to: str):  # type: ignore[no-untyped-def]
    return await client.post(
        f"/admin/shipments/{shipment_id}/advance", headers=admin.headers, json={"to": to}
    )


async def test_a_shipment_goes_from_pending_to_delivered_and_the_customer_sees_each_step(
    client: AsyncClient, resources: Resources, alice: User, admin: User
) -> None:
    shipment_id = await open_shipment(client, resources, alice)
    for step in ("packed", "shipped", "delivered"):
        assert (await advance(client, admin, shipment_id, step)).status_code == 200
    orders = (await client.get("/orders", headers=alice.headers)).json()["items"]
    tracking = (
        await client.get(f"/orders/{orders[0]['id']}/shipment", headers=alice.headers)
    ).json()
    assert [e["status"] for e in tracking["events"]] == [
        "pending",
        "packed",
        "shipped",
        "delivered",
    ]
    assert tracking["allowed_next"] == []


@pytest.mark.parametrize(
    ("path", "target", "allowed"),
    [
        ([], "shipped", ["packed"]),
        ([], "delivered", ["packed"]),
        ([], "pending", ["packed"]),
        (["packed"], "packed", ["shipped"]),
        (["packed"], "delivered", ["shipped"]),
        (["packed"], "pending", ["shipped"]),
        (["packed", "shipped"], "packed", ["delivered"]),
        (["packed", "shipped"], "shipped", ["delivered"]),
        (["packed", "shipped", "delivered"], "shipped", []),
        (["packed", "shipped", "delivered"], "delivered", []),
    ],
)
async def test_an_illegal_move_answers_409_naming_the_allowed_ones(
    client: AsyncClient,
    resources: Resources,
    alice: User,
    admin: User,
    path: list[str],
    target: str,
    allowed: list[str],
) -> None:
    shipment_id = await open_shipment(client, resources, alice)
    for step in path:
        assert (await advance(client, admin, shipment_id, step)).status_code == 200
    response = await advance(client, admin, shipment_id, target)
    if target == "pending":
        assert response.status_code == 422  # not a status an admin can ask for
        return
    assert response.status_code == 409
    assert response.json()["allowed"] == allowed
    assert response.json()["requested"] == target


@pytest.mark.parametrize(
    "path",
    [[], ["packed"], ["packed", "shipped"], ["packed", "shipped", "delivered"], ["cancel"]],
    ids=["pending", "packed", "shipped", "delivered", "cancelled"],
)
async def test_allowed_next_offers_exactly_the_moves_advance_accepts(
    client: AsyncClient, resources: Resources, alice: User, admin: User, path: list[str]
) -> None:
    async def shipment_after_path() -> tuple[int, list[str]]:
        shipment_id = await open_shipment(client, resources, alice)
        for step in path:
            if step == "cancel":
                orders = (await client.get("/orders", headers=alice.headers)).json()["items"]
                cancelled = await client.post(
                    f"/orders/{orders[0]['id']}/cancel", headers=alice.headers
                )
                assert cancelled.status_code == 200
            else:
                assert (await advance(client, admin, shipment_id, step)).status_code == 200
        listed = (await client.get("/admin/shipments", headers=admin.headers)).json()["items"]
        shown = next(s for s in listed if s["id"] == shipment_id)
        return shipment_id, shown["allowed_next"]

    _, offered = await shipment_after_path()
    for target in ("pending", "packed", "shipped", "delivered", "cancelled"):
        shipment_id, _ = await shipment_after_path()
        response = await advance(client, admin, shipment_id, target)
        if target in offered:
            assert response.status_code == 200, (target, response.json())
        else:
            assert response.status_code in (409, 422), target
            if response.status_code == 409:
                assert response.json()["allowed"] == offered


async def test_a_cancelled_shipment_cannot_move(
    client: AsyncClient, resources: Resources, alice: User, admin: User
) -> None:
    shipment_id = await open_shipment(client, resources, alice)
    orders = (await client.get("/orders", headers=alice.headers)).json()["items"]
    await client.post(f"/orders/{orders[0]['id']}/cancel", headers=alice.headers)
    for target in ("packed", "shipped", "delivered"):
        response = await advance(client, admin, shipment_id, target)
        assert response.status_code == 409
        assert response.json()["allowed"] == []


async def test_admins_can_list_shipments_by_status(
    client: AsyncClient, resources: Resources, alice: User, admin: User
) -> None:
    first = await open_shipment(client, resources, alice)
    second = await open_shipment(client, resources, alice)
    await advance(client, admin, first, "packed")
    pending = (await client.get("/admin/shipments?status=pending", headers=admin.headers)).json()
    packed = (await client.get("/admin/shipments?status=packed", headers=admin.headers)).json()
    assert [s["id"] for s in pending["items"]] == [second]
    assert [s["id"] for s in packed["items"]] == [first]


async def test_advancing_an_unknown_shipment_answers_404(client: AsyncClient, admin: User) -> None:
    assert (await advance(client, admin, 424242, "packed")).status_code == 404
