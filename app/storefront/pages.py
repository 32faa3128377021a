"""Rendering the storefront's pages: the Jinja2 templates, the links to static files, and the
friendly error pages of storefront paths (the JSON API keeps its JSON errors)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from app.adapters.assets import static_name
from app.adapters.resources import Resources
from app.kernel.errors import ShopError
from app.storefront.sessions import Visit, visit_of

log = logging.getLogger("shop.storefront")

TEMPLATES = Path(__file__).parent / "templates"
STYLESHEET = "css/storefront.css"

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(("html",), default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def money(cents: int | None) -> str:
    """1234 -> 'EUR 12.34'."""
    if cents is None:
        return "-"
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}EUR {cents // 100:,}.{cents % 100:02d}"


_env.filters["money"] = money


def is_storefront(path: str) -> bool:
    return path == "/" or path == "/shop" or path.startswith("/shop/")


def resources_of(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


def render(
    request: Request,
    visit: Visit,
    template: str,
    *,
    status_code: int = 200,
    public: bool = False,
    **context: Any,
) -> HTMLResponse:
    """A page. `public` pages (the same for every anonymous visitor, with no form) may be kept
    by a CDN or browser for SHOP_CATALOG_MAX_AGE_S; every other page is private (the
    DefaultCacheControl middleware marks it so) and sets whatever cookies the visit changed."""
    resources = resources_of(request)
    assets = resources.assets

    def static(logical: str) -> str:
        url = assets.url(static_name(logical))
        assert url is not None
        return url

    body = _env.get_template(template).render(
        request=request,
        visit=visit,
        static=static,
        stylesheet=static(STYLESHEET),
        csrf_field=visit.csrf,
        **context,
    )
    response = HTMLResponse(body, status_code=status_code)
    if public and status_code == 200 and not (visit.signed_in or visit.cart or visit.signed_out):
        response.headers["cache-control"] = (
            f"public, max-age={resources.settings.catalog_max_age_s}"
        )
        # A cache must not hand this page to a browser whose cookies make it another page.
        response.headers["vary"] = "Cookie"
    else:
        visit.write(response, resources)
    return response


_TITLES = {
    400: "That request did not make sense",
    401: "Please sign in",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed here",
    409: "That cannot be done now",
    413: "Too large",
    422: "Please check what you entered",
    429: "Too many attempts",
    500: "Something went wrong on our side",
    503: "The shop is busy",
}


async def error_page(request: Request, status_code: int, message: str) -> Response:
    """The friendly page of an error on a storefront path, with the error's status code."""
    try:
        resources = resources_of(request)
        visit = await visit_of(request, resources)
    except Exception:  # the error may be that nothing is available: say so in plain text
        return PlainTextResponse(message, status_code=status_code)
    response = render(
        request,
        visit,
        "error.html",
        status_code=status_code,
        title=_TITLES.get(status_code, "Something went wrong"),
        message=message,
        code=status_code,
    )
    if status_code == 503:
        response.headers["retry-after"] = "1"
    return response


async def too_large_page(scope: Scope, max_bytes: int) -> Response | None:
    """The storefront's own page for a body over the limit (the body limit answers before any
    route runs); None off the storefront, where the API's JSON answer stands."""
    if not is_storefront(scope["path"]):
        return None
    limit = f"{max_bytes // 1024} KB" if max_bytes < 1024 * 1024 else f"{max_bytes // 2**20} MB"
    message = f"What you sent is larger than this form accepts ({limit}); send less and try again."
    return await error_page(Request(scope), 413, message)


Handler = Callable[[Request, Exception], Response | Awaitable[Response]]


def _message(exc: Exception, status_code: int) -> str:
    if isinstance(exc, ShopError):
        return exc.message
    if isinstance(exc, RequestValidationError):
        return "Some of what was sent is not valid; go back and check it."
    if isinstance(exc, StarletteHTTPException) and status_code == 404:
        return "There is no page at this address."
    if isinstance(exc, StarletteHTTPException):
        return str(exc.detail)
    if status_code == 503:
        return "The shop is busy or its database is unavailable; try again in a moment."
    return "The error is logged for the operator; please try again later."


def install_error_pages(app: FastAPI) -> None:
    """Storefront paths answer errors with a page; every other path keeps the handler the app
    had (JSON). Call after every other exception handler is installed."""

    def for_storefront(original: Handler | None, default_status: int) -> Handler:
        async def handle(request: Request, exc: Exception) -> Response:
            if not is_storefront(request.url.path):
                if original is None:
                    raise exc
                answer = original(request, exc)
                return await answer if isinstance(answer, Awaitable) else answer
            status_code = default_status
            retry_after: str | None = None
            if original is not None:
                answer = original(request, exc)
                json_answer = await answer if isinstance(answer, Awaitable) else answer
                status_code = json_answer.status_code
                retry_after = json_answer.headers.get("retry-after")
            elif isinstance(exc, StarletteHTTPException):
                status_code = exc.status_code
            if status_code >= 500 and status_code != 503:
                log.error("storefront error on %s", request.url.path, exc_info=exc)
            page = await error_page(request, status_code, _message(exc, status_code))
            if retry_after is not None:  # 429 and 503 say when to come back, as the API does
                page.headers["retry-after"] = retry_after
            return page

        return handle

    handlers: dict[Any, Handler] = dict(app.exception_handlers)
    for key, original in handlers.items():
        if key in (500, Exception):
            continue
        app.add_exception_handler(key, for_storefront(original, 500))

    async def server_error(request: Request, exc: Exception) -> Response:
        if not is_storefront(request.url.path):
            return PlainTextResponse("Internal Server Error", status_code=500)
        log.error("storefront error on %s", request.url.path, exc_info=exc)
        return await error_page(request, 500, _message(exc, 500))

    app.add_exception_handler(Exception, server_error)
