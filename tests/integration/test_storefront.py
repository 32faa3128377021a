"""The storefront's pages over HTTP: the same access rules as the API, CSRF on every form,
cookie flags, caching, and friendly error pages with the API's status codes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import text

from app.adapters.resources import Resources
from app.catalog import service as catalog
from app.customers import service as customers
from app.kernel.security import Principal, Role
from app.seed import placeholder_png
from app.storefront.sessions import CSRF, SESSION, parse_cart
from tests.integration.conftest import User, make_product, make_user
from tests.integration.test_cache_headers import local_assets as local_assets  # a fixture

HTML = "text/html; charset=utf-8"


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None, "the page has no form"
    return found.group(1)


async def signed_in(
    client: httpx.AsyncClient, user: User, password: str = "correct-horse-42"
) -> None:
    form = await client.get("/shop/sign-in")
    answer = await client.post(
        "/shop/sign-in",
        data={"csrf_token": csrf_of(form), "email": user.email, "password": password},
    )
    assert answer.status_code == 303, answer.text


async def test_the_home_page_shows_featured_products_and_the_docs_stay_at_docs(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    await make_product(resources, name="Oak Desk Lamp", price_cents=4990)
    home = await client.get("/")
    assert home.status_code == 200
    assert home.headers["content-type"] == HTML
    assert "Oak Desk Lamp" in home.text and "EUR 49.90" in home.text
    assert (await client.get("/docs")).status_code == 200


async def test_pages_link_their_stylesheet_under_its_fingerprinted_name(
    client: httpx.AsyncClient,
) -> None:
    home = await client.get("/")
    found = re.search(r'<link rel="stylesheet" href="([^"]+)"', home.text)
    assert found is not None
    assert re.fullmatch(r"/static/css/storefront\.[0-9a-f]{12}\.css", found.group(1))
    css = await client.get(found.group(1))
    assert css.status_code == 200 and "immutable" in css.headers["cache-control"]


async def test_anonymous_catalog_pages_are_public_and_everything_personal_is_private(
    client: httpx.AsyncClient, resources: Resources, alice: User
) -> None:
    product = await make_product(resources)
    for path in ("/", "/shop/products?q=Product"):
        page = await client.get(path)
        assert page.headers["cache-control"].startswith("public, max-age=")
        assert page.headers["vary"] == "Cookie"
        assert "set-cookie" not in page.headers
    # A page with a form sets the CSRF cookie: it is the visitor's own.
    assert (await client.get(f"/shop/products/{product.id}")).headers[
        "cache-control"
    ] == "private, no-store"
    await signed_in(client, alice)
    for path in ("/", "/shop/products", "/shop/cart", "/shop/orders"):
        assert (await client.get(path)).headers["cache-control"] == "private, no-store", path


async def test_session_cookies_are_http_only_and_same_site_lax(
    client: httpx.AsyncClient, alice: User
) -> None:
    form = await client.get("/shop/sign-in")
    cookie = form.headers["set-cookie"].lower()
    assert cookie.startswith(f"{CSRF}=") and "httponly" in cookie and "samesite=lax" in cookie
    answer = await client.post(
        "/shop/sign-in",
        data={"csrf_token": csrf_of(form), "email": alice.email, "password": "correct-horse-42"},
    )
    session = next(c for c in answer.headers.get_list("set-cookie") if c.startswith(SESSION))
    assert "httponly" in session.lower() and "samesite=lax" in session.lower()
    assert "secure" not in session.lower()  # a test shop is served over plain HTTP


async def test_cookies_are_secure_when_the_request_came_over_https(app: Any, alice: User) -> None:
    """The scheme decides, not SHOP_ENV: a stage without a domain serves plain HTTP, where a
    browser would drop a Secure cookie (the browser test checks it as a browser does)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://shop.test") as https:
        form = await https.get("/shop/sign-in")
        answer = await https.post(
            "/shop/sign-in",
            data={
                "csrf_token": csrf_of(form),
                "email": alice.email,
                "password": "correct-horse-42",
            },
        )
    assert answer.status_code == 303, answer.text
    cookies = answer.headers.get_list("set-cookie")
    assert any(c.startswith(f"{SESSION}=") for c in cookies)
    assert all("; secure" in c.lower() for c in cookies), cookies


