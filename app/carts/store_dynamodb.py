"""Carts in DynamoDB (stage 5, SHOP_CARTS_TABLE): one item per cart, keyed by `cart_id`.

The table is the one infra/shop_infra/constructs/edge.py defines: partition key `cart_id`
(string), time to live on `expires_at` (epoch seconds). An item holds the whole cart:
`customer_id`, `version`, `items` (a map of product id to quantity), the last checkout, and
`expires_at`. Every write is conditional on the version it read (or on the item not existing),
so of two concurrent changes one fails its condition, reads the other's result and applies
itself again: both land. The retries are bounded (CartBusy after MAX_ATTEMPTS).

The table's calls, their threads and their deadlines are app/adapters/dynamodb.py's; this module
owns the item's shape and the retries. A read that has not answered within READ_DEADLINE_S
answers 503 (CartStoreUnavailable), as does DynamoDB throttling or being unreachable.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from app.adapters.dynamodb import READ_DEADLINE_S, Unavailable, VersionedTable
from app.carts.domain import (
    Cart,
    CartBusy,
    CartStoreUnavailable,
    as_read,
    cart_id_for,
    new_cart,
)
from app.kernel.models import utcnow

T = TypeVar("T")
MAX_ATTEMPTS = 8
KEY = "cart_id"
"""The table's partition key (infra/shop_infra/constructs/edge.py)."""


@contextmanager
def _unavailable_as_503() -> Iterator[None]:
    try:
        yield
    except Unavailable as exc:
        raise CartStoreUnavailable() from exc


def _to_item(cart: Cart) -> dict[str, Any]:
    assert cart.expires_at is not None
    item: dict[str, Any] = {
        KEY: {"S": cart.cart_id},
        "customer_id": {"N": str(cart.customer_id)},
        "version": {"N": str(cart.version)},
        "items": {"M": {str(pid): {"N": str(q)} for pid, q in cart.items.items()}},
        "expires_at": {"N": str(int(cart.expires_at.timestamp()))},
    }
    if cart.checked_out_version is not None and cart.checked_out_order_id is not None:
        item["checked_out_version"] = {"N": str(cart.checked_out_version)}
        item["checked_out_order_id"] = {"N": str(cart.checked_out_order_id)}
    return item


def _from_item(item: dict[str, Any] | None, customer_id: int) -> Cart:
    if item is None:
        return new_cart(customer_id)
    checked_out_version = item.get("checked_out_version", {}).get("N")
    checked_out_order_id = item.get("checked_out_order_id", {}).get("N")
    return Cart(
        cart_id=item[KEY]["S"],
        customer_id=int(item["customer_id"]["N"]),
        version=int(item["version"]["N"]),
        items={int(pid): int(q["N"]) for pid, q in item.get("items", {}).get("M", {}).items()},
        checked_out_version=int(checked_out_version) if checked_out_version else None,
        checked_out_order_id=int(checked_out_order_id) if checked_out_order_id else None,
        expires_at=datetime.fromtimestamp(int(item["expires_at"]["N"]), UTC),
    )


class DynamoCartStore:
    def __init__(self, items: VersionedTable, *, ttl: timedelta) -> None:
        self.items = items
        self.ttl = ttl

    async def _call(self, work: Callable[[], T], *, deadline_s: float | None = None) -> T:
        """Run a blocking call of the table's; DynamoDB not answering (in the call, or past
        the deadline) is CartStoreUnavailable."""
        with _unavailable_as_503():
            return await self.items.run(work, deadline_s=deadline_s)

    def _read(self, customer_id: int) -> tuple[Cart, bool]:
        """The cart and whether an item exists for it (blocking)."""
        item = self.items.get(cart_id_for(customer_id))
        return as_read(_from_item(item, customer_id), utcnow()), item is not None

    async def get(self, customer_id: int, *, consistent: bool = False) -> Cart:
        # Always a strongly consistent read: a customer who just added an item and looks at
        # the cart must see it (an eventually consistent read may not, and saves little here).
        cart, _ = await self._read_soon(customer_id)
        return cart

    async def _read_soon(self, customer_id: int) -> tuple[Cart, bool]:
        return await self._call(partial(self._read, customer_id), deadline_s=READ_DEADLINE_S)

    def _put(self, stored: Cart, *, exists: bool, expected_version: int) -> bool:
        """Write the cart if nobody wrote since it was read; False when somebody did."""
        return self.items.put(
            _to_item(stored), expected_version=expected_version if exists else None
        )

    async def change(self, customer_id: int, mutate: Callable[[Cart], Cart]) -> Cart:
        for attempt in range(MAX_ATTEMPTS):
            current, exists = await self._read_soon(customer_id)
            changed = mutate(current)
            if changed == current:
                return current
            stored = replace(changed, version=current.version + 1, expires_at=utcnow() + self.ttl)
            written = await self._call(
                partial(self._put, stored, exists=exists, expected_version=current.version)
            )
            if written:
                return stored
            # Someone else changed the cart in between: back off a little, read it again.
            await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise CartBusy(MAX_ATTEMPTS)
