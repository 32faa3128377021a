"""Cart rules, with no database and no DynamoDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.carts.domain import (
    MAX_ITEMS,
    MAX_QUANTITY,
    Cart,
    CartTooLarge,
    add_quantities,
    as_read,
    cart_id_for,
    checkout_key,
    new_cart,
    record_checkout,
    remove_item,
    set_quantity,
    tax_cents,
)
from app.kernel.settings import Settings
from app.orders.domain import price

NOW = datetime(2026, 11, 28, 22, 0, tzinfo=UTC)


def test_a_customer_has_one_cart_whose_id_is_derived_from_theirs() -> None:
    assert cart_id_for(42) == new_cart(42).cart_id == "customer-42"
    assert cart_id_for(42) != cart_id_for(4)


def test_setting_a_quantity_replaces_the_one_before() -> None:
    cart = set_quantity(new_cart(1), product_id=7, quantity=2)
    assert set_quantity(cart, product_id=7, quantity=5).items == {7: 5}


def test_setting_the_same_quantity_again_changes_nothing() -> None:
    cart = set_quantity(new_cart(1), product_id=7, quantity=2)
    assert set_quantity(cart, product_id=7, quantity=2) is cart


@pytest.mark.parametrize("quantity", [0, -1, 10_001])
def test_a_quantity_outside_1_to_10000_is_refused(quantity: int) -> None:
    with pytest.raises(ValueError):
        set_quantity(new_cart(1), product_id=7, quantity=quantity)


def test_a_cart_holds_at_most_max_items_products_but_may_change_them() -> None:
    cart = Cart(cart_id="c", customer_id=1, items={pid: 1 for pid in range(1, MAX_ITEMS + 1)})
    with pytest.raises(CartTooLarge):
        set_quantity(cart, product_id=MAX_ITEMS + 1, quantity=1)
    assert set_quantity(cart, product_id=1, quantity=3).items[1] == 3


def test_removing_a_product_the_cart_does_not_hold_changes_nothing() -> None:
    cart = set_quantity(new_cart(1), product_id=7, quantity=2)
    assert remove_item(cart, product_id=8) is cart
    assert remove_item(cart, product_id=7).items == {}


def test_each_version_of_a_cart_has_its_own_checkout_key() -> None:
    cart = Cart(cart_id="customer-1", customer_id=1, version=3, items={7: 1})
    assert checkout_key(cart) == "cart:customer-1:v3"
    assert checkout_key(Cart(cart_id="customer-1", customer_id=1, version=4)) != checkout_key(cart)


def test_a_checkout_takes_out_what_was_ordered_and_keeps_what_was_added_since() -> None:
    cart = Cart(cart_id="c", customer_id=1, version=5, items={7: 2, 8: 3})
    after = record_checkout(cart, version=4, order_id=99, ordered={7: 2, 8: 1})
    assert after.items == {8: 2}
    assert (after.checked_out_version, after.checked_out_order_id) == (4, 99)


def test_recording_the_same_checkout_twice_changes_nothing_the_second_time() -> None:
    cart = Cart(cart_id="c", customer_id=1, version=4, items={7: 2})
    once = record_checkout(cart, version=4, order_id=99, ordered={7: 2})
    assert record_checkout(once, version=4, order_id=99, ordered={7: 2}) is once


def test_an_expired_cart_reads_empty_but_keeps_its_version() -> None:
    cart = Cart(cart_id="c", customer_id=1, version=9, items={7: 2}, expires_at=NOW)
    assert as_read(cart, NOW - timedelta(seconds=1)).items == {7: 2}
    expired = as_read(cart, NOW)
    assert (expired.items, expired.version) == ({}, 9)


@pytest.mark.parametrize(("subtotal", "rate_bp"), [(999, 2000), (997, 2000), (10, 500), (0, 0)])
def test_a_cart_is_taxed_exactly_as_its_order_will_be(subtotal: int, rate_bp: int) -> None:
    assert (
        tax_cents(subtotal, tax_rate_bp=rate_bp) == price([subtotal], tax_rate_bp=rate_bp).tax_cents
    )


def test_carts_must_outlive_the_idempotency_keys_of_their_checkouts() -> None:
    with pytest.raises(ValueError, match="SHOP_CART_TTL_DAYS"):
        Settings(cart_ttl_days=2, idempotency_ttl_h=48, _env_file=None)  # type: ignore[call-arg]
    assert Settings(cart_ttl_days=3, idempotency_ttl_h=48, _env_file=None).cart_ttl_days == 3  # type: ignore[call-arg]


def test_adding_quantities_adds_to_what_the_cart_holds_up_to_the_most_a_line_takes() -> None:
    cart = set_quantity(new_cart(1), product_id=7, quantity=2)
    added = add_quantities(cart, items={7: 3, 8: 1})
    assert added.items == {7: 5, 8: 1}
    assert add_quantities(added, items={7: MAX_QUANTITY}).items[7] == MAX_QUANTITY


def test_adding_to_a_full_cart_refuses_a_new_product_or_leaves_it_out_when_asked() -> None:
    full = new_cart(1)
    for product_id in range(1, MAX_ITEMS + 1):
        full = set_quantity(full, product_id=product_id, quantity=1)
    with pytest.raises(CartTooLarge):
        add_quantities(full, items={1: 1, 999: 1})
    merged = add_quantities(full, items={1: 1, 999: 1}, drop_overflow=True)
    assert merged.items[1] == 2 and 999 not in merged.items
