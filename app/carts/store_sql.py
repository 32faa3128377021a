"""Carts in the shop's own database (PostgreSQL at stages 1-4, SQLite when embedded).

A change is one transaction holding the cart's row lock (SELECT ... FOR UPDATE; SQLite's write
transaction locks the whole file), so concurrent changes of one cart queue and each sees the
other's result. The cart row is created on first change and kept: its version never restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.adapters.db import Database, insert_or_ignore
from app.carts.domain import Cart, as_read, cart_id_for, new_cart
from app.carts.models import CartItemRow, CartRow
from app.kernel.models import utcnow

_CART = select(
    CartRow.cart_id,
    CartRow.customer_id,
    CartRow.version,
    CartRow.checked_out_version,
    CartRow.checked_out_order_id,
    CartRow.expires_at,
).where(CartRow.cart_id == bindparam("cart_id"))
_ITEMS = select(CartItemRow.product_id, CartItemRow.quantity).where(
    CartItemRow.cart_id == bindparam("cart_id")
)


def _cart(row: Mapping[Any, Any] | None, items: Sequence[Any], customer_id: int) -> Cart:
    if row is None:
        return new_cart(customer_id)
    return Cart(
        cart_id=row["cart_id"],
        customer_id=row["customer_id"],
        version=row["version"],
        items={item.product_id: item.quantity for item in items},
        checked_out_version=row["checked_out_version"],
        checked_out_order_id=row["checked_out_order_id"],
        expires_at=row["expires_at"],
    )


class SqlCartStore:
    def __init__(self, db: Database, *, ttl: timedelta) -> None:
        self.db = db
        self.ttl = ttl

    async def _load(self, conn: AsyncConnection, customer_id: int, *, lock: bool) -> Cart:
        params = {"cart_id": cart_id_for(customer_id)}
        stmt = _CART.with_for_update() if lock else _CART
        row = (await conn.execute(stmt, params)).mappings().one_or_none()
        items = (await conn.execute(_ITEMS, params)).all() if row is not None else []
        return as_read(_cart(row, items, customer_id), utcnow())

    async def get(self, customer_id: int, *, consistent: bool = False) -> Cart:
        if consistent:
            async with self.db.primary.connect() as conn:
                return await self._load(conn, customer_id, lock=False)
        async with self.db.read() as conn:
            return await self._load(conn, customer_id, lock=False)

    async def change(self, customer_id: int, mutate: Callable[[Cart], Cart]) -> Cart:
        cart_id = cart_id_for(customer_id)
        now = utcnow()
        async with self.db.write() as conn:
            # The row to lock must exist: a first change creates it, already expired (empty).
            await insert_or_ignore(
                conn,
                CartRow.__table__,  # type: ignore[arg-type]
                {
                    "cart_id": cart_id,
                    "customer_id": customer_id,
                    "version": 0,
                    "updated_at": now,
                    "expires_at": now,
                },
            )
            current = await self._load(conn, customer_id, lock=True)
            changed = mutate(current)
            if changed == current:
                return current
            stored = replace(changed, version=current.version + 1, expires_at=now + self.ttl)
            await conn.execute(
                update(CartRow)
                .where(CartRow.cart_id == cart_id)
                .values(
                    version=stored.version,
                    checked_out_version=stored.checked_out_version,
                    checked_out_order_id=stored.checked_out_order_id,
                    updated_at=now,
                    expires_at=stored.expires_at,
                )
            )
            # Carts are small (at most MAX_ITEMS lines): rewrite the lines whole.
            await conn.execute(delete(CartItemRow).where(CartItemRow.cart_id == cart_id))
            if stored.items:
                await conn.execute(
                    insert(CartItemRow),
                    [
                        {"cart_id": cart_id, "product_id": pid, "quantity": quantity}
                        for pid, quantity in stored.items.items()
                    ],
                )
        return stored
