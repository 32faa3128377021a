"""Domain routers join the app flat (include_flat): what a FastAPI user relies on still holds."""

from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI
from httpx import ASGITransport, AsyncClient

from app.web.http import include_flat
from app.web.openapi import operation_id


async def _greeting() -> str:
    return "hello"


router = APIRouter(tags=["greetings"])


@router.get("/greet/{name}", responses={404: {"description": "Nobody of that name."}})
async def greet(name: str, greeting: Annotated[str, Depends(_greeting)]) -> dict[str, str]:
    """Say it."""
    return {"said": f"{greeting}, {name}"}


def _app() -> FastAPI:
    app = FastAPI(generate_unique_id_function=operation_id)
    include_flat(app, router)
    return app


def _client(app: FastAPI) -> AsyncClient:
    return AsyncClient(transport=ASGITransport(app=app), base_url="http://test")


async def test_a_flat_route_answers_and_keeps_its_documentation() -> None:
    app = _app()
    async with _client(app) as client:
        assert (await client.get("/greet/ada")).json() == {"said": "hello, ada"}
        assert (await client.post("/greet/ada")).status_code == 405
    operation = app.openapi()["paths"]["/greet/{name}"]["get"]
    assert operation["operationId"] == "greet"  # the app's operation ids, not the router's
    assert operation["tags"] == ["greetings"]
    assert operation["description"] == "Say it."
    assert "404" in operation["responses"]


async def test_dependency_overrides_of_the_app_reach_flat_routes() -> None:
    app = _app()

    async def other() -> str:
        return "bye"

    app.dependency_overrides[_greeting] = other
    async with _client(app) as client:
        assert (await client.get("/greet/ada")).json() == {"said": "bye, ada"}


def test_a_router_with_a_prefix_or_dependencies_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix"):
        include_flat(FastAPI(), APIRouter(prefix="/v1"))
    with pytest.raises(ValueError, match="dependencies"):
        include_flat(FastAPI(), APIRouter(dependencies=[Depends(_greeting)]))
