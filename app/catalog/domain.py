"""Catalog rules: what a stock level may become, and what a shortage reports."""

from __future__ import annotations

from app.core.errors import Conflict

MAX_STOCK = 1_000_000_000


class OutOfStock(Conflict):
    def __init__(self, *, product_id: int, requested: int, available: int) -> None:
        super().__init__(
            f"product {product_id}: {requested} requested, {available} in stock",
            product_id=product_id,
            requested=requested,
            available=available,
        )


class StockLimit(Conflict):
    def __init__(self, *, product_id: int, current: int, adding: int) -> None:
        super().__init__(
            f"product {product_id}: restocking {adding} would exceed {MAX_STOCK} (now {current})",
            product_id=product_id,
            current=current,
            max_stock=MAX_STOCK,
        )


def normalise_sku(sku: str) -> str:
    """SKUs compare case-insensitively: 'ab-1' and 'AB-1' are one product."""
    return sku.strip().upper()


def reservation_order(lines: dict[int, int]) -> list[tuple[int, int]]:
    """Lines sorted by product id: every transaction locks stock rows in one order, so two
    orders for the same products can never deadlock."""
    return sorted(lines.items())


class ReservedItem:
    """What a reservation tells the caller about one line: the price to charge."""

    __slots__ = ("name", "product_id", "quantity", "sku", "unit_price_cents")

    def __init__(
        self, *, product_id: int, sku: str, name: str, unit_price_cents: int, quantity: int
    ) -> None:
        self.product_id = product_id
        self.sku = sku
        self.name = name
        self.unit_price_cents = unit_price_cents
        self.quantity = quantity
