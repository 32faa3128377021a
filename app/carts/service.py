"""The carts module's public API: a customer's cart, priced by the catalog when read, and its
checkout through the orders service.

The cart itself lives in a CartStore (app/carts/store.py): the shop's database, or DynamoDB when
SHOP_CARTS_TABLE is set. Prices and stock are never stored in a cart; they are the catalog's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from app.adapters.db import Database, Databases
from app.adapters.mail import Mailer
from app.adapters.outbox import Relay
from app.carts.domain import (
    Cart,
    CartChanged,
    CartEmpty,
    add_quantities,
    checkout_key,
    checkout_key_prefix,
    record_checkout,
    remove_item,
    set_quantity,
    tax_cents,
)
from app.carts.schemas import CartLineRead, CartRead
from app.carts.store import CartStore
from app.catalog import service as catalog
from app.kernel.errors import Conflict, NotFound
from app.kernel.security import Principal, Role
from app.orders import service as orders
from app.orders.schemas import OrderCreate

log = logging.getLogger("shop.carts")


@dataclass(frozen=True, slots=True)
class CheckoutResult:
    """The answer to POST /cart/checkout: the order, as placed or (replayed) as first placed."""

    status_code: int
    body: dict[str, Any]
    replayed: bool


async def _priced(db: Database, cart: Cart, *, tax_rate_bp: int) -> CartRead:
    lines: list[CartLineRead] = []
    for product_id, quantity in sorted(cart.items.items()):
        try:
            product = await catalog.get_product(db, product_id=product_id)
        except NotFound:
            lines.append(
                CartLineRead(
                    product_id=product_id,
                    quantity=quantity,
                    sku=None,
                    name=None,
                    unit_price_cents=None,
                    line_total_cents=0,
                    in_stock=0,
                    problem="no longer sold; remove it from the cart",
                )
            )
            continue
        short = product.stock < quantity
        lines.append(
            CartLineRead(
                product_id=product_id,
                quantity=quantity,
                sku=product.sku,
                name=product.name,
                unit_price_cents=product.price_cents,
                line_total_cents=product.price_cents * quantity,
                in_stock=product.stock,
                problem=f"only {product.stock} in stock" if short else None,
            )
        )
    subtotal = sum(line.line_total_cents for line in lines)
    tax = tax_cents(subtotal, tax_rate_bp=tax_rate_bp)
    return CartRead(
        cart_id=cart.cart_id,
        version=cart.version,
        lines=lines,
        subtotal_cents=subtotal,
        tax_cents=tax,
        total_cents=subtotal + tax,
    )


async def get_cart(
    store: CartStore, db: Database, *, customer_id: int, tax_rate_bp: int
) -> CartRead:
    """The customer's cart at today's prices (an empty one when there is none)."""
    return await _priced(db, await store.get(customer_id), tax_rate_bp=tax_rate_bp)


async def set_item(
    store: CartStore,
    db: Database,
    *,
    customer_id: int,
    product_id: int,
    quantity: int,
    tax_rate_bp: int,
) -> CartRead:
    """Hold `quantity` units of a product; raises NotFound (unknown product) or CartTooLarge.
    Stock is not taken: checkout does that."""
    await catalog.get_product(db, product_id=product_id)
    cart = await store.change(
        customer_id, lambda c: set_quantity(c, product_id=product_id, quantity=quantity)
    )
    return await _priced(db, cart, tax_rate_bp=tax_rate_bp)


async def add_items(
    store: CartStore,
    db: Database,
    *,
    customer_id: int,
    items: Mapping[int, int],
    tax_rate_bp: int,
    skip_unavailable: bool = False,
) -> CartRead:
    """Add quantities to what the cart holds (each line at most MAX_QUANTITY), in one atomic
    change of the store: two adds at the same moment both count.

    Raises NotFound (an unknown product) or CartTooLarge. With `skip_unavailable` (a visitor's
    cart joining the customer's on sign-in) such products are left out instead, and the rest
    is still added."""
    known: dict[int, int] = {}
    for product_id, quantity in items.items():
        try:
            await catalog.get_product(db, product_id=product_id)
        except NotFound:
            if not skip_unavailable:
                raise
        else:
            known[product_id] = quantity
    cart = await store.change(
        customer_id,
        lambda c: add_quantities(c, items=known, drop_overflow=skip_unavailable),
    )
    return await _priced(db, cart, tax_rate_bp=tax_rate_bp)


async def remove(
    store: CartStore, db: Database, *, customer_id: int, product_id: int, tax_rate_bp: int
) -> CartRead:
    """Take a product out of the cart; raises NotFound when the cart does not hold it."""

    def without(cart: Cart) -> Cart:
        if product_id not in cart.items:
            raise NotFound("cart item", product_id)
        return remove_item(cart, product_id=product_id)

    cart = await store.change(customer_id, without)
    return await _priced(db, cart, tax_rate_bp=tax_rate_bp)


async def checkout(
    store: CartStore,
    dbs: Databases,
    *,
    customer_id: int,
    version: int,
    tax_rate_bp: int,
    idempotency_ttl: timedelta,
    hold: timedelta = orders.RESERVATION_EXPIRES,
    relay: Relay | None = None,
    mailer: Mailer | None = None,
) -> CheckoutResult:
    """Order the cart as it was at `version`, through orders.place_order (stock, ledger and
    shipment, all or nothing), under the Idempotency-Key "cart:<cart_id>:v<version>"; then
    take the ordered units out of the cart. `relay` and `mailer` finish the order as POST
    /orders does (through the queue at stage 7, in the request otherwise).

    A retry of a checkout that succeeded answers its order (replayed) and orders nothing. Raises
    CartChanged (the cart moved past `version`), CartEmpty, OutOfStock, or Conflict naming a
    product that is no longer sold; in each case the cart is left as it was.
    """
    cart = await store.get(customer_id, consistent=True)
    if cart.checked_out_version == version and cart.checked_out_order_id is not None:
        order = await orders.get_order(
            dbs,
            order_id=cart.checked_out_order_id,
            principal=Principal(customer_id=customer_id, role=Role.CUSTOMER),
            # A retry whose first answer was lost carries no read-after token: a replica
            # within its lag may not have the order the cart names yet.
            consistent=True,
        )
        return CheckoutResult(201, order.model_dump(mode="json"), replayed=True)
    cart, recovered = await _record_lost_checkouts(
        store, dbs, cart, customer_id=customer_id, ttl=idempotency_ttl
    )
    if version in recovered:
        return CheckoutResult(201, recovered[version], replayed=True)
    if recovered or cart.version != version:
        raise CartChanged(current=cart.version, seen=version)
    if not cart.items:
        raise CartEmpty()
    data = OrderCreate.model_validate(
        {"lines": [{"product_id": p, "quantity": q} for p, q in sorted(cart.items.items())]}
    )
    try:
        placed = await orders.place_order(
            dbs,
            customer_id=customer_id,
            data=data,
            tax_rate_bp=tax_rate_bp,
            idempotency_key=checkout_key(cart),
            idempotency_ttl=idempotency_ttl,
            hold=hold,
            relay=relay,
            mailer=mailer,
        )
    except NotFound as exc:
        product_id = exc.extra.get("id")
        raise Conflict(
            f"product {product_id} is no longer sold; remove it from the cart and check out again",
            product_id=product_id,
        ) from exc
    order_id: int = placed.body["id"]
    ordered = dict(cart.items)
    try:
        await store.change(
            customer_id,
            lambda c: record_checkout(c, version=version, order_id=order_id, ordered=ordered),
        )
    except Exception as exc:
        # The order is committed: the answer must name it. The cart still holds the ordered
        # units until the next checkout finds this one by its key (_record_lost_checkouts).
        log.warning(
            "order %s placed from cart %s v%s, not yet recorded on the cart: %s",
            order_id,
            cart.cart_id,
            version,
            exc,
        )
    return CheckoutResult(placed.status_code, placed.body, replayed=placed.replayed)


async def _record_lost_checkouts(
    store: CartStore, dbs: Databases, cart: Cart, *, customer_id: int, ttl: timedelta
) -> tuple[Cart, dict[int, dict[str, Any]]]:
    """Checkouts of this cart whose order was placed but never recorded on the cart (its store
    failed after the order's commit), found by their Idempotency-Keys and recorded now, so that
    their units are not ordered a second time. Returns the cart and those orders by version."""
    prefix = checkout_key_prefix(cart)
    answers = await orders.answered_keys(dbs, customer_id=customer_id, prefix=prefix, ttl=ttl)
    done = cart.checked_out_version or 0
    lost: dict[int, dict[str, Any]] = {}
    for key, body in answers.items():
        tail = key[len(prefix) :]
        if tail.isdigit() and done < int(tail) <= cart.version:
            lost[int(tail)] = body
    for lost_version, body in sorted(lost.items()):
        cart = await store.change(customer_id, _recording(lost_version, body))
    return cart, lost


def _recording(version: int, order: Mapping[str, Any]) -> Callable[[Cart], Cart]:
    ordered = {int(line["product_id"]): int(line["quantity"]) for line in order["lines"]}
    return lambda c: record_checkout(c, version=version, order_id=int(order["id"]), ordered=ordered)
