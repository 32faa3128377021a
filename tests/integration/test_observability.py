"""What a load test reads without access to the server: Server-Timing, X-Request-ID, and the
Prometheus document at /metrics."""

from __future__ import annotations

import re

from httpx import AsyncClient

from app.adapters.resources import Resources
from tests.integration.conftest import User, make_product


def timing(response_header: str) -> dict[str, float]:
    return {
        name: float(duration)
        for name, duration in re.findall(r"(\w+);dur=([0-9.]+)", response_header)
    }


async def test_every_answer_says_where_its_time_went(
    client: AsyncClient, resources: Resources, alice: User
) -> None:
    product = await make_product(resources)
    for response in (
        await client.get(f"/products/{product.id}"),
        await client.get("/orders", headers=alice.headers),
        await client.post(
            "/orders",
            headers=alice.headers,
            json={"lines": [{"product_id": product.id, "quantity": 1}]},
        ),
    ):
        spent = timing(response.headers["server-timing"])
        assert set(spent) >= {"app", "db"}, response.headers["server-timing"]
        assert 0 < spent["db"] <= spent["app"]
    health = timing((await client.get("/healthz")).headers["server-timing"])
    assert set(health) == {"app"}  # no database behind a liveness check


async def test_a_request_id_is_kept_when_sane_and_made_otherwise(client: AsyncClient) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "lb-1234.abc"})
    assert given.headers["x-request-id"] == "lb-1234.abc"
    made = [
        (await client.get("/healthz", headers=headers)).headers["x-request-id"]
        for headers in (
            {},
            {},
            {"X-Request-ID": "bad id\twith spaces"},
            {"X-Request-ID": "x" * 500},
        )
    ]
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in made)
    assert len(set(made)) == len(made)


async def test_even_a_refused_body_carries_the_timing_and_id(
    client: AsyncClient, alice: User
) -> None:
    response = await client.post(
        "/orders", headers=alice.headers, content=b"x" * 200_000, timeout=10
    )
    assert response.status_code == 413
    assert "app;dur=" in response.headers["server-timing"]
    assert response.headers["x-request-id"]


def count_of(document: str, route: str, status: str) -> float:
    pattern = (
        r'^shop_request_duration_seconds_count\{[^}]*method="GET"[^}]*'
        rf'route="{re.escape(route)}"[^}}]*status="{status}"[^}}]*\}} ([0-9.e+]+)$'
    )
    found = re.findall(pattern, document, flags=re.M)
    return float(found[0]) if found else 0.0


async def test_metrics_count_requests_by_route_template_not_by_id(
    client: AsyncClient, resources: Resources
) -> None:
    product = await make_product(resources)
    before = (await client.get("/metrics")).text
    for _ in range(3):
        await client.get(f"/products/{product.id}")
    await client.get("/products/424242")
    after = (await client.get("/metrics")).text
    route = "/products/{product_id}"
    assert count_of(after, route, "200") - count_of(before, route, "200") == 3
    assert count_of(after, route, "404") - count_of(before, route, "404") == 1
    assert f'route="/products/{product.id}"' not in after
    assert "shop_requests_in_flight" in after
    assert 'shop_db_pool_connections{pool="primary",state="size"}' in after
