"""Browsing and managing the catalog through HTTP."""

from __future__ import annotations

from httpx import AsyncClient
from sqlalchemy import text

from app.adapters.resources import Resources
from tests.integration.conftest import User, make_product


async def test_an_admin_creates_a_product_that_customers_then_see(
    client: AsyncClient, admin: User
) -> None:
    created = await client.post(
        "/admin/products",
        headers=admin.headers,
        json={"sku": "mug-1", "name": "Blue Mug", "price_cents": 1250, "initial_stock": 7},
    )
    assert created.status_code == 201
    product = (await client.get(f"/products/{created.json()['id']}")).json()
    assert product["sku"] == "MUG-1"
    assert product["stock"] == 7
    assert product["price_cents"] == 1250


async def test_a_duplicate_sku_answers_409(client: AsyncClient, admin: User) -> None:
    body = {"sku": "dup-1", "name": "A", "price_cents": 1}
    assert (
        await client.post("/admin/products", headers=admin.headers, json=body)
    ).status_code == 201
    again = await client.post(
        "/admin/products", headers=admin.headers, json={**body, "sku": "DUP-1"}
    )
    assert again.status_code == 409


async def test_restocking_adds_to_the_stock(
    client: AsyncClient, resources: Resources, admin: User
) -> None:
    product = await make_product(resources, initial_stock=3)
    response = await client.post(
        f"/admin/products/{product.id}/restock", headers=admin.headers, json={"quantity": 4}
    )
    assert response.json()["stock"] == 7


async def test_restocking_past_the_maximum_answers_409(
    client: AsyncClient, resources: Resources, admin: User
) -> None:
    from app.catalog.domain import MAX_STOCK

    product = await make_product(resources, initial_stock=0)
    async with resources.db.write() as conn:
        await conn.execute(
            text("UPDATE stock_level SET quantity = :q WHERE product_id = :id"),
            {"q": MAX_STOCK - 10, "id": product.id},
        )
    topped_up = await client.post(
        f"/admin/products/{product.id}/restock", headers=admin.headers, json={"quantity": 10}
    )
    assert topped_up.status_code == 200
    response = await client.post(
        f"/admin/products/{product.id}/restock", headers=admin.headers, json={"quantity": 1}
    )
    assert response.status_code == 409
    assert (await client.get(f"/products/{product.id}")).json()["stock"] == MAX_STOCK


async def test_an_unknown_product_answers_404(client: AsyncClient, admin: User) -> None:
    assert (await client.get("/products/123456")).status_code == 404
    assert (
        await client.put(
            "/admin/products/123456/price", headers=admin.headers, json={"price_cents": 5}
        )
    ).status_code == 404
    assert (
        await client.post(
            "/admin/products/123456/restock", headers=admin.headers, json={"quantity": 5}
        )
    ).status_code == 404


async def test_products_are_listed_by_name_a_page_at_a_time(
    client: AsyncClient, resources: Resources
) -> None:
    for name in ("Delta", "alpha", "Charlie", "Bravo", "Echo"):
        await make_product(resources, name=name)
    first = (await client.get("/products?limit=2")).json()
    rest = (await client.get("/products?limit=10&offset=2")).json()
    names = [p["name"] for p in first["items"] + rest["items"]]
    assert len(names) == 5
    assert first["next_offset"] == 2
    assert rest["next_offset"] is None


async def test_the_text_filter_matches_name_or_sku_case_insensitively(
    client: AsyncClient, resources: Resources
) -> None:
    await make_product(resources, name="Oak Desk Lamp", sku="LAMP-1")
    await make_product(resources, name="Steel Mug", sku="MUG-OAKISH")
    await make_product(resources, name="Wool Blanket", sku="BLANKET-1")
    found = (await client.get("/products", params={"q": "oak"})).json()["items"]
    assert sorted(p["sku"] for p in found) == ["LAMP-1", "MUG-OAKISH"]


async def test_wildcards_in_the_filter_are_taken_literally(
    client: AsyncClient, resources: Resources
) -> None:
    await make_product(resources, name="100% Cotton Towel")
    await make_product(resources, name="Linen Towel")
    assert len((await client.get("/products", params={"q": "%"})).json()["items"]) == 1
    assert len((await client.get("/products", params={"q": "_"})).json()["items"]) == 0
