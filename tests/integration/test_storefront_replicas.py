"""Stage 4 for the storefront: a browser that just wrote (cart, order, cancel) sees it on the next
page, served by another instance, while the replica has not replayed it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.main import create_app
from tests import pg_cluster
from tests.conftest import test_settings
from tests.integration.conftest import make_product, make_user
from tests.integration.test_replicas import Servers, caught_up
from tests.integration.test_replicas import Shop as Instance
from tests.integration.test_replicas import servers as servers  # the module's cluster fixture
from tests.integration.test_storefront import csrf_of

pytestmark = pytest.mark.skipif(
    pg_cluster.why_unavailable() is not None, reason=str(pg_cluster.why_unavailable())
)


@asynccontextmanager
async def instance(cluster: Servers, cookies: CookieJar) -> AsyncIterator[Instance]:
    """One app on the primary and the replica; its client shares the browser's cookie jar."""
    settings = test_settings(
        database_url=cluster.url,
        database_replica_urls=[cluster.replica_url],
        database_replica_check_s=0.2,
        database_replica_max_lag_s=30,
    )
    app = create_app(settings)
    # Shutdown stops the replica's health check and closes the pools of both servers: on a
    # loaded machine that has taken longer than asgi-lifespan's 5 s default once.
    async with LifespanManager(app, startup_timeout=20, shutdown_timeout=20):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://shop.test", cookies=cookies
        ) as http:
            yield Instance(app.state.resources, http)


async def test_the_next_page_shows_what_the_browser_just_did_on_another_instance(
    servers: Servers,
) -> None:
    browser = CookieJar()  # one jar, as one browser behind a load balancer
    async with instance(servers, browser) as one, instance(servers, browser) as two:
        product = await make_product(one.resources, initial_stock=5, name="Copper Kettle")
        customer = await make_user(one.resources)
        await caught_up(servers, one, two)
        servers.replica.query("SELECT pg_wal_replay_pause()")
        try:
            form = await one.http.get("/shop/sign-in")
            signed_in = await one.http.post(
                "/shop/sign-in",
                data={
                    "csrf_token": csrf_of(form),
                    "email": customer.email,
                    "password": "correct-horse-42",
                },
            )
            assert signed_in.status_code == 303
            page = await two.http.get(f"/shop/products/{product.id}")
            added = await two.http.post(
                "/shop/cart/items",
                data={"csrf_token": csrf_of(page), "product_id": str(product.id), "quantity": "1"},
            )
            assert added.status_code == 303
            # The cart page, on the other instance: the cart written a moment ago is there.
            cart = await one.http.get("/shop/cart")
            assert "Copper Kettle" in cart.text
            checkout = await one.http.get("/shop/checkout")
            version = re.search(r'name="version" value="(\d+)"', checkout.text)
            assert version is not None
            placed = await one.http.post(
                "/shop/checkout",
                data={"csrf_token": csrf_of(checkout), "version": version.group(1)},
            )
            assert placed.status_code == 303
            order_path = placed.headers["location"].split("?")[0]

            order = await two.http.get(order_path)
            assert order.status_code == 200 and "Copper Kettle" in order.text
            assert order_path in (await two.http.get("/shop/orders")).text
            cancelled = await two.http.post(
                order_path + "/cancel", data={"csrf_token": csrf_of(order)}
            )
            assert cancelled.status_code == 303
            assert "status-cancelled" in (await one.http.get(order_path)).text

            # Without the read-after cookie the paused replica answers, and lacks the order:
            # the cookie is what made the pages above right.
            for cookie in [c for c in browser if c.name == "shop_read_after"]:
                browser.clear(cookie.domain, cookie.path, cookie.name)
            assert (await two.http.get(order_path)).status_code == 404
        finally:
            servers.replica.query("SELECT pg_wal_replay_resume()")
