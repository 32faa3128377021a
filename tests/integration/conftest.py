"""Integration fixtures: every test starts from empty tables on the real PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.adapters.resources import Resources
from app.catalog import service as catalog
from app.catalog.schemas import ProductCreate, ProductRead
from app.customers import service as customers
from app.customers.schemas import SignUp
from app.kernel.security import Principal, Role

TABLES = (
    "cart_item, cart, shipment_event, shipment, ledger_entry, order_line, customer_order, "
    "idempotency_key, stock_level, product, customer, outbox_event, processed_event"
)
_numbers = itertools.count(1)


@pytest.fixture(autouse=True)
async def empty_tables(resources: Resources) -> None:
    async with resources.db.write() as conn:
        await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    # Ids start again at 1: what the cache remembers of product 1 is another product now.
    await catalog.catalog_changed(resources.cache)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:
        yield c


@dataclass
class User:
    id: int
    email: str
    headers: dict[str, str]


async def make_user(resources: Resources, *, role: Role = Role.CUSTOMER, **overrides: Any) -> User:
    """An account and a token for it (password 'correct-horse-42')."""
    n = next(_numbers)
    data = SignUp(
        email=overrides.get("email", f"user{n}@example.com"),
        password=overrides.get("password", "correct-horse-42"),
        full_name=overrides.get("full_name", f"User {n}"),
    )
    created = await customers.sign_up(resources.db, resources.passwords, data=data, role=role)
    token, _ = resources.tokens.issue(Principal(customer_id=created.id, role=role))
    return User(id=created.id, email=created.email, headers={"Authorization": f"Bearer {token}"})


async def make_product(resources: Resources, **overrides: Any) -> ProductRead:
    n = next(_numbers)
    values: dict[str, Any] = {
        "sku": f"SKU-{n}",
        "name": f"Product {n}",
        "price_cents": 1000,
        "initial_stock": 10,
    }
    values.update(overrides)
    return await catalog.create_product(
        resources.db, data=ProductCreate(**values), cache=resources.cache
    )


@pytest.fixture
async def alice(resources: Resources) -> User:
    return await make_user(resources, email="alice@example.com")


@pytest.fixture
async def bob(resources: Resources) -> User:
    return await make_user(resources, email="bob@example.com")


@pytest.fixture
async def admin(resources: Resources) -> User:
    return await make_user(resources, role=Role.ADMIN, email="admin@example.com")


async def snapshot(resources: Resources) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: to assert that a failed request left no trace."""
    result: dict[str, list[tuple[Any, ...]]] = {}
    async with resources.db.read() as conn:
        for table in TABLES.split(", "):
            rows = await conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))
            result[table] = [tuple(r) for r in rows]
    return result
