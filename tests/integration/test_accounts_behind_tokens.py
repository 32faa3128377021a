"""A token is only as good as the account behind it: forged, unknown, deleted and demoted
accounts, as an attacker or a changed account would try them."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.adapters.resources import Resources
from app.customers.service import Accounts
from app.kernel.security import Principal, Role
from tests.integration.conftest import User, make_product, make_user, snapshot


def bearer(resources: Resources, customer_id: int, role: Role = Role.CUSTOMER) -> dict[str, str]:
    """A correctly signed token, as someone holding the key (or an old token) would send it."""
    token, _ = resources.tokens.issue(Principal(customer_id=customer_id, role=role))
    return {"Authorization": f"Bearer {token}"}


def forged(resources: Resources, subject: str, role: str = "customer") -> dict[str, str]:
    claims = {"sub": subject, "role": role, "iss": "shop", "exp": int(time.time()) + 600}
    secret = resources.settings.jwt_secret
    return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}


def order_of(product_id: int) -> dict[str, object]:
    return {"lines": [{"product_id": product_id, "quantity": 1}]}


async def test_a_signed_token_for_an_account_that_never_existed_places_no_order(
    client: AsyncClient, resources: Resources
) -> None:
    product = await make_product(resources)
    before = await snapshot(resources)
    response = await client.post(
        "/orders", headers=bearer(resources, 424242), json=order_of(product.id)
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert await snapshot(resources) == before


@pytest.mark.parametrize("subject", ["99999999999999999999", "2147483648", "0", "-3", "\uff11"])
async def test_a_subject_that_cannot_be_an_account_answers_401_not_500(
    client: AsyncClient, resources: Resources, subject: str
) -> None:
    for path in ("/orders", "/customers/me", "/orders/1"):
        response = await client.get(path, headers=forged(resources, subject))
        assert response.status_code == 401, (path, response.text)


async def test_a_deleted_account_loses_access_at_once_with_no_cache(
    client: AsyncClient, resources: Resources, alice: User
) -> None:
    product = await make_product(resources)
    assert (await client.get("/customers/me", headers=alice.headers)).status_code == 200
    async with resources.db.write() as conn:
        await conn.execute(text("DELETE FROM customer WHERE id = :id"), {"id": alice.id})
    response = await client.post("/orders", headers=alice.headers, json=order_of(product.id))
    assert response.status_code == 401


async def test_a_demoted_admin_loses_admin_routes_and_a_promoted_customer_gains_them(
    client: AsyncClient, resources: Resources
) -> None:
    boss = await make_user(resources, role=Role.ADMIN)
    assert (await client.get("/admin/shipments", headers=boss.headers)).status_code == 200
    async with resources.db.write() as conn:
        await conn.execute(
            text("UPDATE customer SET role = 'customer' WHERE id = :id"), {"id": boss.id}
        )
    assert (await client.get("/admin/shipments", headers=boss.headers)).status_code == 403


async def test_an_order_cannot_name_a_customer_that_does_not_exist(
    resources: Resources,
) -> None:
    """The foreign key holds even for a write that bypasses the token check."""
    with pytest.raises(IntegrityError):
        async with resources.db.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO customer_order (customer_id, status, subtotal_cents, tax_cents, "
                    "total_cents, created_at) VALUES (777777, 'placed', 0, 0, 0, now())"
                )
            )


async def test_a_role_change_takes_effect_within_the_stated_bound(
    resources: Resources, alice: User
) -> None:
    bound = 0.3
    accounts = Accounts(resources.db, ttl_s=bound)
    assert await accounts.current_role(alice.id) is Role.CUSTOMER
    async with resources.db.write() as conn:
        await conn.execute(
            text("UPDATE customer SET role = 'admin' WHERE id = :id"), {"id": alice.id}
        )
    # Within the bound the process may still answer from what it read...
    assert await accounts.current_role(alice.id) is Role.CUSTOMER
    await asyncio.sleep(bound + 0.05)
    # ...and after it, never.
    assert await accounts.current_role(alice.id) is Role.ADMIN
    async with resources.db.write() as conn:
        await conn.execute(text("DELETE FROM customer WHERE id = :id"), {"id": alice.id})
    await asyncio.sleep(bound + 0.05)
    assert await accounts.current_role(alice.id) is None


async def test_the_owner_of_a_free_order_sees_its_empty_ledger(
    client: AsyncClient, resources: Resources, alice: User, bob: User
) -> None:
    free = await make_product(resources, price_cents=0)
    order = (await client.post("/orders", headers=alice.headers, json=order_of(free.id))).json()
    mine = await client.get(f"/ledger/orders/{order['id']}", headers=alice.headers)
    assert mine.status_code == 200
    assert mine.json() == []
    theirs = await client.get(f"/ledger/orders/{order['id']}", headers=bob.headers)
    assert theirs.status_code == 404
    unknown = await client.get("/ledger/orders/424242", headers=alice.headers)
    assert unknown.status_code == 404
