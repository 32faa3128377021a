"""`shop worker` (stage 7): takes order events off the queue and applies them (app/orders/flows.py).

Messages are received in batches (long polling), handled one after another, and the handled
ones deleted at the end of the batch. A handler is idempotent per event (processed_event), so a
message received again (a worker killed before its delete, an event the relay published twice)
changes nothing. A message whose handling fails is left on the queue: SQS shows it again after
the queue's visibility timeout and, after the redrive policy's receive count, moves it to the
dead-letter queue; the worker logs that last failed attempt as such.

SIGTERM lets the worker finish the receive it is waiting on (at most SHOP_WORKER_WAIT_S) and the
batch it brings, then it exits 0. Its metrics are served by prometheus-client's own HTTP server
on SHOP_WORKER_METRICS_PORT: a worker has no web server, and a scrape endpoint of its own
needs no node exporter on the instance (the textfile approach would) and doubles as a
liveness probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, start_http_server
from sqlalchemy.exc import DBAPIError

from app.core import aws
from app.core.db import Database
from app.core.mail import Mailer, mailer_for
from app.core.outbox import Event
from app.core.queue import Message, Queue
from app.core.settings import WorkerSettings
from app.migrations import runner
from app.orders.flows import HANDLERS

log = logging.getLogger("shop.worker")

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PROCESSED = Counter(
    "shop_worker_events_processed",
    "Events handled (or found handled already), by kind.",
    ["kind"],
    registry=REGISTRY,
)
FAILED = Counter(
    "shop_worker_events_failed",
    "Handling attempts that failed, by kind; the message comes back after its visibility timeout.",
    ["kind"],
    registry=REGISTRY,
)
DEAD_LETTERED = Counter(
    "shop_worker_events_dead_lettered",
    "Messages whose last allowed attempt failed, by kind: SQS moves them to the dead-letter queue.",
    ["kind"],
    registry=REGISTRY,
)
QUEUE_AGE = Gauge(
    "shop_worker_queue_age_seconds",
    "Age of the oldest message of the last batch received (0 when it was empty): how far the "
    "workers are behind.",
    registry=REGISTRY,
)
EVENT_LAG = Gauge(
    "shop_worker_last_event_age_seconds",
    "Seconds between the last handled message's first send and the end of its handling.",
    registry=REGISTRY,
)
BATCHES = Counter("shop_worker_batches", "Receive calls that returned.", registry=REGISTRY)


class WorkerProblem(RuntimeError):
    """The worker cannot run with this configuration; the message says why."""


class Worker:
    def __init__(
        self,
        db: Database,
        queue: Queue,
        mailer: Mailer,
        *,
        batch_size: int = 10,
        wait_s: int = 10,
    ) -> None:
        self.db = db
        self.queue = queue
        self.mailer = mailer
        self.batch_size = batch_size
        self.wait_s = wait_s
        self.stopping = asyncio.Event()
        self.max_receives: int | None = None

    async def handle(self, message: Message) -> bool:
        """Apply one message's event; True when it may be deleted."""
        kind = "?"
        try:
            event = Event.from_message(message.body)
            kind = event.kind
            handler = HANDLERS.get(event.kind)
            if handler is None:
                raise ValueError(f"no handler for events of kind {event.kind!r}")
            await handler(self.db, self.mailer, event.id, event.payload)
        except Exception as exc:
            FAILED.labels(kind).inc()
            last = self.max_receives is not None and message.receive_count >= self.max_receives
            if last:
                DEAD_LETTERED.labels(kind).inc()
                log.error(
                    "message %s (%s) failed on its last attempt (%d of %d): it goes to the "
                    "dead-letter queue: %s",
                    message.id,
                    kind,
                    message.receive_count,
                    self.max_receives,
                    exc,
                )
            else:
                log.warning(
                    "message %s (%s) failed (attempt %d), it will come back: %s",
                    message.id,
                    kind,
                    message.receive_count,
                    exc,
                )
            return False
        PROCESSED.labels(kind).inc()
        EVENT_LAG.set(message.age_s)
        return True

    async def run_once(self) -> int:
        """Receive one batch, handle it, delete what was handled; how many were handled."""
        messages = await self.queue.receive(max_messages=self.batch_size, wait_s=self.wait_s)
        BATCHES.inc()
        QUEUE_AGE.set(max((m.age_s for m in messages), default=0.0))
        done = [m.receipt for m in messages if await self.handle(m)]
        if done:
            await self.queue.delete(done)
        return len(done)

    async def run(self) -> None:
        """Batches until SIGTERM (or `stopping` is set); each batch is finished first."""
        try:
            self.max_receives = await self.queue.max_receive_count()
        except Exception as exc:  # the worker can work without knowing it
            log.warning("cannot read the queue's redrive policy: %s", exc)
        log.info(
            "worker: consuming %s (dead-letter after %s receives)",
            self.queue.url,
            self.max_receives or "no",
        )
        while not self.stopping.is_set():
            try:
                await self.run_once()
            except (OSError, DBAPIError) as exc:
                log.warning("worker: %s; retrying in 1 s", exc)
                await asyncio.sleep(1)
            except Exception as exc:
                if type(exc).__module__.startswith("botocore"):
                    log.warning("worker: queue unavailable (%s); retrying in 1 s", exc)
                    await asyncio.sleep(1)
                else:
                    raise
        log.info("worker: stopped after finishing its batch")


async def open_database(settings: WorkerSettings) -> Database:
    """The primary only (a worker writes); WorkerProblem when its schema is not current."""
    try:
        resolved = await asyncio.to_thread(aws.resolve, settings)
    except aws.SecretProblem as exc:
        raise WorkerProblem(str(exc)) from exc
    db = Database(
        resolved.primary_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout_s,
        statement_timeout_ms=settings.database_statement_timeout_ms,
        lock_timeout_ms=settings.database_lock_timeout_ms,
        prepared_statements=settings.database_prepared_statements,
    )
    try:
        await runner.open_checked(db)
    except runner.SchemaProblem as exc:
        raise WorkerProblem(str(exc)) from exc
    return db


async def serve(settings: WorkerSettings) -> None:
    """The whole life of `shop worker`: open, consume until SIGTERM or SIGINT, close."""
    if not settings.queue_url:
        raise WorkerProblem("SHOP_QUEUE_URL is not set: there is no queue to work from")
    db = await open_database(settings)
    # After the schema check: a deployment waits for this port to call the worker started.
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, registry=REGISTRY)
    worker = Worker(
        db,
        Queue(
            settings.queue_url,
            region=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
        ),
        mailer_for(settings),
        batch_size=settings.worker_batch_size,
        wait_s=settings.worker_wait_s,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stopping.set)
    started = time.perf_counter()
    try:
        await worker.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await db.dispose()
        log.info("worker: ran %.0f s", time.perf_counter() - started)
