"""The one interface both cart stores implement (the shop's database, DynamoDB), and the
choice of one.

A store keeps carts whole: `change` reads a cart, applies a pure function of the domain to it and
writes the result with the next version, atomically per cart, so that two concurrent changes to
one cart both land (PostgreSQL: a row lock; DynamoDB: a conditional write on the version,
retried a bounded number of times).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

from app.adapters.resources import Resources
from app.carts.domain import Cart
from app.carts.store_dynamodb import DynamoCartStore
from app.carts.store_sql import SqlCartStore


class CartStore(Protocol):
    async def get(self, customer_id: int, *, consistent: bool = False) -> Cart:
        """The customer's cart (a new, empty one when there is none, or it expired).
        `consistent`: from the primary / a strongly consistent read, as a checkout needs."""
        ...

    async def change(self, customer_id: int, mutate: Callable[[Cart], Cart]) -> Cart:
        """Apply `mutate` to the current cart and store the result at the next version (and a
        new expiry); returns the stored cart. When `mutate` returns its argument unchanged,
        nothing is written. Whatever `mutate` raises propagates, with nothing written.
        Raises CartBusy when concurrent changes keep winning (DynamoDB only)."""
        ...


def store_for(resources: Resources) -> CartStore:
    """DynamoDB when SHOP_CARTS_TABLE is set (and the lifespan made its client), else the
    shop's database."""
    settings = resources.settings
    ttl = timedelta(days=settings.cart_ttl_days)
    if resources.carts_table is not None:
        return DynamoCartStore(resources.carts_table, ttl=ttl)
    return SqlCartStore(resources.db, ttl=ttl)
