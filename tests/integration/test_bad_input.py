"""Whatever a client sends, the answer is a clear 4xx, never a 500, and nothing changes."""

from __future__ import annotations

from typing import Any

import pytest
from httpx import AsyncClient

from app.adapters.resources import Resources
from tests.integration.conftest import User, make_product, snapshot

P = "{product}"  # replaced by a real product id

BAD_ORDERS: list[tuple[str, Any, list[str]]] = [
    ("zero lines", {"lines": []}, ["body", "lines"]),
    ("no lines field", {}, ["body", "lines"]),
    ("lines not a list", {"lines": "many"}, ["body", "lines"]),
    ("duplicate lines", {"lines": [{"product_id": P, "quantity": 1}] * 2}, ["body", "lines"]),
    (
        "zero quantity",
        {"lines": [{"product_id": P, "quantity": 0}]},
        ["body", "lines", "0", "quantity"],
    ),
    (
        "negative quantity",
        {"lines": [{"product_id": P, "quantity": -3}]},
        ["body", "lines", "0", "quantity"],
    ),
    (
        "huge quantity",
        {"lines": [{"product_id": P, "quantity": 10**30}]},
        ["body", "lines", "0", "quantity"],
    ),
    (
        "float quantity",
        {"lines": [{"product_id": P, "quantity": 1.5}]},
        ["body", "lines", "0", "quantity"],
    ),
    (
        "string quantity",
        {"lines": [{"product_id": P, "quantity": "two"}]},
        ["body", "lines", "0", "quantity"],
    ),
    (
        "null quantity",
        {"lines": [{"product_id": P, "quantity": None}]},
        ["body", "lines", "0", "quantity"],
    ),
    (
        "huge product id",
        {"lines": [{"product_id": 2**63, "quantity": 1}]},
        ["body", "lines", "0", "product_id"],
    ),
    (
        "negative product id",
        {"lines": [{"product_id": -1, "quantity": 1}]},
        ["body", "lines", "0", "product_id"],
    ),
    (
        "unknown field",
        {"lines": [{"product_id": P, "quantity": 1, "price_cents": 0}]},
        ["body", "lines", "0", "price_cents"],
    ),
    (
        "too many lines",
        {"lines": [{"product_id": i, "quantity": 1} for i in range(1, 60)]},
        ["body", "lines"],
    ),
    # JSON types are not interchangeable: each of these placed an order before strict schemas.
    (
        "quantity true",
        {"lines": [{"product_id": P, "quantity": True}]},
        ["body", "lines", "0", "quantity"],
    ),
    (
        "quantity as text",
        {"lines": [{"product_id": P, "quantity": "2"}]},
        ["body", "lines", "0", "quantity"],
    ),
    (
        "quantity 2.0",
        {"lines": [{"product_id": P, "quantity": 2.0}]},
        ["body", "lines", "0", "quantity"],
    ),
    (
        "product_id true",
        {"lines": [{"product_id": True, "quantity": 1}]},
        ["body", "lines", "0", "product_id"],
    ),
    (
        "product_id as text",
        {"lines": [{"product_id": "1", "quantity": 1}]},
        ["body", "lines", "0", "product_id"],
    ),
    ("body is a list", [1, 2, 3], ["body"]),
    ("body is a string", "order please", ["body"]),
]


def _fill(value: Any, product_id: int) -> Any:
    if value == P:
        return product_id
    if isinstance(value, dict):
        return {k: _fill(v, product_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, product_id) for v in value]
    return value


@pytest.mark.parametrize(("case", "body", "loc"), BAD_ORDERS, ids=[c[0] for c in BAD_ORDERS])
async def test_a_bad_order_answers_422_naming_the_field_and_changes_nothing(
    client: AsyncClient, resources: Resources, alice: User, case: str, body: Any, loc: list[str]
) -> None:
    product = await make_product(resources)
    before = await snapshot(resources)
    response = await client.post("/orders", headers=alice.headers, json=_fill(body, product.id))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert [str(part) for part in detail[0]["loc"]][: len(loc)] == loc
    assert detail[0]["msg"]
    assert await snapshot(resources) == before


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"lines": [}', b"\xff\xfe\x00", b"null", b'{"lines": NaN}', b"", b"{" * 5000],
)
async def test_malformed_json_answers_a_clear_4xx(
    client: AsyncClient, resources: Resources, alice: User, raw: bytes
) -> None:
    before = await snapshot(resources)
    response = await client.post(
        "/orders", headers={**alice.headers, "Content-Type": "application/json"}, content=raw
    )
    # 422 for JSON that does not parse; 400 for bytes that are not even text.
    assert response.status_code in (400, 422)
    assert response.json()["detail"]
    assert await snapshot(resources) == before


