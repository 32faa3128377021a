"""create_app(settings): the one place where routers, middleware and the lifespan meet."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from app.accounting.router import router as accounting_router
from app.adapters import aws
from app.adapters.assets import Assets
from app.adapters.cache import Cache, bounded_client, namespace_for
from app.adapters.db import Database, Databases
from app.adapters.dynamodb import VersionedTable
from app.adapters.mail import mailer_for
from app.adapters.outbox import Relay
from app.adapters.queue import Queue
from app.adapters.ratelimit import RateLimit
from app.adapters.replicas import PositionTokens
from app.adapters.resources import Resources
from app.adapters.shards import DirectoryProblem, follow_directory
from app.adapters.tracing import WEB_SERVICE, quiet, tracing_for
from app.carts.domain import CartStoreUnavailable
from app.carts.router import cart_store_unavailable
from app.carts.router import router as carts_router
from app.carts.store_dynamodb import KEY as CART_KEY
from app.catalog.router import IMAGE_UPLOAD
from app.catalog.router import router as catalog_router
from app.customers.router import router as customers_router
from app.customers.service import Accounts
from app.delivery.router import router as delivery_router
from app.kernel.security import LocalTokens, Passwords
from app.kernel.settings import Settings
from app.migrations import runner
from app.orders.router import router as orders_router
from app.storefront import router as storefront
from app.storefront.pages import too_large_page
from app.web.assets import install_static
from app.web.deps import ResourcesDep
from app.web.docs import ASSETS_URL, install_docs
from app.web.http import BodyLimit, DefaultCacheControl, include_flat, install_error_handlers
from app.web.lifecycle import drain_on_sigterm, sample_pools_forever
from app.web.observability import Observe, metrics_document
from app.web.openapi import operation_id
from app.web.replicas import ReadYourWrites

log = logging.getLogger("shop")


class StartupProblem(RuntimeError):
    """The shop cannot serve with this configuration; the message says why and what to do."""


async def open_resources(settings: Settings) -> Resources:
    """Read secrets, open pools and clients: everything a running shop holds.

    Raises StartupProblem when the database is not the one the shop needs (no embedded file,
    or a schema that is not at the latest migration), before anything is served.
    """
    if settings.is_embedded and not settings.embedded_path.is_file():
        raise StartupProblem(
            f"no shop database at {settings.embedded_path}; run `shop migrate` to create it "
            "(or set SHOP_SQLITE_PATH or SHOP_DATABASE_URL)"
        )
    try:
        resolved = await asyncio.to_thread(aws.resolve, settings)
    except aws.SecretProblem as exc:
        raise StartupProblem(str(exc)) from exc
    db = Database(
        resolved.primary_url,
        resolved.replica_urls,
        **settings.pool_options,
        **settings.replica_options,
    )
    databases = Databases.federate(
        db,
        resolved.function_urls,
        resolved.shard_urls,
        resolved.shard_replica_urls,
        settings.replica_options,
        **settings.pool_options,
    )
    try:
        databases = await runner.open_all(databases)
    except (runner.SchemaProblem, DirectoryProblem) as exc:
        raise StartupProblem(str(exc)) from exc
    tokens = LocalTokens(
        secret=resolved.jwt_secret, issuer=settings.jwt_issuer, ttl_s=settings.jwt_ttl_s
    )
    passwords = Passwords(
        time_cost=settings.password_time_cost,
        memory_kib=settings.password_memory_kib,
        threads=settings.password_hash_threads,
    )
    # Sign-in counts failures in Redis: a stalled server must cost it SHOP_CACHE_TIMEOUT_MS
    # (then it counts locally), not redis-py's default of 5 s per call.
    redis = (
        bounded_client(resolved.redis_url, timeout_s=settings.cache_timeout_ms / 1000)
        if resolved.redis_url
        else None
    )
    # The cache has a client of its own, whose connections its breaker drops and remakes.
    cache = (
        Cache.from_url(
            resolved.redis_url,
            namespace=namespace_for(db.describe()),
            ttl_s=settings.cache_stock_staleness_s,
            timeout_s=settings.cache_timeout_ms / 1000,
            backoff_s=settings.cache_backoff_s,
            local_s=settings.cache_local_copy_s,
            local_entries=settings.cache_local_entries,
        )
        if resolved.redis_url
        else None
    )
    relay = (
        Relay(
            databases.recording(),
            Queue(
                settings.queue_url,
                region=settings.aws_region,
                endpoint_url=settings.aws_endpoint_url,
            ),
            sweep_after_s=settings.outbox_sweep_s,
        )
        if settings.queue_url
        else None
    )
    # The S3 client (stage 5) is made here, once per process: making one costs tens of ms.
    assets = await Assets.from_settings(settings)
    return Resources(
        settings=settings,
        relay=relay,
        mailer=mailer_for(settings),
        db=db,
        databases=databases,
        assets=assets,
        tokens=tokens,
        verifier=tokens,
        passwords=passwords,
        accounts=Accounts(db, ttl_s=settings.account_check_s),
        sign_in_limit=RateLimit(name="sign-in", window_s=settings.sign_in_window_s, redis=redis),
        redis=redis,
        cache=cache,
        positions=(
            PositionTokens(resolved.jwt_secret)
            if any(each.replicas for each in databases.all())
            else None
        ),
        carts_table=(
            await asyncio.to_thread(
                VersionedTable.open,
                table=settings.carts_table,
                key=CART_KEY,
                region=settings.aws_region,
                endpoint_url=settings.aws_endpoint_url,
            )
            if settings.carts_table
            else None
        ),
    )


async def close_resources(resources: Resources) -> None:
    if resources.redis is not None:
        await resources.redis.aclose()
    if resources.cache is not None:
        await resources.cache.close()
    resources.passwords.close()
    if resources.carts_table is not None:
        resources.carts_table.close()
    resources.assets.close()
    for db in resources.databases.all():
        await db.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    tracing = tracing_for(settings, service=WEB_SERVICE)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if tracing is not None:
            tracing.start()  # before the first connection, or its statements make no spans
        try:
            # Quiet: the tasks started here (replica health checks, the cache's listener)
            # would start a trace every few seconds.
            with quiet():
                resources = await open_resources(settings)
        except StartupProblem as exc:
            log.error("shop cannot start: %s", exc)
            if tracing is not None:
                tracing.stop()
            raise
        app.state.resources = resources
        sampler = asyncio.create_task(sample_pools_forever(resources)) if settings.metrics else None
        # Stage 8: logical shards move between databases; every process follows the directory.
        dbs = resources.databases
        follower = asyncio.create_task(follow_directory(dbs)) if dbs.shards else None
        if resources.relay is not None:
            await resources.relay.start()
        try:
            with drain_on_sigterm(resources, settings.drain_s):
                yield
        finally:
            if sampler is not None:
                sampler.cancel()
            if follower is not None:
                follower.cancel()
            if resources.relay is not None:
                await resources.relay.stop()
            await close_resources(resources)
            if tracing is not None:
                tracing.stop()

    app = FastAPI(
        title="Shop",
        summary="One shop carried through every stage of 'Scaling up to your first 10M users'.",
        # 0.2.0: order ids are 64-bit, up to 2^53 - 1 (stage 8's carry their logical shard).
        version="0.2.0",
        lifespan=lifespan,
        docs_url=None,  # install_docs serves the docs pages from local assets, not a CDN
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    if tracing is not None:
        tracing.instrument_app(app)
    # FastAPI matches a request against the routes in order, and each route tried costs CPU on
    # every request: the shop's API comes first, the docs, static files and schema last.
    framework_routes = list(app.router.routes)
    install_error_handlers(app)
    app.add_exception_handler(CartStoreUnavailable, cart_store_unavailable)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        larger=[
            ("PUT", IMAGE_UPLOAD, settings.image_max_bytes),
            ("POST", storefront.IMAGE_UPLOAD, settings.image_max_bytes),
        ],
        page=too_large_page,
    )
    # Read-your-writes: the request's position from its token, a new token when it wrote.
    app.add_middleware(ReadYourWrites, tokens=lambda: app.state.resources.positions)
    # Every answer that did not choose its Cache-Control (errors, a 413 included, and anything
    # signed in) is private; the docs' assets are revalidated by their ETag.
    app.add_middleware(DefaultCacheControl, revalidate=[ASSETS_URL + "/"])
    # Outermost, so that its timings and request id cover every answer, a 413 included.
    app.add_middleware(Observe, metrics=settings.metrics, access_log=settings.access_log)
    for router in (  # the most requested first
        catalog_router,
        orders_router,
        carts_router,
        customers_router,
        delivery_router,
        accounting_router,
    ):
        include_flat(app, router)
    # The pages at / and /shop/..., with error pages of their own; after every other handler.
    storefront.install(app)

    if settings.metrics:

        @app.get("/metrics", tags=["operations"], response_class=Response)
        async def metrics() -> Response:
            """Prometheus metrics of every worker: request latency by route and status,
            requests in flight, database time per request, pools, cache and replica use.
            The stacks keep this path off the load balancer."""
            document, media_type = metrics_document()
            return Response(document, media_type=media_type)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers. Needs no database."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        responses={503: {"description": "The database is down: see `checks`."}},
    )
    async def readyz(res: ResourcesDep) -> JSONResponse:
        """Readiness: the database answers. 503 otherwise, and 503 from the moment the
        process is told to stop (SIGTERM) while it drains. The cache, when configured, is
        reported in `checks` ("ok" or "degraded: ...") but never makes this 503: without it
        the shop serves from the database."""
        if res.draining:
            return JSONResponse(
                {"status": "draining", "checks": {}},
                status_code=503,
                headers={"Connection": "close"},
            )
        checks: dict[str, str] = {}
        try:
            async with res.db.read() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        if res.cache is not None:
            checks["cache"] = await res.cache.check()
        ready = checks["database"] == "ok"
        status = "ok" if all(v == "ok" for v in checks.values()) else "degraded"
        return JSONResponse(
            {"status": status if ready else "unavailable", "checks": checks},
            status_code=200 if ready else 503,
        )

    install_docs(app)
    install_static(app)
    app.router.routes[:] = [
        *(route for route in app.router.routes if route not in framework_routes),
        *framework_routes,
    ]
    return app
