"""Typed FastAPI dependencies: the database, the settings, and who is calling."""

# No `from __future__ import annotations` here: FastAPI reads the parameters of
# `_BearerPrincipal.__call__`, and older releases (0.120, the lowest this project allows) did not
# resolve the string annotations of a callable instance: `request: Request` became a query
# parameter.

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer

from app.adapters.assets import Assets
from app.adapters.cache import Cache
from app.adapters.db import Database, Databases
from app.adapters.resources import Resources
from app.kernel.errors import Forbidden, Unauthenticated
from app.kernel.security import Principal


def _state(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


# Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a thread
# pool, and those thread hops cost more CPU than the whole database read of a product.
async def _resources(request: Request) -> Resources:
    return _state(request)


async def _db(request: Request) -> Database:
    return _state(request).db


async def _databases(request: Request) -> Databases:
    return _state(request).databases


async def _cache(request: Request) -> Cache | None:
    return _state(request).cache


async def _assets(request: Request) -> Assets:
    return _state(request).assets


ResourcesDep = Annotated[Resources, Depends(_resources)]
DatabaseDep = Annotated[Database, Depends(_db)]
DatabasesDep = Annotated[Databases, Depends(_databases)]
"""The write databases by function (stage 8's federation), for routes of accounting and
delivery, whose data may live in a database of its own."""
CacheDep = Annotated[Cache | None, Depends(_cache)]
AssetsDep = Annotated[Assets, Depends(_assets)]


class _BearerPrincipal(OAuth2PasswordBearer):
    """Who is calling, from the bearer token, in one dependency.

    The OAuth2 password flow is how /docs signs in (Authorize: e-mail and password); on the
    wire it is the same bearer token. Resolving the principal in the security scheme's own
    call, rather than in a dependency on it, saves FastAPI a dependency node on every
    signed-in request."""

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        token = await super().__call__(request)  # None without "Bearer" (auto_error is off)
        if not token:
            raise Unauthenticated("a bearer token is required")
        resources = _state(request)
        claimed = resources.verifier.verify(token)
        # A token is only as good as the account behind it: a deleted account loses access
        # and a changed role applies within settings.account_check_s, whatever the token says.
        role = await resources.accounts.current_role(claimed.customer_id)
        if role is None:
            raise Unauthenticated("the account of this token does not exist")
        return claimed if role is claimed.role else Principal(claimed.customer_id, role)


_principal = _BearerPrincipal(
    tokenUrl="/auth/token",
    scheme_name="OAuth2PasswordBearer",
    auto_error=False,
    description="Sign in with your e-mail (as the username) and password.",
)


PrincipalDep = Annotated[Principal, Depends(_principal)]


async def _admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this endpoint is for admins")
    return principal


AdminDep = Annotated[Principal, Depends(_admin)]


MAX_PAGE = 100

# Paging is two plain query parameters, not a dependency that bundles them: a dependency node
# costs FastAPI more per request than the two parameters themselves.
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")]
PageOffset = Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")]
