"""What a CDN or browser may keep: only the public catalog reads (briefly, with an ETag) and the
fingerprinted static files (for a year); every other answer, errors included, is private."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from httpx import AsyncClient
from starlette.routing import BaseRoute, Mount, Route

from app.adapters.assets import IMMUTABLE, Assets, static_name
from app.adapters.resources import Resources
from app.seed import placeholder_png
from tests.integration.conftest import User, make_product

PRIVATE = "private, no-store"
PUBLIC_READS = {("GET", "/products"), ("GET", "/products/{product_id}")}
# The storefront's home and catalog pages, to a visitor with no cookie (the pages hold no form).
PUBLIC_READS |= {("GET", "/"), ("GET", "/shop/products")}


def every_route(app: FastAPI) -> list[BaseRoute]:
    """The app's routes, those of included routers too (FastAPI 0.16x keeps them there)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI copies included routes into app.routes
        return list(app.routes)
    return [context.original_route for context in iter_route_contexts(app.routes)]


def operations(app: FastAPI) -> Iterator[tuple[str, str, BaseRoute]]:
    for route in every_route(app):
        if isinstance(route, APIRoute | Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    yield method, route.path, route
        elif isinstance(route, Mount):
            yield "GET", route.path, route


def expected(settings_max_age: int, method: str, path: str, status: int) -> str:
    if (method, path) in PUBLIC_READS and status == 200:
        return f"public, max-age={settings_max_age}"
    if (method, path) in PUBLIC_READS and status == 304:
        return f"public, max-age={settings_max_age}"
    if path.startswith("/static/") and status == 200:
        return IMMUTABLE
    if path.startswith("/docs/assets") and status in (200, 304):
        return "no-cache"
    return PRIVATE


def example_body(document: dict[str, Any], method: str, path: str) -> tuple[str, Any] | None:
    """The first documented example of the route's body, with its media type."""
    operation = document["paths"].get(path, {}).get(method.lower(), {})
    for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
        for example in content.get("examples", {}).values():
            return media_type, example["value"]
    return None


async def _world(client: AsyncClient, resources: Resources, alice: User) -> dict[str, Any]:
    """A product, and an order of alice's with its shipment: ids for every path parameter."""
    product = await make_product(resources, initial_stock=100)
    placed = await client.post(
        "/orders",
        headers=alice.headers,
        json={"lines": [{"product_id": product.id, "quantity": 1}]},
    )
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    shipment = await client.get(f"/orders/{order_id}/shipment", headers=alice.headers)
    return {
        "product_id": product.id,
        "order_id": order_id,
        "shipment_id": shipment.json()["id"],
        "name": static_name("css/shop.css"),
    }


def _request_for(
    method: str,
    path: str,
    route: BaseRoute,
    document: dict[str, Any],
    ids: dict[str, Any],
    who: dict[str, str],
) -> dict[str, Any]:
    url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: str(ids.get(m.group(1), 1)), path)
    if isinstance(route, Mount):
        url = f"{path}/swagger-ui.css"
    request: dict[str, Any] = {"method": method, "url": url, "headers": dict(who)}
    if (method, path) == ("POST", "/orders"):
        request["json"] = {"lines": [{"product_id": ids["product_id"], "quantity": 1}]}
    elif path.endswith("/image"):
        request["content"] = placeholder_png((10, 20, 30))
        request["headers"]["content-type"] = "image/png"
    elif (found := example_body(document, method, path)) is not None:
        media_type, value = found
        if media_type == "application/json":
            request["json"] = value
        else:
            request["data"] = value
    return request


@pytest.fixture
def local_assets(resources: Resources, tmp_path: Path) -> Iterator[Assets]:
    """The upload this test makes goes to a folder of its own, not the project's."""
    original = resources.assets
    resources.assets = Assets(base_url=None, folder=tmp_path / "assets")
    yield resources.assets
    resources.assets = original


