"""`shop worker` (stage 7): takes order events off the queue and applies them (app/orders/flows.py).

Messages are received in batches (long polling), handled one after another, and the handled
ones deleted at the end of the batch. A handler is idempotent per event (processed_event), so a
message received again (a worker killed before its delete, an event the relay published twice)
changes nothing. A message whose handling fails is left on the queue: SQS shows it again after
the queue's visibility timeout and, after the redrive policy's receive count, moves it to the
dead-letter queue; the worker logs that last failed attempt as such.

A handled message's event is marked handled (outbox_event.handled_at). Between two batches,
every `purge_every_s`, the worker reconciles: an event still unhandled `redrive_after` after it
was recorded (its message lost, dead-lettered, or never published) is applied by the worker
itself, on the same claims, so every step still happens once; a failure is logged and tried
again at the next pass. `shop worker redrive` moves the dead-letter queue's messages back.

With stage 8's databases (federation, order shards) the worker writes each step in the
database it belongs to, marks and reconciles events in every shard's outbox, and, on the same
schedule as the purge, settles what a crash left between databases: a cancellation under way
for more than CANCEL_FINISHED_WITHIN, and stock held for an order past SHOP_ORDER_HOLD_S
(app/orders/service.py).

The worker also keeps its tables bounded
(`Retention`): handled outbox events and processed-event claims older than the retention,
and Idempotency-Keys older than their TTL, are deleted in batches of one transaction each, at
most MAX_PURGE_BATCHES per table and pass. The sizes of those tables are then sampled into
`shop_worker_table_rows`.

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
import uuid
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, start_http_server
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.adapters import aws, outbox
from app.adapters.db import Database, Databases
from app.adapters.mail import Mailer, mailer_for
from app.adapters.outbox import Event
from app.adapters.queue import Message, Queue
from app.adapters.shards import DirectoryProblem, follow_directory
from app.adapters.tracing import (
    WORKER_SERVICE,
    continue_trace,
    quiet,
    record_failure,
    span,
    tracing_for,
)
from app.kernel.models import utcnow
from app.kernel.settings import WorkerSettings
from app.migrations import runner
from app.orders import service as orders
from app.orders.flows import HANDLERS, recorded_in

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
PURGED = Counter(
    "shop_worker_rows_purged",
    "Rows the retention purge deleted, by table.",
    ["table"],
    registry=REGISTRY,
)
TABLE_ROWS = Gauge(
    "shop_worker_table_rows",
    "Rows of the tables the worker keeps bounded (outbox_event, processed_event, "
    "idempotency_key; with stage 8's shards, reservation and order_fence too), summed over "
    "its databases, sampled after each purge.",
    ["table"],
    registry=REGISTRY,
)

REDRIVEN = Counter(
    "shop_worker_events_redriven",
    "Events reconciliation applied because no worker had finished them in time (their "
    "message lost, dead-lettered or never published), by kind.",
    ["kind"],
    registry=REGISTRY,
)

HOLDS_SETTLED = Counter(
    "shop_worker_holds_settled",
    "Stage 8: stock holds the worker settled past SHOP_ORDER_HOLD_S, by outcome (`released`: "
    "the order never committed, its stock returned; `confirmed`: it did). Any count means a "
    "placing request died between the stock's database and its shard.",
    ["state"],
    registry=REGISTRY,
)
HOLDS_CONFIRMED = Counter(
    "shop_worker_holds_confirmed",
    "Stage 8: stock holds the worker confirmed in its pass because their order committed "
    "(every placed order's, in batches: the placing request leaves its hold held).",
    registry=REGISTRY,
)
CANCELS_FINISHED = Counter(
    "shop_worker_cancels_finished",
    "Stage 8: cancellations a crash left half done that the worker finished.",
    registry=REGISTRY,
)

PURGED_TABLES = ("outbox_event", "processed_event", "idempotency_key")
MAX_PURGE_BATCHES = 10
CONFIRM_BATCH = 1000
"""Stage 8: holds confirmed per statement on the main database in the worker's pass."""
CANCEL_FINISHED_WITHIN = timedelta(seconds=30)
"""Stage 8: a cancellation still under way this long after it was asked for was left by a
crash (its request takes well under a second); reconciliation finishes it."""
"""Batches per table and purge pass: a backlog is worked off over several passes, and the
queue is not held up meanwhile."""


