"""create_app(settings): the one place where routers, middleware and the lifespan meet."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from sqlalchemy import text

from app.accounting.router import router as accounting_router
from app.catalog.router import router as catalog_router
from app.core import aws
from app.core.db import Database
from app.core.deps import Resources, ResourcesDep
from app.core.docs import install_docs
from app.core.http import BodyLimit, install_error_handlers
from app.core.openapi import operation_id
from app.core.security import LocalTokens, Passwords
from app.core.settings import Settings
from app.customers.router import router as customers_router
from app.delivery.router import router as delivery_router
from app.orders.router import router as orders_router

log = logging.getLogger("shop")


async def open_resources(settings: Settings) -> Resources:
    """Read secrets, open pools and clients: everything a running shop holds."""
    resolved = await asyncio.to_thread(aws.resolve, settings)
    db = Database(
        resolved.primary_url,
        resolved.replica_urls,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout_s,
    )
    await db.open()
    tokens = LocalTokens(
        secret=resolved.jwt_secret, issuer=settings.jwt_issuer, ttl_s=settings.jwt_ttl_s
    )
    passwords = Passwords(
        time_cost=settings.password_time_cost, memory_kib=settings.password_memory_kib
    )
    redis = Redis.from_url(resolved.redis_url) if resolved.redis_url else None
    return Resources(
        settings=settings,
        db=db,
        tokens=tokens,
        verifier=tokens,
        passwords=passwords,
        redis=redis,
    )


async def close_resources(resources: Resources) -> None:
    if resources.redis is not None:
        await resources.redis.aclose()
    await resources.db.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.resources = await open_resources(settings)
        try:
            yield
        finally:
            await close_resources(app.state.resources)

    app = FastAPI(
        title="Shop",
        summary="One shop carried through every stage of 'Scaling up to your first 10M users'.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # install_docs serves the docs pages from local assets, not a CDN
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    install_docs(app)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    for router in (
        catalog_router,
        customers_router,
        orders_router,
        accounting_router,
        delivery_router,
    ):
        app.include_router(router)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers. Needs no database."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        responses={503: {"description": "The database or the cache is down: see `checks`."}},
    )
    async def readyz(res: ResourcesDep) -> JSONResponse:
        """Readiness: the database (and the cache, when configured) answer. 503 otherwise."""
        checks: dict[str, str] = {}
        try:
            async with res.db.read() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        if res.redis is not None:
            try:
                await res.redis.ping()
                checks["cache"] = "ok"
            except Exception as exc:
                checks["cache"] = f"unavailable: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "checks": checks},
            status_code=200 if ready else 503,
        )

    return app