async def test_an_oversized_body_answers_413(client: AsyncClient, alice: User) -> None:
    big = b'{"lines": [' + b'{"product_id": 1, "quantity": 1},' * 5000 + b"]}"
    response = await client.post(
        "/orders", headers={**alice.headers, "Content-Type": "application/json"}, content=big
    )
    assert response.status_code == 413


async def test_an_oversized_streamed_body_answers_413(client: AsyncClient, alice: User) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b" " * 4096

    response = await client.post(
        "/orders", headers={**alice.headers, "Content-Type": "application/json"}, content=chunks()
    )
    assert response.status_code == 413


BAD_PRODUCTS: list[tuple[str, dict[str, Any], str]] = [
    ("negative price", {"price_cents": -1}, "price_cents"),
    ("huge price", {"price_cents": 10**20}, "price_cents"),
    ("price as float", {"price_cents": 9.99}, "price_cents"),
    ("empty name", {"name": "   "}, "name"),
    ("very long name", {"name": "n" * 10_000}, "name"),
    ("NUL in name", {"name": "bad\x00name"}, "name"),
    ("newline in name", {"name": "two\nlines"}, "name"),
    ("NUL in description", {"description": "a\x00b"}, "description"),
    ("very long description", {"description": "d" * 6_000}, "description"),
    ("SKU with spaces", {"sku": "has space"}, "sku"),
    ("SKU with unicode", {"sku": "ÄBC"}, "sku"),
    ("SKU too long", {"sku": "A" * 65}, "sku"),
    ("negative initial stock", {"initial_stock": -1}, "initial_stock"),
    ("image key with ..", {"image_key": "a b"}, "image_key"),
    ("price true", {"price_cents": True}, "price_cents"),
    ("price as text", {"price_cents": "100"}, "price_cents"),
    ("price 1.0", {"price_cents": 1.0}, "price_cents"),
    ("stock false", {"initial_stock": False}, "initial_stock"),
    ("name a number", {"name": 42}, "name"),
]


@pytest.mark.parametrize(("case", "patch", "field"), BAD_PRODUCTS, ids=[c[0] for c in BAD_PRODUCTS])
async def test_a_bad_product_answers_422_naming_the_field(
    client: AsyncClient,
    resources: Resources,
    admin: User,
    case: str,
    patch: dict[str, Any],
    field: str,
) -> None:
    before = await snapshot(resources)
    body = {"sku": "GOOD-1", "name": "Good", "price_cents": 100, **patch}
    response = await client.post("/admin/products", headers=admin.headers, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", field]
    assert await snapshot(resources) == before


async def test_unicode_names_are_kept_as_sent(client: AsyncClient, admin: User) -> None:
    name = "Tasse à café ☕ 茶碗 🍵"
    created = await client.post(
        "/admin/products",
        headers=admin.headers,
        json={"sku": "UNI-1", "name": name, "price_cents": 1},
    )
    assert created.status_code == 201
    assert (await client.get(f"/products/{created.json()['id']}")).json()["name"] == name
    found = await client.get("/products", params={"q": "茶碗"})
    assert [p["name"] for p in found.json()["items"]] == [name]


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/products?limit=101", "limit"),
        ("/products?limit=0", "limit"),
        ("/products?limit=-5", "limit"),
        ("/products?limit=abc", "limit"),
        ("/products?offset=-1", "offset"),
        ("/products?offset=99999999999999999999", "offset"),
        ("/products?q=" + "x" * 101, "q"),
        ("/products?q=%00", "q"),
        ("/products/0", "product_id"),
        ("/products/-1", "product_id"),
        ("/products/abc", "product_id"),
        ("/products/99999999999999999999", "product_id"),
        ("/products/1.5", "product_id"),
    ],
)
async def test_bad_query_and_path_values_answer_422_naming_them(
    client: AsyncClient, path: str, param: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][-1] == param


@pytest.mark.parametrize("key", ["", "k" * 256, "has space", "tab\tkey", "ünïcode"])
async def test_a_malformed_idempotency_key_answers_422(
    client: AsyncClient, resources: Resources, alice: User, key: str
) -> None:
    product = await make_product(resources)
    response = await client.post(
        "/orders",
        headers=[*alice.headers.items(), ("Idempotency-Key", key.encode())],
        json={"lines": [{"product_id": product.id, "quantity": 1}]},
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "password": "long-enough-pw", "full_name": "X"},
        {"email": "a@example.com", "password": "p" * 10_000, "full_name": "X"},
        {"email": "a@example.com", "password": "long-enough-pw", "full_name": ""},
        {"email": "a@example.com", "password": 12345678901, "full_name": "X"},
        {"email": "a@example.com\x00", "password": "long-enough-pw", "full_name": "X"},
    ],
)
async def test_a_bad_sign_up_answers_422(client: AsyncClient, body: dict[str, Any]) -> None:
    response = await client.post("/auth/sign-up", json=body)
    assert response.status_code == 422, response.text
