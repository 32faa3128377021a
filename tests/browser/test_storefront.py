"""The storefront in a real browser (headless Chromium, JavaScript off), against a served shop on
PostgreSQL: what a visitor, a customer and an admin click through."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    CUSTOMER_EMAIL,
    CUSTOMER_PASSWORD,
    Screenshots,
    Shop,
)


def _api_order(shop: Shop, product_id: int) -> int:
    """An order of the demo customer's, placed through the JSON API."""
    with httpx.Client(base_url=shop.base, timeout=10) as api:
        token = api.post(
            "/auth/token", json={"email": CUSTOMER_EMAIL, "password": CUSTOMER_PASSWORD}
        ).json()["access_token"]
        placed = api.post(
            "/orders",
            headers={"Authorization": f"Bearer {token}"},
            json={"lines": [{"product_id": product_id, "quantity": 1}]},
        )
        assert placed.status_code == 201, placed.text
        order_id: int = placed.json()["id"]
        return order_id


def _in_stock_product(shop: Shop) -> dict[str, Any]:
    items = httpx.get(f"{shop.base}/products?limit=100", timeout=10).json()["items"]
    found: dict[str, Any] = next(p for p in items if p["stock"] >= 5)
    return found


def _sign_up(page: Page, email: str) -> None:
    page.get_by_label("Full name").fill("Grace Hopper")
    page.locator("#sign-up-email").fill(email)
    page.get_by_label("Password (10 characters or more)").fill("compiler-pioneer-1952")
    page.get_by_role("button", name="Create account").click()


def test_a_visitor_browses_searches_signs_up_at_checkout_orders_and_cancels(
    served_shop: Shop, page: Page, shot: Screenshots
) -> None:
    page.goto(served_shop.url("/"))
    expect(page.get_by_role("heading", name="Featured products")).to_be_visible()
    # Each card's link is named by the product; its picture adds nothing a reader needs.
    expect(page.locator(".card img").first).to_have_attribute("alt", "")
    shot("home")

    page.get_by_role("link", name="Browse the catalog").click()
    expect(page).to_have_url(re.compile(r"/shop/products$"))
    wanted = _in_stock_product(served_shop)
    word = wanted["name"].split()[-1]
    page.get_by_label("Search products").fill(word)
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(word)
    shot("search")

    page.get_by_role("link", name=wanted["name"]).first.click()
    expect(page.get_by_role("heading", level=1)).to_have_text(wanted["name"])
    expect(page.get_by_role("img", name=wanted["name"])).to_be_visible()
    expect(page.locator(".badge").first).to_contain_text(re.compile("In stock|left"))
    shot("product")

    page.get_by_label("Quantity").fill("2")
    page.get_by_role("button", name="Add to cart").click()
    expect(page).to_have_url(re.compile(r"/shop/cart$"))
    expect(page.get_by_role("link", name=wanted["name"])).to_be_visible()
    expect(page.get_by_label(f"Quantity of {wanted['name']}")).to_have_value("2")
    shot("cart")

    page.get_by_role("link", name="Check out").click()
    expect(page.get_by_role("heading", name="New here? Create an account")).to_be_visible()
    shot("checkout-sign-up")
    _sign_up(page, f"visitor-{uuid.uuid4().hex[:8]}@example.com")

    # Back at checkout, signed in, with the same cart, now with tax.
    expect(page).to_have_url(re.compile(r"/shop/checkout$"))
    place = page.get_by_role("button", name=re.compile(r"^Place order \(EUR [\d,]+\.\d\d\)$"))
    expect(place).to_be_visible()
    shot("checkout-signed-in")
    place.click()

    expect(page.get_by_role("status")).to_have_text("Thank you: your order is placed.")
    order_url = page.url.split("?")[0]
    order_id = order_url.rsplit("/", 1)[1]
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Order {order_id}")
    expect(page.get_by_role("link", name=wanted["name"])).to_be_visible()
    shot("confirmation")

    page.get_by_role("link", name="My orders", exact=True).click()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Order {order_id}"))
    expect(row).to_contain_text("placed")
    shot("my-orders")

    row.get_by_role("link", name=f"Order {order_id}").click()
    page.get_by_role("button", name="Cancel this order").click()
    expect(page.locator(".facts")).to_contain_text("cancelled")
    expect(page.get_by_role("button", name="Cancel this order")).to_have_count(0)
    shot("cancelled")