@dataclass(frozen=True, slots=True)
class Retention:
    """What the worker purges, and how often (see the module's docstring)."""

    keep_events: timedelta
    """Handled outbox events and processed-event claims older than this go."""
    keep_keys: timedelta
    """Idempotency-Keys older than this (their TTL) go."""
    every_s: float = 60.0
    batch: int = 1000
    redrive_after: timedelta | None = timedelta(minutes=15)
    """Events still unhandled this long after they were recorded are applied by the worker
    (None: never)."""


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
        retention: Retention | None = None,
        databases: Databases | None = None,
    ) -> None:
        self.db = db
        self.databases = databases or Databases.single(db)
        """Where the handlers write: `db` in every role before stage 8's federation."""
        self.queue = queue
        self.mailer = mailer
        self.batch_size = batch_size
        self.wait_s = wait_s
        self.retention = retention
        self.stopping = asyncio.Event()
        self.max_receives: int | None = None
        self._next_purge = 0.0

    async def handle(self, message: Message) -> bool:
        """Apply one message's event; True when it may be deleted.

        Traced as `worker.handle`, in the trace of the request that placed the order (its
        context travels in the message's attributes); a failure marks the span, and its log
        line names the trace."""
        with continue_trace(
            "worker.handle", message.attributes, kind="consumer", message_id=message.id
        ):
            return await self._handle(message)

    async def _handle(self, message: Message) -> bool:
        kind = "?"
        try:
            event = Event.from_message(message.body)
            kind = event.kind
            handler = HANDLERS.get(event.kind)
            if handler is None:
                raise ValueError(f"no handler for events of kind {event.kind!r}")
            await handler(self.databases, self.mailer, event.id, event.payload)
        except Exception as exc:
            record_failure(exc)
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
        """Receive one batch, handle it, mark its events handled, delete what was handled;
        how many were handled."""
        messages = await self.queue.receive(max_messages=self.batch_size, wait_s=self.wait_s)
        BATCHES.inc()
        QUEUE_AGE.set(max((m.age_s for m in messages), default=0.0))
        done = [m for m in messages if await self.handle(m)]
        if done:
            # Each event is marked in the database that recorded it (stage 8: its shard).
            handled: dict[int, tuple[Database, list[uuid.UUID]]] = {}
            for message in done:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    event = Event.from_message(message.body)
                    db = recorded_in(self.databases, event)
                    handled.setdefault(id(db), (db, []))[1].append(event.id)
            for db, event_ids in handled.values():
                await outbox.mark_handled(db, event_ids=event_ids)
            await self.queue.delete([m.receipt for m in done])
        return len(done)

    async def reconcile(self, *, limit: int = 100) -> int:
        """Apply the events no worker finished within `retention.redrive_after` (needs it),
        oldest first, at most `limit`; how many were applied. Their claims make a step that was
        done already, or that a worker is doing at this moment, a no-op."""
        assert self.retention is not None and self.retention.redrive_after is not None
        before = utcnow() - self.retention.redrive_after
        applied = 0
        for db in self.databases.recording():
            found = await outbox.unhandled(db, before=before, limit=limit)
            if found:
                # A pass that applies events is a trace of its own: their requests' traces are
                # not kept with them in the table.
                with continue_trace("worker.reconcile", {}, events=len(found)):
                    applied += await self._apply_unhandled(db, found)
        return applied

    async def settle(self, *, limit: int = 100) -> None:
        """Stage 8: confirm the holds of the orders placed since the last pass, and finish
        what a crash left between databases: cancellations under way for longer than
        CANCEL_FINISHED_WITHIN, and stock still held for orders past their hold (the fence in
        the order's shard says whether the order exists)."""
        if self.databases.split:
            finished = await orders.finish_requested_cancels(
                self.databases, older_than=CANCEL_FINISHED_WITHIN, limit=limit
            )
            CANCELS_FINISHED.inc(finished)
            # The holds of committed orders, in batches (their requests leave them held); a
            # batch not wholly confirmed has reached the holds of orders not committed yet.
            for _ in range(MAX_PURGE_BATCHES):
                confirmed = await orders.confirm_committed_holds(
                    self.databases, limit=CONFIRM_BATCH
                )
                HOLDS_CONFIRMED.inc(confirmed)
                if confirmed < CONFIRM_BATCH:
                    break
            settled = await orders.settle_expired_reservations(self.databases, limit=limit)
            for state, count in settled.items():
                HOLDS_SETTLED.labels(state).inc(count)

    async def _apply_unhandled(self, db: Database, events: list[Event]) -> int:
        applied = 0
        for event in events:
            handler = HANDLERS.get(event.kind)
            if handler is None:
                log.error("reconcile: no handler for event %s of kind %r", event.id, event.kind)
                continue
            try:
                with span("worker.redrive", event_id=str(event.id), kind=event.kind):
                    await handler(self.databases, self.mailer, event.id, event.payload)
            except Exception as exc:
                log.warning(
                    "reconcile: event %s (%s) failed, next pass: %s", event.id, event.kind, exc
                )
                continue
            await outbox.mark_handled(db, event_ids=[event.id])
            REDRIVEN.labels(event.kind).inc()
            log.warning(
                "reconcile: applied event %s (%s) %s, which no worker had finished",
                event.id,
                event.kind,
                dict(event.payload),
            )
            applied += 1
        return applied

    async def purge(self) -> dict[str, int]:
        """One retention pass (needs `retention`): rows deleted per table. Each batch is its own
        transaction; a table stops after a short batch or MAX_PURGE_BATCHES."""
        assert self.retention is not None
        retention = self.retention
        cutoff = utcnow() - retention.keep_events

        recording = self.databases.recording()

        async def outbox_event(limit: int) -> int:
            return sum(
                [await outbox.purge_handled(db, before=cutoff, limit=limit) for db in recording]
            )

        async def processed_event(limit: int) -> int:
            # Each database its handlers write keeps its own claims (stage 8: several).
            counts = [
                await outbox.purge_processed(db, before=cutoff, limit=limit)
                for db in self.databases.all()
            ]
            return sum(counts)

        async def idempotency_key(limit: int) -> int:
            return sum(
                [
                    await orders.purge_idempotency_keys(
                        db, older_than=retention.keep_keys, limit=limit
                    )
                    for db in recording
                ]
            )

        async def settled(limit: int) -> int:
            return await orders.purge_settled(self.databases, before=cutoff, limit=limit)

        deleted: dict[str, int] = {}
        jobs = [outbox_event, processed_event, idempotency_key]
        tables = list(PURGED_TABLES)
        if self.databases.shards:
            jobs.append(settled)
            tables.append("reservation")
        for table, job in zip(tables, jobs, strict=True):
            deleted[table] = 0
            for _ in range(MAX_PURGE_BATCHES):
                count = await job(retention.batch)
                deleted[table] += count
                if count < retention.batch:
                    break
            PURGED.labels(table).inc(deleted[table])
        await self.sample_table_rows()
        if any(deleted.values()):
            log.info("worker: purged %s", ", ".join(f"{n} {t}" for t, n in deleted.items()))
        return deleted

    async def sample_table_rows(self) -> None:
        """Set `shop_worker_table_rows`, summed over every database the worker writes (stage
        8's shards hold the outbox and the keys, the main database the holds): PostgreSQL's
        live-row statistics (no scan of the tables; current within a second or so), an exact
        count elsewhere."""
        tables = (
            (*PURGED_TABLES, "reservation", "order_fence")
            if self.databases.shards
            else PURGED_TABLES
        )
        found: dict[str, int] = dict.fromkeys(tables, 0)
        for db in self.databases.all():
            async with db.write() as conn:
                if db.dialect == "postgresql":
                    rows = await conn.execute(
                        text(
                            "SELECT relname, n_live_tup FROM pg_stat_user_tables "
                            "WHERE relname = ANY(:tables)"
                        ),
                        {"tables": list(tables)},
                    )
                    counts = {str(name): int(count) for name, count in rows}
                else:
                    counts = {
                        table: int(
                            (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
                        )
                        for table in tables
                    }
            for table in tables:
                found[table] += counts.get(table, 0)
        for table, count in found.items():
            TABLE_ROWS.labels(table).set(count)

    async def _purge_if_due(self) -> None:
        if self.retention is None or self.retention.every_s <= 0:
            return
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + self.retention.every_s
        try:
            await self.settle()
            if self.retention.redrive_after is not None:
                await self.reconcile()
            await self.purge()
        except Exception as exc:  # the next pass tries again; the queue must not wait
            log.warning(
                "worker: settle, reconcile or purge failed (%s); next in %.0f s",
                exc,
                self.retention.every_s,
            )

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
                await self._purge_if_due()
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
    return (await open_databases(settings)).main


async def open_databases(settings: WorkerSettings) -> Databases:
    """The primary, and stage 8's federated databases where set (a worker writes every one);
    WorkerProblem when a schema is not current."""
    try:
        resolved = await asyncio.to_thread(aws.resolve, settings)
    except aws.SecretProblem as exc:
        raise WorkerProblem(str(exc)) from exc
    db = Database(resolved.primary_url, **settings.pool_options)
    databases = Databases.federate(
        db, resolved.function_urls, resolved.shard_urls, **settings.pool_options
    )
    try:
        return await runner.open_all(databases)
    except (runner.SchemaProblem, DirectoryProblem) as exc:
        raise WorkerProblem(str(exc)) from exc


async def redrive(settings: WorkerSettings) -> int:
    """`shop worker redrive`: move the dead-letter queue's messages back to the queue; how
    many. Each is then handled once more, which its claims make a no-op for what was done."""
    if not settings.queue_url:
        raise WorkerProblem("SHOP_QUEUE_URL is not set: there is no queue to redrive into")
    queue = Queue(
        settings.queue_url, region=settings.aws_region, endpoint_url=settings.aws_endpoint_url
    )
    dead = await queue.dead_letter_queue()
    if dead is None:
        raise WorkerProblem(f"{settings.queue_url} has no dead-letter queue")
    return await dead.move_to(queue)


async def serve(settings: WorkerSettings) -> None:
    """The whole life of `shop worker`: open, consume until SIGTERM or SIGINT, close."""
    if not settings.queue_url:
        raise WorkerProblem("SHOP_QUEUE_URL is not set: there is no queue to work from")
    tracing = tracing_for(settings, service=WORKER_SERVICE)
    if tracing is not None:
        # Before the first connection, or its statements make no spans; after the logging
        # set-up, whose lines it tags with their trace id.
        tracing.start()
    try:
        # Quiet: the polling (receives, deletes, purges) would start a trace every few
        # seconds; each message's handling, and a reconciliation that applies events, are
        # spans of their own (continue_trace).
        with quiet():
            await _serve(settings)
    finally:
        if tracing is not None:
            tracing.stop()


async def _serve(settings: WorkerSettings) -> None:
    assert settings.queue_url is not None
    databases = await open_databases(settings)
    db = databases.main
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
        retention=Retention(
            keep_events=timedelta(hours=settings.worker_retention_h),
            keep_keys=timedelta(hours=settings.idempotency_ttl_h),
            every_s=settings.worker_purge_every_s,
            batch=settings.worker_purge_batch,
            redrive_after=(
                timedelta(seconds=settings.worker_redrive_after_s)
                if settings.worker_redrive_after_s > 0
                else None
            ),
        ),
        databases=databases,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stopping.set)
    started = time.perf_counter()
    # Stage 8: logical shards move between databases; the worker follows the directory too.
    follower = asyncio.create_task(follow_directory(databases)) if databases.shards else None
    try:
        await worker.run()
    finally:
        if follower is not None:
            follower.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        for each in databases.all():
            await each.dispose()
        log.info("worker: ran %.0f s", time.perf_counter() - started)