async def test_a_form_without_its_csrf_token_is_refused_with_a_page(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    product = await make_product(resources)
    page = await client.get(f"/shop/products/{product.id}")
    for data in (
        {"product_id": str(product.id), "quantity": "1"},
        {"product_id": str(product.id), "quantity": "1", "csrf_token": "forged"},
    ):
        refused = await client.post("/shop/cart/items", data=data)
        assert refused.status_code == 403
        assert refused.headers["content-type"] == HTML
        assert "did not come from this shop" in refused.text
    assert parse_cart(client.cookies.get("shop_cart")) == {}
    added = await client.post(
        "/shop/cart/items",
        data={"product_id": str(product.id), "quantity": "2", "csrf_token": csrf_of(page)},
    )
    assert added.status_code == 303 and added.headers["location"] == "/shop/cart"
    assert parse_cart(client.cookies.get("shop_cart")) == {product.id: 2}


async def test_a_token_from_another_browser_is_refused(
    app: Any, client: httpx.AsyncClient, resources: Resources
) -> None:
    product = await make_product(resources)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as other:
        theirs = csrf_of(await other.get(f"/shop/products/{product.id}"))
    await client.get(f"/shop/products/{product.id}")
    refused = await client.post(
        "/shop/cart/items",
        data={"product_id": str(product.id), "quantity": "1", "csrf_token": theirs},
    )
    assert refused.status_code == 403


async def test_a_visitor_checks_out_after_signing_up_and_sees_the_order_at_once(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    product = await make_product(resources, name="Wool Blanket", price_cents=1000, initial_stock=5)
    page = await client.get(f"/shop/products/{product.id}")
    token = csrf_of(page)
    await client.post(
        "/shop/cart/items",
        data={"product_id": str(product.id), "quantity": "2", "csrf_token": token},
    )
    checkout = await client.get("/shop/checkout")
    assert "Create account" in checkout.text and "Wool Blanket" in checkout.text
    joined = await client.post(
        "/shop/sign-up",
        data={
            "csrf_token": csrf_of(checkout),
            "email": "new@example.com",
            "password": "a-long-passphrase",
            "full_name": "New Customer",
            "next": "/shop/checkout",
        },
    )
    assert joined.status_code == 303 and joined.headers["location"] == "/shop/checkout"
    # The visitor's cart is now the customer's, and the cookie cart is gone.
    assert parse_cart(client.cookies.get("shop_cart")) == {}
    ready = await client.get("/shop/checkout")
    assert "Place order (EUR 24.00)" in ready.text
    version = re.search(r'name="version" value="(\d+)"', ready.text)
    assert version is not None
    placed = await client.post(
        "/shop/checkout", data={"csrf_token": csrf_of(ready), "version": version.group(1)}
    )
    assert placed.status_code == 303
    order_url = placed.headers["location"]
    assert re.fullmatch(r"/shop/orders/\d+\?placed=1", order_url)
    order = await client.get(order_url)
    assert "Thank you" in order.text and "Wool Blanket" in order.text
    listing = await client.get("/shop/orders")
    assert order_url.split("?")[0] in listing.text
    cancelled = await client.post(
        order_url.split("?")[0] + "/cancel", data={"csrf_token": csrf_of(order)}
    )
    assert cancelled.status_code == 303
    again = await client.get(cancelled.headers["location"])
    assert "status-cancelled" in again.text and "Cancel this order" not in again.text
    stock = await client.get(f"/products/{product.id}")
    assert stock.json()["stock"] == 5


async def test_another_customers_order_is_a_404_page(
    client: httpx.AsyncClient, resources: Resources, alice: User, bob: User
) -> None:
    product = await make_product(resources)
    placed = await client.post(
        "/orders",
        headers=alice.headers,
        json={"lines": [{"product_id": product.id, "quantity": 1}]},
    )
    order_id = placed.json()["id"]
    anonymous = await client.get(f"/shop/orders/{order_id}")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == f"/shop/sign-in?next=/shop/orders/{order_id}"
    await signed_in(client, bob)
    page = await client.get(f"/shop/orders/{order_id}")
    assert page.status_code == 404 and page.headers["content-type"] == HTML
    assert "Not found" in page.text
    form = await client.get("/shop/orders")
    refused = await client.post(
        f"/shop/orders/{order_id}/cancel", data={"csrf_token": csrf_of(form)}
    )
    assert refused.status_code == 404
    assert (await client.get(f"/orders/{order_id}", headers=alice.headers)).json()[
        "status"
    ] == "placed"


async def test_admin_pages_are_403_to_customers_and_work_for_admins(
    client: httpx.AsyncClient, resources: Resources, alice: User, admin: User
) -> None:
    product = await make_product(resources, initial_stock=3)
    assert (await client.get("/shop/admin/products")).status_code == 303
    await signed_in(client, alice)
    refused = await client.get("/shop/admin/products")
    assert refused.status_code == 403 and "Not allowed" in refused.text
    form = await client.get("/shop/orders")
    assert (
        await client.post(
            f"/shop/admin/products/{product.id}/restock",
            data={"csrf_token": csrf_of(form), "quantity": "5"},
        )
    ).status_code == 403
    await client.post("/shop/sign-out", data={"csrf_token": csrf_of(form)})
    await signed_in(client, admin)
    page = await client.get(f"/shop/admin/products/{product.id}")
    restocked = await client.post(
        f"/shop/admin/products/{product.id}/restock",
        data={"csrf_token": csrf_of(page), "quantity": "5"},
    )
    assert restocked.status_code == 303
    assert (await client.get(f"/products/{product.id}")).json()["stock"] == 8
    ledger = await client.get("/shop/admin/ledger")
    assert ledger.status_code == 200 and "the ledger balances" in ledger.text


async def test_an_admin_advances_a_shipment_and_a_wrong_move_is_a_409_page(
    client: httpx.AsyncClient, resources: Resources, alice: User, admin: User
) -> None:
    product = await make_product(resources)
    placed = await client.post(
        "/orders",
        headers=alice.headers,
        json={"lines": [{"product_id": product.id, "quantity": 1}]},
    )
    shipment = (
        await client.get(f"/orders/{placed.json()['id']}/shipment", headers=alice.headers)
    ).json()
    await signed_in(client, admin)
    page = await client.get("/shop/admin/shipments")
    assert "Mark packed" in page.text
    moved = await client.post(
        f"/shop/admin/shipments/{shipment['id']}/advance",
        data={"csrf_token": csrf_of(page), "to": "packed"},
    )
    assert moved.status_code == 303
    assert "shipment-packed" in (await client.get(moved.headers["location"])).text
    wrong = await client.post(
        f"/shop/admin/shipments/{shipment['id']}/advance",
        data={"csrf_token": csrf_of(page), "to": "delivered"},
    )
    assert wrong.status_code == 409 and wrong.headers["content-type"] == HTML
    assert "cannot go from" in wrong.text


async def test_errors_are_pages_on_the_storefront_and_json_on_the_api(
    client: httpx.AsyncClient,
) -> None:
    for path, status in (
        ("/shop/products/999999", 404),
        ("/shop/no-such-page", 404),
        ("/shop/products?page=0", 422),
        ("/shop/products/abc", 422),
    ):
        page = await client.get(path)
        assert page.status_code == status, path
        assert page.headers["content-type"] == HTML, path
        assert "<h1>" in page.text and "Traceback" not in page.text
    for path, status in (
        ("/products/999999", 404),
        ("/no-such-route", 404),
        ("/products/abc", 422),
    ):
        answer = await client.get(path)
        assert answer.status_code == status, path
        assert answer.headers["content-type"] == "application/json", path


async def test_bad_form_input_gets_a_reason_never_a_500(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    product = await make_product(resources)
    token = csrf_of(await client.get(f"/shop/products/{product.id}"))
    for data in (
        {"product_id": "abc", "quantity": "1"},
        {"product_id": str(product.id), "quantity": "0"},
        {"product_id": str(product.id), "quantity": "99999999999999999999"},
        {"product_id": "999999", "quantity": "1"},
    ):
        answer = await client.post("/shop/cart/items", data={**data, "csrf_token": token})
        assert answer.status_code in (404, 422), data
        assert answer.headers["content-type"] == HTML
    # A forged cart cookie keeps only well-formed lines.
    assert parse_cart("1:2,x:1,3:0,4:99999999,5:3") == {1: 2, 5: 3}


async def test_sign_in_goes_back_only_to_pages_of_this_shop(
    client: httpx.AsyncClient, alice: User
) -> None:
    for target, expected in (
        ("/shop/orders", "/shop/orders"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/shop/..//evil.example", "/"),
    ):
        client.cookies.clear()
        form = await client.get("/shop/sign-in")
        answer = await client.post(
            "/shop/sign-in",
            data={
                "csrf_token": csrf_of(form),
                "email": alice.email,
                "password": "correct-horse-42",
                "next": target,
            },
        )
        assert answer.headers["location"] == expected, target


async def test_a_wrong_password_shows_the_form_again_with_401(
    client: httpx.AsyncClient, alice: User
) -> None:
    form = await client.get("/shop/sign-in")
    answer = await client.post(
        "/shop/sign-in",
        data={"csrf_token": csrf_of(form), "email": alice.email, "password": "wrong-guess-1"},
    )
    assert answer.status_code == 401 and "Wrong e-mail or password" in answer.text
    assert SESSION not in answer.cookies


async def test_a_session_of_a_deleted_account_is_signed_out(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    ghost = Principal(customer_id=999_999, role=Role.CUSTOMER)
    token, _ = resources.tokens.issue(ghost)
    client.cookies.set(SESSION, token)
    page = await client.get("/shop/orders")
    assert page.status_code == 303 and page.headers["location"].startswith("/shop/sign-in")


async def test_an_admin_made_after_sign_in_sees_admin_pages_on_the_next_load(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    user = await make_user(resources, email="later@example.com")
    await signed_in(client, user)
    assert (await client.get("/shop/admin/ledger")).status_code == 403
    await customers.set_role(resources.db, email=user.email, role=Role.ADMIN)
    assert (await client.get("/shop/admin/ledger")).status_code == 200


async def test_an_admin_uploads_an_image_from_the_product_page(
    client: httpx.AsyncClient, resources: Resources, admin: User, local_assets: Any
) -> None:
    product = await make_product(resources)
    await signed_in(client, admin)
    page = await client.get(f"/shop/admin/products/{product.id}")
    uploaded = await client.post(
        f"/shop/admin/products/{product.id}/image",
        data={"csrf_token": csrf_of(page)},
        files={"image": ("lamp.png", placeholder_png((200, 120, 40)), "image/png")},
    )
    assert uploaded.status_code == 303, uploaded.text
    shown = await client.get(uploaded.headers["location"])
    assert "Saved: the new image." in shown.text
    image = re.search(r'<img src="(/static/images/[0-9a-f]{16}\.png)"', shown.text)
    assert image is not None
    assert (await client.get(image.group(1))).status_code == 200
    refused = await client.post(
        f"/shop/admin/products/{product.id}/image",
        data={"csrf_token": csrf_of(page)},
        files={"image": ("notes.txt", b"not an image", "text/plain")},
    )
    assert refused.status_code == 422 and refused.headers["content-type"] == HTML


async def test_at_stage_5_pages_link_static_files_on_the_assets_base_url(
    client: httpx.AsyncClient, resources: Resources, tmp_path: Any
) -> None:
    from app.adapters.assets import Assets

    await make_product(resources, name="Glass Vase", image_key="images/" + "a" * 16 + ".png")
    original = resources.assets
    resources.assets = Assets(base_url="https://cdn.example.net", folder=tmp_path)
    try:
        home = await client.get("/")
    finally:
        resources.assets = original
    assert re.search(
        r'<link rel="stylesheet" href="https://cdn\.example\.net/static/css/storefront\.'
        r'[0-9a-f]{12}\.css">',
        home.text,
    )
    assert '<img src="https://cdn.example.net/static/images/aaaaaaaaaaaaaaaa.png"' in home.text


async def test_two_tabs_adding_one_unit_at_once_end_with_both_units_in_the_cart(
    client: httpx.AsyncClient, resources: Resources, alice: User
) -> None:
    product = await make_product(resources)
    await signed_in(client, alice)
    token = csrf_of(await client.get(f"/shop/products/{product.id}"))
    add_one = {"product_id": str(product.id), "quantity": "1", "csrf_token": token}

    answers = await asyncio.gather(
        *(client.post("/shop/cart/items", data=add_one) for _ in range(8))
    )

    assert [a.status_code for a in answers] == [303] * 8
    cart = (await client.get("/cart", headers=alice.headers)).json()
    assert [(line["product_id"], line["quantity"]) for line in cart["lines"]] == [(product.id, 8)]


async def test_signing_in_adds_the_visitors_cart_to_the_customers_in_one_change(
    client: httpx.AsyncClient, resources: Resources, alice: User
) -> None:
    """Lines add up (at most 10000 units), a product no longer sold is left out, and the cart
    moves one version whatever the number of lines."""
    mug, lamp, gone = [await make_product(resources) for _ in range(3)]
    for product, quantity in ((mug, 2), (lamp, 5)):
        put = await client.put(
            f"/cart/items/{product.id}", headers=alice.headers, json={"quantity": quantity}
        )
        assert put.status_code == 200, put.text
    before = (await client.get("/cart", headers=alice.headers)).json()["version"]
    others = [await make_product(resources) for _ in range(10)]
    visitor = {mug.id: 3, lamp.id: 9_999, gone.id: 1, **{p.id: 1 for p in others}}
    client.cookies.set(
        "shop_cart", ",".join(f"{p}:{q}" for p, q in visitor.items()), domain="shop.test"
    )
    async with resources.db.write() as conn:
        await conn.execute(text("DELETE FROM product WHERE id = :id"), {"id": gone.id})
    await catalog.catalog_changed(resources.cache)

    await signed_in(client, alice)

    cart = (await client.get("/cart", headers=alice.headers)).json()
    held = {line["product_id"]: line["quantity"] for line in cart["lines"]}
    assert held == {mug.id: 5, lamp.id: 10_000, **{p.id: 1 for p in others}}
    assert cart["version"] == before + 1
    assert parse_cart(client.cookies.get("shop_cart")) == {}


async def test_the_price_form_refuses_what_the_api_refuses_and_keeps_the_price(
    client: httpx.AsyncClient, resources: Resources, admin: User
) -> None:
    """The API takes at most 100,000,000 cents (EUR 1,000,000.00): so does the admin's form."""
    product = await make_product(resources, price_cents=1250)
    await signed_in(client, admin)
    page = await client.get(f"/shop/admin/products/{product.id}")

    top = await client.post(
        f"/shop/admin/products/{product.id}/price",
        data={"csrf_token": csrf_of(page), "price": "1000000.00"},
    )
    over = await client.post(
        f"/shop/admin/products/{product.id}/price",
        data={"csrf_token": csrf_of(page), "price": "9999999.99"},
    )

    assert top.status_code == 303
    assert over.status_code == 422 and over.headers["content-type"] == HTML
    assert "1000000.00" in over.text
    assert (await client.get(f"/products/{product.id}")).json()["price_cents"] == 100_000_000
    api = await client.put(
        f"/admin/products/{product.id}/price",
        headers=admin.headers,
        json={"price_cents": 999_999_999},
    )
    assert api.status_code == 422


async def test_the_sign_up_form_refuses_a_common_password_and_says_why(
    client: httpx.AsyncClient,
) -> None:
    form = await client.get("/shop/sign-in")
    answer = await client.post(
        "/shop/sign-up",
        data={
            "csrf_token": csrf_of(form),
            "email": "keys@example.com",
            "password": "qwertyuiop",
            "full_name": "Keyboard Row",
        },
    )
    assert answer.status_code == 422
    assert "too easy to guess" in answer.text and "common password" in answer.text
    assert SESSION not in answer.cookies


async def test_a_form_over_the_body_limit_answers_the_storefronts_own_page(
    client: httpx.AsyncClient, alice: User
) -> None:
    await signed_in(client, alice)
    form = await client.get("/shop/cart")
    oversized = {"csrf_token": csrf_of(form), "note": "x" * 70_000}
    for sent in (
        {"data": oversized},  # announced by Content-Length
        {  # streamed
            "content": _chunks(b"product_id=1&quantity=" + b"1" * 4096, 20),
            "headers": {"content-type": "application/x-www-form-urlencoded"},
        },
    ):
        answer = await client.post("/shop/cart/items", **sent)  # type: ignore[arg-type]
        assert answer.status_code == 413
        assert answer.headers["content-type"].startswith("text/html")
        assert "Too large" in answer.text and "64 KB" in answer.text
        assert "Sign out" in answer.text  # the page of this visitor, still signed in
    api = await client.post("/orders", content=b"{" + b" " * 70_000 + b"}")
    assert api.status_code == 413 and api.json()["detail"].startswith("request body larger")


async def _chunks(piece: bytes, count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield piece


async def test_every_page_answers_head_as_it_answers_get(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    product = await make_product(resources)
    for path in ("/", "/shop/products", f"/shop/products/{product.id}", "/shop/sign-in"):
        got, head = await client.get(path), await client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.headers["content-type"] == got.headers["content-type"], path
    missing = await client.head("/shop/products/999999999")
    assert missing.status_code == 404
    assert (await client.head("/shop/orders")).status_code == 303  # sign in first, as GET says
