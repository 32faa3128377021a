"""What the OpenAPI document says about errors: the bodies web.http sends, and short
operation ids.

Routes declare their error answers with `errors(401, 404, 422, 503)`, adding `conflict(...)`
when they can answer 409, so that /docs lists every answer a client may get.
"""

from __future__ import annotations

from types import UnionType
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    """The body of most errors: what went wrong, in one sentence."""

    detail: str = Field(examples=["the database is busy or unavailable; retry shortly"])


class NotFoundBody(ErrorBody):
    """An unknown id, or one that belongs to someone else: both answer alike."""

    resource: str = Field(examples=["order"])
    id: int | str = Field(examples=[42])


class ConflictBody(ErrorBody):
    """The request is well formed but the current state forbids it. Further fields name what
    conflicts and what is allowed (`allowed`, `current`, `available`...)."""

    model_config = ConfigDict(extra="allow")


class TransitionRefused(ErrorBody):
    """A move the state machine refuses, naming the moves allowed from the current status."""

    current: str = Field(examples=["shipped"])
    requested: str = Field(examples=["packed"])
    allowed: list[str] = Field(examples=[["delivered"]])


class OutOfStockBody(ErrorBody):
    """Not enough stock for one line; nothing was reserved."""

    product_id: int = Field(examples=[7])
    requested: int = Field(examples=[3])
    available: int = Field(examples=[1])


class RateLimitedBody(ErrorBody):
    """Too many attempts in the current window."""

    retry_after_s: int = Field(description="Seconds until the next try is counted.", examples=[42])


class FieldError(BaseModel):
    """One invalid field: where it is, and why (the input is never echoed back)."""

    loc: list[str | int] = Field(examples=[["body", "lines", 0, "quantity"]])
    msg: str = Field(examples=["Input should be greater than or equal to 1"])
    type: str = Field(examples=["greater_than_equal"])


class ValidationErrorBody(BaseModel):
    """Every invalid field of the request."""

    detail: list[FieldError]


_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
}
_ERRORS: dict[int, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "No bearer token, or one that is invalid or expired.",
        "headers": {
            "WWW-Authenticate": {
                "description": "Always `Bearer`: sign in at POST /auth/token.",
                "schema": {"type": "string"},
            }
        },
    },
    403: {"model": ErrorBody, "description": "Signed in, but this route is for admins."},
    404: {"model": NotFoundBody, "description": "No such resource, or not yours."},
    409: {"model": ConflictBody, "description": "The current state forbids this."},
    413: {"model": ErrorBody, "description": "The request body is larger than the shop accepts."},
    422: {
        "model": ValidationErrorBody,
        "description": "A field is missing or invalid: `loc` names it, `msg` says why.",
    },
    429: {
        "model": RateLimitedBody,
        "description": "Too many attempts: wait `Retry-After` seconds.",
        "headers": _RETRY_AFTER,
    },
    503: {
        "model": ErrorBody,
        "description": "The database is busy or unavailable: retry after `Retry-After` seconds.",
        "headers": _RETRY_AFTER,
    },
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer these error statuses."""
    return {code: _ERRORS[code] for code in codes}


def conflict(
    description: str, model: type[BaseModel] | UnionType = ConflictBody
) -> dict[int | str, Any]:
    """The `responses=` entry of a route's 409, saying when it happens (and, with a union of
    models, the bodies it may have)."""
    return {409: {"model": model, "description": description}}


def operation_id(route: APIRoute) -> str:
    """Operation ids are the route functions' names: short, stable, and unique (checked by the
    OpenAPI tests)."""
    return route.name
