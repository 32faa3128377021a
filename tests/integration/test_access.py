"""Who may see and do what: other customers' data answers 404, admin routes 401/403."""

from __future__ import annotations

import pytest
from httpx import AsyncClient

from app.adapters.resources import Resources
from tests.integration.conftest import User, make_product, snapshot

ADMIN_ROUTES = [
    ("POST", "/admin/products", {"sku": "X-1", "name": "X", "price_cents": 1}),
    ("PUT", "/admin/products/1/price", {"price_cents": 1}),
    ("POST", "/admin/products/1/restock", {"quantity": 1}),
    ("GET", "/admin/ledger/trial-balance", None),
    ("GET", "/admin/stock", None),
    ("GET", "/admin/shipments", None),
    ("POST", "/admin/shipments/1/advance", {"to": "packed"}),
]
CUSTOMER_ROUTES = [
    ("POST", "/orders", {"lines": [{"product_id": 1, "quantity": 1}]}),
    ("GET", "/orders", None),
    ("GET", "/orders/1", None),
    ("POST", "/orders/1/cancel", None),
    ("GET", "/orders/1/shipment", None),
    ("GET", "/ledger/orders/1", None),
    ("GET", "/customers/me", None),
]


@pytest.fixture
async def alices_order(client: AsyncClient, resources: Resources, alice: User) -> dict:  # type: ignore[type-arg]
    product = await make_product(resources, initial_stock=5)
    response = await client.post(
        "/orders",
        headers=alice.headers,
        json={"lines": [{"product_id": product.id, "quantity": 1}]},
    )
    assert response.status_code == 201
    return response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES + CUSTOMER_ROUTES)
async def test_every_private_route_answers_401_without_a_token(
    client: AsyncClient, method: str, path: str, body: object
) -> None:
    response = await client.request(method, path, json=body)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_admin_routes_answer_403_to_customers(
    client: AsyncClient, resources: Resources, alice: User, method: str, path: str, body: object
) -> None:
    await make_product(resources)
    before = await snapshot(resources)
    response = await client.request(method, path, json=body, headers=alice.headers)
    assert response.status_code == 403
    assert await snapshot(resources) == before


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIiwicm9sZSI6ImFkbWluIn0.",  # alg=none, role=admin
        "Bearer",
        "",
    ],
)
async def test_a_forged_or_malformed_token_answers_401(client: AsyncClient, token: str) -> None:
    response = await client.get("/customers/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


async def test_a_token_signed_with_another_key_answers_401(client: AsyncClient) -> None:
    from app.kernel.security import LocalTokens, Principal, Role

    forger = LocalTokens(secret="another-key-" + "y" * 40, issuer="shop", ttl_s=60)
    token, _ = forger.issue(Principal(customer_id=1, role=Role.ADMIN))
    response = await client.get(
        "/admin/ledger/trial-balance", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    "path",
    ["/orders/{id}", "/orders/{id}/shipment", "/ledger/orders/{id}"],
    ids=["order", "shipment", "ledger entries"],
)
async def test_another_customers_data_answers_404_exactly_like_an_unknown_id(
    client: AsyncClient,
    bob: User,
    alices_order: dict,  # type: ignore[type-arg]
    path: str,
) -> None:
    theirs = await client.get(path.format(id=alices_order["id"]), headers=bob.headers)
    unknown = await client.get(path.format(id=999999), headers=bob.headers)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["detail"].replace(str(alices_order["id"]), "N") == unknown.json()[
        "detail"
    ].replace("999999", "N")


async def test_another_customers_order_cannot_be_cancelled(
    client: AsyncClient,
    resources: Resources,
    bob: User,
    alices_order: dict,  # type: ignore[type-arg]
) -> None:
    before = await snapshot(resources)
    response = await client.post(f"/orders/{alices_order['id']}/cancel", headers=bob.headers)
    assert response.status_code == 404
    assert await snapshot(resources) == before


async def test_another_customers_orders_are_not_in_my_list(
    client: AsyncClient,
    bob: User,
    alices_order: dict,  # type: ignore[type-arg]
) -> None:
    response = await client.get("/orders", headers=bob.headers)
    assert response.json()["items"] == []


async def test_admins_see_any_order_and_its_entries(
    client: AsyncClient,
    admin: User,
    alices_order: dict,  # type: ignore[type-arg]
) -> None:
    order_id = alices_order["id"]
    assert (await client.get(f"/orders/{order_id}", headers=admin.headers)).status_code == 200
    assert (
        await client.get(f"/ledger/orders/{order_id}", headers=admin.headers)
    ).status_code == 200


async def test_sign_in_gives_a_token_that_identifies_the_customer(
    client: AsyncClient,
) -> None:
    signed_up = await client.post(
        "/auth/sign-up",
        json={"email": "Carol@Example.com", "password": "a-long-passphrase", "full_name": "Carol"},
    )
    assert signed_up.status_code == 201
    token = await client.post(
        "/auth/token", json={"email": "carol@example.com", "password": "a-long-passphrase"}
    )
    assert token.status_code == 200
    me = await client.get(
        "/customers/me", headers={"Authorization": f"Bearer {token.json()['access_token']}"}
    )
    assert me.json()["email"] == "carol@example.com"
    assert me.json()["role"] == "customer"


async def test_a_wrong_password_and_an_unknown_email_answer_alike(
    client: AsyncClient, alice: User
) -> None:
    wrong = await client.post(
        "/auth/token", json={"email": alice.email, "password": "not-the-password"}
    )
    unknown = await client.post(
        "/auth/token", json={"email": "nobody@example.com", "password": "not-the-password"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


async def test_signing_up_twice_with_one_email_answers_409(
    client: AsyncClient, alice: User
) -> None:
    response = await client.post(
        "/auth/sign-up",
        json={"email": alice.email.upper(), "password": "another-passphrase", "full_name": "A"},
    )
    assert response.status_code == 409


async def test_a_weak_password_answers_422_naming_the_field(client: AsyncClient) -> None:
    response = await client.post(
        "/auth/sign-up", json={"email": "dan@example.com", "password": "short", "full_name": "D"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "password"]


async def test_a_common_password_is_refused_with_the_reason_and_no_account_is_made(
    client: AsyncClient,
) -> None:
    for n, common in enumerate(("1234567890", "password12", "qwertyuiop")):
        email = f"guessable{n}@example.com"
        response = await client.post(
            "/auth/sign-up", json={"email": email, "password": common, "full_name": "G"}
        )
        assert response.status_code == 422, common
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "password"]
        assert "too easy to guess" in error["msg"], error
        signed_in = await client.post("/auth/token", json={"email": email, "password": common})
        assert signed_in.status_code == 401
