"""The OpenAPI document is valid, and tells a client every answer a route can give.

What a route needs is read from its code (its dependencies and parameters), then checked
against what the document declares, so a new route cannot forget its 401 or its 422.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from httpx import AsyncClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from app.web import deps
from tests.integration.conftest import User

ERROR_MODELS = {
    "ErrorBody",
    "NotFoundBody",
    "ConflictBody",
    "TransitionRefused",
    "OutOfStockBody",
    "RateLimitedBody",
    "ValidationErrorBody",
}
# What cannot be read from a route's signature: what its service may refuse.
RAISED_BY_THE_SERVICE: dict[str, set[int]] = {
    "sign_up": {409},
    "sign_in": {401, 429},
    "create_product": {409},
    "restock": {409},
    "place_order": {404, 409},
    "cancel_order": {409},
    "advance_shipment": {409},
    "set_cart_item": {409},
    "remove_cart_item": {409},
    "checkout_cart": {409},
}


@pytest.fixture
def document(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def documented_routes(app: FastAPI) -> list[APIRoute]:
    """The app's routes, those of included routers too (FastAPI 0.16x keeps them there)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI copies included routes into app.routes
        routes = list(app.routes)
    else:
        routes = [context.original_route for context in iter_route_contexts(app.routes)]
    return [r for r in routes if isinstance(r, APIRoute) and r.include_in_schema]


def calls(dependant: Dependant) -> set[object]:
    found: set[object] = set()
    for sub in dependant.dependencies:
        found.add(sub.call)
        found |= calls(sub)
    return found


def expected_errors(route: APIRoute, operation: dict[str, Any]) -> set[int]:
    needs = calls(route.dependant)
    expected = set(RAISED_BY_THE_SERVICE.get(route.name, set()))
    parameters = operation.get("parameters", [])
    if deps._principal in needs:
        expected.add(401)
    if deps._admin in needs:
        expected.add(403)
    if any(p["in"] == "path" for p in parameters):
        expected.add(404)
    if parameters or "requestBody" in operation:
        expected.add(422)
    if "requestBody" in operation:
        expected.add(413)
    if needs & {deps._db, deps._databases, deps._resources}:
        expected.add(503)
    return expected


async def test_the_served_document_is_valid_openapi(client: AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    validate(response.json())


def test_operation_ids_are_the_route_names_short_and_unique(
    app: FastAPI, document: dict[str, Any]
) -> None:
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-z_]{1,30}", i) for i in ids), ids
    assert sorted(ids) == sorted(route.name for route in documented_routes(app))


def test_every_route_declares_every_error_it_can_answer(
    app: FastAPI, document: dict[str, Any]
) -> None:
    wrong = {}
    for route in documented_routes(app):
        for method in route.methods:
            operation = document["paths"][route.path_format][method.lower()]
            declared = {int(code) for code in operation["responses"] if int(code) >= 400}
            expected = expected_errors(route, operation)
            if declared != expected:
                wrong[f"{method} {route.path}"] = {
                    "missing": sorted(expected - declared),
                    "not raised": sorted(declared - expected),
                }
    assert wrong == {}


def test_error_answers_name_their_body_and_headers(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        for code, response in operation["responses"].items():
            if int(code) < 400 or path == "/readyz":
                continue
            schema = response["content"]["application/json"]["schema"]
            refs = [s["$ref"] for s in schema.get("anyOf", [schema])]
            assert {ref.rsplit("/", 1)[-1] for ref in refs} <= ERROR_MODELS, (method, path, code)
            headers = set(response.get("headers", {}))
            if code == "401":
                assert "WWW-Authenticate" in headers, (method, path)
            if code in ("429", "503"):
                assert "Retry-After" in headers, (method, path, code)


def test_routes_that_need_a_token_say_so_and_docs_can_sign_in(
    app: FastAPI, document: dict[str, Any]
) -> None:
    scheme = document["components"]["securitySchemes"]["OAuth2PasswordBearer"]
    assert scheme["flows"]["password"]["tokenUrl"] == "/auth/token"
    for route in documented_routes(app):
        for method in route.methods:
            operation = document["paths"][route.path_format][method.lower()]
            needs_token = deps._principal in calls(route.dependant)
            assert ("security" in operation) is needs_token, (method, route.path)


def test_post_orders_documents_its_idempotency_headers(document: dict[str, Any]) -> None:
    operation = document["paths"]["/orders"]["post"]
    headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    assert headers["Idempotency-Key"]["required"] is False
    assert "Idempotent-Replayed" in operation["responses"]["201"]["headers"]


def test_every_request_body_has_an_example_that_its_schema_accepts(
    document: dict[str, Any],
) -> None:
    bodies = 0
    for method, path, operation in operations(document):
        for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
            bodies += 1
            examples = [e["value"] for e in content.get("examples", {}).values()]
            assert examples, (method, path, media_type)
            schema = {**content["schema"], "components": document["components"]}
            validator = Draft202012Validator(
                schema, format_checker=Draft202012Validator.FORMAT_CHECKER
            )
            for example in examples:
                assert list(validator.iter_errors(example)) == [], (method, path, media_type)
    assert bodies >= 8


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/orders", None, 401),
        ("GET", "/admin/shipments", None, 403),
        ("GET", "/orders/4242", None, 404),
        ("POST", "/auth/sign-up", {"email": "nope"}, 422),
        ("POST", "/orders", {"lines": [{"product_id": 1, "quantity": 1}] * 5000}, 413),
        ("POST", "/orders", {"lines": [{"product_id": 4242, "quantity": 1}]}, 404),
    ],
)
async def test_the_error_bodies_sent_are_the_ones_documented(
    client: AsyncClient,
    document: dict[str, Any],
    alice: User,
    method: str,
    path: str,
    body: object,
    status: int,
) -> None:
    headers = alice.headers if status != 401 else {}
    response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == status
    template = re.sub(r"/\d+", "/{order_id}", path)
    documented = document["paths"][template][method.lower()]["responses"][str(status)]
    schema = {**documented["content"]["application/json"]["schema"]}
    schema["components"] = document["components"]
    assert list(Draft202012Validator(schema).iter_errors(response.json())) == []
