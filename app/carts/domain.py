"""Cart rules: what a cart holds, how it changes, and how a checkout is recognised.

A cart is a customer's list of (product, quantity), without prices: the catalog prices it
whenever it is read. Its version grows by one with every change and never starts again (not
even across checkouts), so that "cart id + version" names one content forever: it is the
Idempotency-Key under which that content is ordered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from app.kernel.errors import Conflict, ShopError

MAX_ITEMS = 50
"""Distinct products in a cart: an order has at most as many lines."""
MAX_QUANTITY = 10_000
"""Units of one product, as in an order line."""


@dataclass(frozen=True, slots=True)
class Cart:
    """A cart as a store holds it. `items` maps product id to quantity (each 1..MAX_QUANTITY).

    `checked_out_version` / `checked_out_order_id` remember the last checkout, so that a retry
    of it (same version) answers with its order instead of ordering again.
    """

    cart_id: str
    customer_id: int
    version: int = 0
    items: Mapping[int, int] = field(default_factory=dict)
    checked_out_version: int | None = None
    checked_out_order_id: int | None = None
    expires_at: datetime | None = None
    """When the store forgets the cart (None: never stored). Refreshed by every change."""


class CartTooLarge(Conflict):
    def __init__(self) -> None:
        super().__init__(
            f"a cart holds at most {MAX_ITEMS} different products; check out or remove some",
            allowed=MAX_ITEMS,
        )


class CartChanged(Conflict):
    def __init__(self, *, current: int, seen: int) -> None:
        super().__init__(
            f"the cart changed since version {seen} (it is at version {current}); read it "
            "again and check out that version",
            current_version=current,
            requested_version=seen,
        )


class CartEmpty(Conflict):
    def __init__(self) -> None:
        super().__init__("the cart is empty: there is nothing to check out")


class CartBusy(Conflict):
    """A store gave up after its bounded retries of a contended change."""

    def __init__(self, attempts: int) -> None:
        super().__init__(
            f"the cart changed under this request {attempts} times in a row; retry",
            attempts=attempts,
        )


class CartStoreUnavailable(ShopError):
    """The cart store did not answer (unreachable, throttled, timed out): the client may
    retry; answers 503 with Retry-After."""

    status_code = 503
    retry_after_s = 1

    def __init__(self) -> None:
        super().__init__("the cart store is busy or unavailable; retry shortly")


def cart_id_for(customer_id: int) -> str:
    """One cart per customer: its id is derived from the customer's, in both stores."""
    return f"customer-{customer_id}"


def new_cart(customer_id: int) -> Cart:
    return Cart(cart_id=cart_id_for(customer_id), customer_id=customer_id)


def is_expired(cart: Cart, now: datetime) -> bool:
    return cart.expires_at is not None and cart.expires_at <= now


def as_read(cart: Cart, now: datetime) -> Cart:
    """What a reader sees: an expired cart is empty (DynamoDB deletes expired items up to a
    few days late), but keeps its version and last checkout, so no version is reused."""
    return replace(cart, items={}) if is_expired(cart, now) and cart.items else cart


def set_quantity(cart: Cart, *, product_id: int, quantity: int) -> Cart:
    """The cart with `quantity` units of the product (replacing what it had).

    Raises CartTooLarge for a product beyond MAX_ITEMS; quantities are checked by the schema
    (1..MAX_QUANTITY), and again here as a last guard."""
    if not 1 <= quantity <= MAX_QUANTITY:
        raise ValueError(f"quantity must be 1..{MAX_QUANTITY}")
    if product_id not in cart.items and len(cart.items) >= MAX_ITEMS:
        raise CartTooLarge()
    if cart.items.get(product_id) == quantity:
        return cart
    return replace(cart, items={**cart.items, product_id: quantity})


def add_quantities(cart: Cart, *, items: Mapping[int, int], drop_overflow: bool = False) -> Cart:
    """The cart with each product's quantity added to what it holds, at most MAX_QUANTITY.

    Raises CartTooLarge when a new product would go beyond MAX_ITEMS; with `drop_overflow`
    such products are left out instead (a visitor's cart joining the customer's)."""
    held = dict(cart.items)
    for product_id, quantity in items.items():
        if not 1 <= quantity <= MAX_QUANTITY:
            raise ValueError(f"quantity must be 1..{MAX_QUANTITY}")
        if product_id not in held and len(held) >= MAX_ITEMS:
            if drop_overflow:
                continue
            raise CartTooLarge()
        held[product_id] = min(held.get(product_id, 0) + quantity, MAX_QUANTITY)
    return cart if held == cart.items else replace(cart, items=held)


def remove_item(cart: Cart, *, product_id: int) -> Cart:
    """The cart without the product (unchanged when it was not there)."""
    if product_id not in cart.items:
        return cart
    return replace(cart, items={pid: q for pid, q in cart.items.items() if pid != product_id})


def checkout_key(cart: Cart) -> str:
    """The Idempotency-Key that orders this content of the cart: the same for every retry of
    one version, never the same for two versions."""
    return f"{checkout_key_prefix(cart)}{cart.version}"


def checkout_key_prefix(cart: Cart) -> str:
    """What every checkout key of this cart starts with, its version following."""
    return f"cart:{cart.cart_id}:v"


def record_checkout(cart: Cart, *, version: int, order_id: int, ordered: Mapping[int, int]) -> Cart:
    """The cart after the order of its `version` (with the `ordered` lines) was placed.

    The ordered units leave the cart; what a concurrent change added since stays. Recording
    the same checkout twice (a retry, a double click) changes nothing the second time.
    """
    if cart.checked_out_version is not None and cart.checked_out_version >= version:
        return cart
    left = {
        pid: quantity - ordered.get(pid, 0)
        for pid, quantity in cart.items.items()
        if quantity - ordered.get(pid, 0) > 0
    }
    return replace(cart, items=left, checked_out_version=version, checked_out_order_id=order_id)


def tax_cents(subtotal_cents: int, *, tax_rate_bp: int) -> int:
    """The tax an order of this subtotal pays: the orders module's rule (rounded half up to
    the cent, once, on the subtotal), which a unit test keeps equal."""
    return (subtotal_cents * tax_rate_bp + 5_000) // 10_000
