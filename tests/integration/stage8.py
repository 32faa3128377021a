"""What stage 8's tests share (test_federation.py, test_sharding.py): databases migrated as
`shop migrate` does, a shop on them with the queue on moto's SQS, and a worker to drain it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import text

from app.adapters.db import Database
from app.adapters.queue import Queue
from app.adapters.resources import Resources
from app.adapters.shards import read_directory
from app.catalog import service as catalog
from app.worker import Worker
from tests.conftest import REDIS_URL, test_settings
from tests.integration.conftest import TABLES
from tests.integration.test_outbox import REGION, RecordingMailer, drain

ALL_TABLES = f"{TABLES}, reservation, order_fence, shard_move"


def migrated(fresh_database: Callable[[], str], names: tuple[str, ...]) -> dict[str, str]:
    """An empty database per name, migrated; those named `shard-*` prepared as shards."""
    from app.migrations import runner

    urls = {name: fresh_database() for name in names}
    for name, url in urls.items():
        runner.upgrade(url)
        if name.startswith("shard-"):
            runner.prepare_shard(url)
    return urls


@asynccontextmanager
async def shop_on(
    moto_endpoint: str, queue_url: str, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Resources]]:
    """The shop with the queue and `settings` (its databases), every table of every database
    emptied first, and a client for it."""
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    drain(moto_endpoint, queue_url)
    application = create_app(
        test_settings(
            redis_url=REDIS_URL,
            queue_url=queue_url,
            aws_region=REGION,
            aws_endpoint_url=moto_endpoint,
            outbox_sweep_s=60,
            **settings,
        )
    )
    async with LifespanManager(application, startup_timeout=30):
        resources: Resources = application.state.resources
        dbs = resources.databases
        for db in dbs.all():
            async with db.write() as conn:
                await conn.execute(text(f"TRUNCATE {ALL_TABLES} RESTART IDENTITY CASCADE"))
        if dbs.shards:  # the directory as first filled, whatever an earlier test moved
            await rows(
                dbs.main,
                "UPDATE shard_map SET shard = logical % :n + 1, version = 1",
                n=len(dbs.shards),
            )
            dbs.directory.update((await read_directory(dbs.main))[1])
        await catalog.catalog_changed(resources.cache)
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:
            yield c, resources


async def rows(db: Database, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    async with db.write() as conn:
        result = await conn.execute(text(sql), params)
        return [tuple(r) for r in result] if result.returns_rows else []


def worker_of(resources: Resources, moto_endpoint: str, queue_url: str, **kwargs: Any) -> Worker:
    queue = Queue(queue_url, region=REGION, endpoint_url=moto_endpoint)
    return Worker(
        resources.db,
        queue,
        kwargs.pop("mailer", RecordingMailer()),
        wait_s=0,
        databases=resources.databases,
        **kwargs,
    )


async def published(resources: Resources) -> None:
    """Wait until the relay has published every event of every database that records them (it
    does so right after each commit)."""
    unpublished = "SELECT id FROM outbox_event WHERE published_at IS NULL"
    for _ in range(100):
        if not any([await rows(db, unpublished) for db in resources.databases.recording()]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the relay did not publish")


async def work_off(resources: Resources, worker: Worker) -> None:
    """Once the relay has published everything, run the worker until the queue is empty."""
    await published(resources)
    for _ in range(20):
        if await worker.run_once() == 0:
            return
    raise AssertionError("the queue did not empty")
