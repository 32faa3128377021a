"""HTTP plumbing shared by every module: error mapping, the request body limit, and a JSON
response serialised in one pass."""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from psycopg_pool import PoolTimeout
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.kernel.errors import (
    InvalidRequest,
    ShopError,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger("shop.http")


def include_flat(app: FastAPI, router: APIRouter) -> None:
    """Add a domain router's routes to the app itself, as `include_router` did before FastAPI
    0.137.

    Since 0.137, `include_router` keeps the router as a node that every request walks (and
    walks again to handle the route it found), with per-route bookkeeping on the way: measured
    in one process, `/healthz`, tried after the API's routes, took 151 µs included and 125 µs
    flat. Routes added here are the app's own, so the app's operation ids and
    `app.dependency_overrides` apply to them. Routers used this way carry no prefix or
    dependencies of their own (checked).
    """
    if router.prefix or router.dependencies:
        raise ValueError("include_flat takes routers without a prefix or dependencies")
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"include_flat takes API routes only, not {route!r}")
        app.router.add_api_route(
            route.path,
            route.endpoint,
            methods=sorted(route.methods or ()),
            name=route.name,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=list(route.tags),
            dependencies=list(route.dependencies),
            summary=route.summary,
            description=route.description,
            response_description=route.response_description,
            responses=route.responses,
            deprecated=route.deprecated,
            operation_id=route.operation_id,
            response_model_include=route.response_model_include,
            response_model_exclude=route.response_model_exclude,
            response_model_by_alias=route.response_model_by_alias,
            response_model_exclude_unset=route.response_model_exclude_unset,
            response_model_exclude_defaults=route.response_model_exclude_defaults,
            response_model_exclude_none=route.response_model_exclude_none,
            include_in_schema=route.include_in_schema,
            response_class=route.response_class,
            callbacks=route.callbacks,
            openapi_extra=route.openapi_extra,
        )


def model_response(model: BaseModel, status_code: int = 200) -> Response:
    """A JSON response serialised once by pydantic-core.

    Returning a model lets FastAPI validate it a second time against `response_model` before
    serialising it; on the hottest reads that second pass cost more than the database query.
    Keep `response_model` on the route for the OpenAPI docs.
    """
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 If-None-Match: `*`, or a list of tags compared weakly (W/ ignored)."""
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


def public_response(
    body: bytes,
    *,
    max_age_s: int,
    if_none_match: str | None,
    media_type: str = "application/json",
) -> Response:
    """An answer every visitor gets alike, which a CDN and browsers may keep `max_age_s`
    seconds: `Cache-Control: public`, a strong ETag (a hash of the body), and 304 with no body
    to an If-None-Match naming it."""
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {"cache-control": f"public, max-age={max_age_s}", "etag": etag}
    if if_none_match is not None and etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


PRIVATE = b"private, no-store"
"""The Cache-Control of every answer that does not choose its own."""


class DefaultCacheControl:
    """ASGI middleware: an answer without Cache-Control gets `private, no-store` (errors,
    anything signed in), so a CDN or a shared cache never keeps what a route did not mark
    cacheable. Answers under `revalidate` other than errors get `no-cache` instead (kept, but
    checked each time)."""

    def __init__(self, app: ASGIApp, *, revalidate: Sequence[str] = ()) -> None:
        self.app = app
        self.revalidate = tuple(revalidate)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_default(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                for name, _ in headers:
                    if name == b"cache-control":
                        break
                else:
                    path: str = scope["path"]
                    revalidate = message["status"] < 400 and path.startswith(self.revalidate)
                    value = b"no-cache" if revalidate else PRIVATE
                    message["headers"] = [*headers, (b"cache-control", value)]
            await send(message)

        await self.app(scope, receive, send_with_default)


def _shop_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ShopError)
    headers: dict[str, str] | None = None
    if isinstance(exc, Unauthenticated):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, TooManyRequests | Unavailable):
        headers = {"Retry-After": str(exc.retry_after_s)}
    body: dict[str, Any]
    if isinstance(exc, InvalidRequest):
        # Same shape as FastAPI's own validation errors: the field and the reason.
        loc = [exc.location, *exc.field.split(".")]
        body = {"detail": [{"loc": loc, "msg": exc.message, "type": "value_error"}]}
    else:
        body = {"detail": exc.message, **exc.extra}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's default echoes the input back, which fails on NaN and repeats huge bodies:
    # answer with where and why only.
    assert isinstance(exc, RequestValidationError)
    detail = [
        {
            "loc": list(e.get("loc", ())),
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def database_unavailable(exc: BaseException) -> bool:
    """True when a database error means "not now" (pool exhausted, connection lost, server
    restarting, statement or lock timeout, SQLite busy), which a client may retry; False for
    an operator's error such as a missing table, which no retry will fix."""
    if isinstance(exc, sa_exc.TimeoutError | PoolTimeout | sa_exc.InterfaceError | OSError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if isinstance(exc.orig, BaseException) else exc
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return any(word in str(exc) for word in ("locked", "busy", "unable to open"))
    return False


def _database_error(_request: Request, exc: Exception) -> JSONResponse:
    if database_unavailable(exc):
        # The client may retry; this is not its fault.
        log.warning("database unavailable: %s", exc)
        return JSONResponse(
            {"detail": "the database is busy or unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    log.error(
        "database error that no retry will fix (is the schema at the latest migration? "
        "`shop migrate`): %s",
        exc,
    )
    return JSONResponse(
        {"detail": "internal error; it is logged for the operator"}, status_code=500
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ShopError, _shop_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(sa_exc.TimeoutError, _database_error)
    app.add_exception_handler(sa_exc.DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeout, _database_error)
    app.add_exception_handler(psycopg.Error, _database_error)


class BodyLimit:
    """Answer 413 to bodies over `max_bytes`, whether announced by Content-Length or streamed.

    `larger` gives some routes a limit of their own: (method, path pattern, max bytes), such
    as an image upload. `page` may give some paths an answer of their own (the storefront's
    error page); it returns None for the rest, which get the API's JSON."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        larger: Sequence[tuple[str, re.Pattern[str], int]] = (),
        page: Callable[[Scope, int], Awaitable[Response | None]] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = tuple(larger)
        self.page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.max_bytes
        for method, pattern, limit in self.larger:
            if scope["method"] == method and pattern.match(scope["path"]):
                max_bytes = limit
                break
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > max_bytes:
                    await self._too_large(scope, send, max_bytes)
                    return
                break
        received = 0
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes and not rejected:
                    # Answer now and tell the app the client left; whatever it answers is dropped.
                    rejected = True
                    await self._too_large(scope, send, max_bytes)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _too_large(self, scope: Scope, send: Send, max_bytes: int) -> None:
        response = await self.page(scope, max_bytes) if self.page is not None else None
        if response is None:
            response = JSONResponse(
                {"detail": f"request body larger than {max_bytes} bytes"}, status_code=413
            )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})