@pytest.mark.usefixtures("local_assets")
async def test_every_route_answers_with_the_cache_control_of_its_class(
    app: FastAPI, client: AsyncClient, resources: Resources, admin: User, alice: User
) -> None:
    document = app.openapi()
    ids = await _world(client, resources, alice)
    max_age = resources.settings.catalog_max_age_s
    seen: dict[tuple[str, str], tuple[int, str | None]] = {}
    for method, path, route in operations(app):
        who = admin.headers if path.startswith("/admin") else alice.headers
        request = _request_for(method, path, route, document, ids, who)
        response = await client.request(**request)
        seen[(method, path)] = (response.status_code, response.headers.get("cache-control"))

    wrong = {
        f"{method} {path}": (status, header)
        for (method, path), (status, header) in seen.items()
        if status >= 500 or header != expected(max_age, method, path, status)
    }
    assert wrong == {}
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert documented <= set(seen)
    # Valid inputs reach the answers that matter here, not only their errors.
    for operation in (*PUBLIC_READS, ("GET", "/static/{name:path}"), ("GET", "/healthz")):
        assert seen[operation][0] == 200, (operation, seen[operation])
    assert seen[("PUT", "/admin/products/{product_id}/image")][0] == 200
    assert seen[("POST", "/orders")][0] == 201


async def test_every_route_answers_its_errors_privately(app: FastAPI, client: AsyncClient) -> None:
    """No token, unknown ids: 401, 404 and 422 answers are never kept by a shared cache."""
    seen = {}
    for method, path, route in operations(app):
        if isinstance(route, Mount):
            url = f"{path}/no-such-file.js"
        else:
            url = re.sub(r"\{(\w+)(?::\w+)?\}", "2147483647", path)
        response = await client.request(method, url, json={"unexpected": True})
        seen[f"{method} {path}"] = (response.status_code, response.headers.get("cache-control"))
    wrong = {k: v for k, v in seen.items() if v[0] >= 400 and (v[0] >= 500 or v[1] != PRIVATE)}
    assert wrong == {}
    assert seen["GET /products/{product_id}"][0] == 404
    assert seen["GET /static/{name:path}"][0] == 404


async def test_a_body_over_the_limit_answers_413_privately(
    client: AsyncClient, alice: User
) -> None:
    response = await client.post(
        "/orders", headers=alice.headers, content=b"{" + b" " * 70_000 + b"}"
    )
    assert response.status_code == 413
    assert response.headers["cache-control"] == PRIVATE


async def test_a_product_answer_has_a_strong_etag_and_answers_304_while_it_holds(
    client: AsyncClient, resources: Resources, admin: User
) -> None:
    product = await make_product(resources, price_cents=1000)
    first = await client.get(f"/products/{product.id}")
    etag = first.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)  # strong: no W/ prefix
    assert first.headers["cache-control"] == "public, max-age=10"

    again = await client.get(f"/products/{product.id}", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert again.headers["cache-control"] == "public, max-age=10"
    for spelling in (f"W/{etag}", f'"other", {etag}', "*"):
        matched = await client.get(f"/products/{product.id}", headers={"If-None-Match": spelling})
        assert matched.status_code == 304, spelling

    other = await client.get(f"/products/{product.id}", headers={"If-None-Match": '"nope"'})
    assert other.status_code == 200
    assert other.json()["price_cents"] == 1000

    await client.put(
        f"/admin/products/{product.id}/price", headers=admin.headers, json={"price_cents": 900}
    )
    changed = await client.get(f"/products/{product.id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["price_cents"] == 900
    assert changed.headers["etag"] != etag


async def test_a_page_of_products_has_an_etag_that_changes_with_the_catalog(
    client: AsyncClient, resources: Resources, admin: User
) -> None:
    await make_product(resources, name="Lamp A")
    first = await client.get("/products", params={"q": "lamp"})
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "public, max-age=10"
    unchanged = await client.get("/products", params={"q": "lamp"}, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304

    await make_product(resources, name="Lamp B")
    grown = await client.get("/products", params={"q": "lamp"}, headers={"If-None-Match": etag})
    assert grown.status_code == 200
    assert [p["name"] for p in grown.json()["items"]] == ["Lamp A", "Lamp B"]


async def test_answers_for_a_signed_in_customer_are_private(
    client: AsyncClient, alice: User
) -> None:
    response = await client.get("/customers/me", headers=alice.headers)
    assert response.status_code == 200
    assert response.headers["cache-control"] == PRIVATE
    assert "etag" not in response.headers