def test_a_customer_signs_in_at_checkout_and_the_cart_comes_along(
    served_shop: Shop, page: Page, shot: Screenshots
) -> None:
    wanted = _in_stock_product(served_shop)
    page.goto(served_shop.url(f"/shop/products/{wanted['id']}"))
    page.get_by_role("button", name="Add to cart").click()
    page.get_by_role("link", name="Check out").click()
    page.get_by_label("E-mail").first.fill(CUSTOMER_EMAIL)
    page.locator("#sign-in-password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong e-mail or password.")
    shot("wrong-password")
    page.locator("#sign-in-password").fill(CUSTOMER_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/shop/checkout$"))
    expect(page.get_by_role("link", name=wanted["name"])).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("^Place order"))).to_be_visible()


def test_an_admin_restocks_a_product_and_advances_a_shipment(
    served_shop: Shop, page: Page, shot: Screenshots
) -> None:
    product = _in_stock_product(served_shop)
    order_id = _api_order(served_shop, product["id"])

    page.goto(served_shop.url("/shop/admin/products"))
    expect(page).to_have_url(re.compile(r"/shop/sign-in\?next="))
    page.locator("#sign-in-email").fill(ADMIN_EMAIL)
    page.locator("#sign-in-password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Products", exact=True)).to_be_visible()

    page.get_by_label("Find by name or SKU").fill(product["sku"])
    page.get_by_role("button", name="Find").click()
    page.get_by_role("link", name=product["name"]).click()
    before = int(page.locator("dd.stock").inner_text())
    page.get_by_label("Units to add").fill("7")
    page.get_by_role("button", name="Restock").click()
    expect(page.get_by_role("status")).to_have_text("Saved: the restock.")
    expect(page.locator("dd.stock")).to_have_text(str(before + 7))
    shot("restocked")
    stock = httpx.get(f"{served_shop.base}/products/{product['id']}", timeout=10).json()["stock"]
    assert stock == before + 7

    page.get_by_role("link", name="Shipments").click()
    page.get_by_label("Status").select_option("pending")
    page.get_by_role("button", name="Show").click()
    row = page.get_by_role("row").filter(
        has=page.get_by_role("cell", name=str(order_id), exact=True)
    )
    expect(row).to_contain_text("pending")
    row.get_by_role("button", name=re.compile("^Mark packed")).click()
    expect(page).to_have_url(re.compile(r"/shop/admin/shipments\?status=pending"))
    page.get_by_label("Status").select_option("packed")
    page.get_by_role("button", name="Show").click()
    row = page.get_by_role("row").filter(
        has=page.get_by_role("cell", name=str(order_id), exact=True)
    )
    row.get_by_role("button", name=re.compile("^Mark shipped")).click()
    page.get_by_label("Status").select_option("shipped")
    page.get_by_role("button", name="Show").click()
    row = page.get_by_role("row").filter(
        has=page.get_by_role("cell", name=str(order_id), exact=True)
    )
    expect(row).to_contain_text("shipped")
    shot("shipped")

    page.get_by_role("link", name="Ledger").click()
    expect(page.get_by_role("status")).to_have_text("Debits equal credits: the ledger balances.")


def test_another_customers_order_is_a_friendly_404_page(
    served_shop: Shop, page: Page, shot: Screenshots
) -> None:
    order_id = _api_order(served_shop, _in_stock_product(served_shop)["id"])
    page.goto(served_shop.url("/shop/sign-up"))
    _sign_up(page, f"other-{uuid.uuid4().hex[:8]}@example.com")
    answer = page.goto(served_shop.url(f"/shop/orders/{order_id}"))
    assert answer is not None and answer.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
    expect(page.get_by_role("link", name="Catalog").first).to_be_visible()


def test_a_form_posted_without_its_csrf_token_is_refused(
    served_shop: Shop, page: Page, shot: Screenshots
) -> None:
    product = _in_stock_product(served_shop)
    page.goto(served_shop.url(f"/shop/products/{product['id']}"))
    # The browser's own cookies, as a forged cross-site form would send them, without the field.
    refused = page.request.post(
        served_shop.url("/shop/cart/items"),
        form={"product_id": str(product["id"]), "quantity": "1"},
        max_redirects=0,
    )
    assert refused.status == 403
    assert "did not come from this shop" in refused.text()
    page.goto(served_shop.url("/shop/cart"))
    expect(page.get_by_text("Your cart is empty.")).to_be_visible()
