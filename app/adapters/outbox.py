"""The transactional outbox (stage 7): events written in the transaction that caused them, relayed
to the queue after its commit, and applied by a worker at most once per event and step.

Nothing is lost: an event is a row committed with the work that caused it, so it exists exactly
when that work does. The relay publishes it right after the commit and marks it published; a
sweep publishes whatever is still unpublished a few seconds later (a process that died between
its commit and its publish, a queue that did not answer). So an event may be published twice,
and a worker may receive it twice: `claim` makes each step of its handler run at most once,
because the claim is a row of `processed_event` written in the handler's own transaction.

This module knows no domain: what an event means is the business of the module that writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import (
    JSON,
    Index,
    String,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from app.adapters.db import Database, Tx, insert_or_ignore, named_values, run
from app.adapters.queue import Queue
from app.adapters.tracing import carrier, continue_trace, quiet
from app.kernel.models import Base, UtcDateTime, utcnow

log = logging.getLogger("shop.outbox")


class OutboxEvent(Base):
    __tablename__ = "outbox_event"
    # The sweep looks for unpublished events by age; reconciliation for unhandled ones.
    __table_args__ = (
        Index("ix_outbox_event_published_at_created_at", "published_at", "created_at"),
        Index("ix_outbox_event_handled_at_created_at", "handled_at", "created_at"),
    )

    # Made by the writer, not the database: the INSERT needs no round trip of its own in a
    # pipelined transaction, and the id names the event on the queue and in processed_event.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Until when a sweep has claimed the unpublished event to send it (a lease, not a lock:
    # the claim is committed before the queue is called, so no row lock or connection is held
    # across the network; a sweep that died is replaced once the lease is over).
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # When a worker finished every step of its handler (NULL until then): what reconciliation
    # looks for, and what the purge waits for.
    handled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ProcessedEvent(Base):
    __tablename__ = "processed_event"
    # The purge looks for old claims by age.
    __table_args__ = (Index("ix_processed_event_processed_at", "processed_at"),)

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    step: Mapped[str] = mapped_column(String(32), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(UtcDateTime())


@dataclass(frozen=True, slots=True)
class Event:
    """One outbox event, as written and as it travels on the queue."""

    id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    trace: Mapping[str, str] = field(default_factory=dict, compare=False)
    """The trace context of the code that recorded it (W3C traceparent/tracestate; empty with
    tracing off, and for an event read back from the table: it is kept in memory only). It
    travels in the message's attributes, not its body, so a worker's spans join that trace."""
    origin: Database | None = field(default=None, compare=False)
    """The database whose outbox holds it, where the relay serves several (stage 8's shards):
    only that one is told it was published. None: every database the relay serves."""

    def to_message(self) -> str:
        return json.dumps({"id": str(self.id), "kind": self.kind, "payload": self.payload})

    @classmethod
    def from_message(cls, body: str) -> Event:
        """The event a queue message carries; ValueError when it carries none."""
        try:
            data = json.loads(body)
            return cls(id=uuid.UUID(data["id"]), kind=str(data["kind"]), payload=data["payload"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not an outbox event: {body[:200]!r}") from exc


_INSERT_EVENT = insert(OutboxEvent).values(named_values("id", "kind", "payload", "created_at"))


async def record(conn: Tx, *, kind: str, payload: Mapping[str, Any]) -> Event:
    """Write an event in the caller's transaction (pipelined blocks included); it exists if and
    only if that transaction commits. Hand it to `Relay.publish_soon` after the commit."""
    event = Event(id=uuid.uuid4(), kind=kind, payload=dict(payload), trace=carrier())
    await run(
        conn,
        _INSERT_EVENT,
        {"id": event.id, "kind": kind, "payload": event.payload, "created_at": utcnow()},
    )
    return event


async def claim(conn: AsyncConnection, *, event_id: uuid.UUID, step: str) -> bool:
    """Claim one step of an event's handling for the caller's transaction: True the first time,
    False once a committed transaction has claimed it. A concurrent claim of the same step (the
    same event delivered twice at once) waits for the first and then answers False; a claim
    rolled back (a failure, a killed worker) is free again."""
    return await insert_or_ignore(
        conn,
        ProcessedEvent.__table__,  # type: ignore[arg-type]
        {"event_id": event_id, "step": step, "processed_at": utcnow()},
    )


async def mark_handled(db: Database, *, event_ids: Sequence[uuid.UUID]) -> None:
    """Record that a worker finished these events' handlers (an event handled without having
    been published, by reconciliation, counts as published too: the sweep leaves it)."""
    if not event_ids:
        return
    now = utcnow()
    async with db.write() as conn:
        await conn.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(event_ids), OutboxEvent.handled_at.is_(None))
            .values(handled_at=now, published_at=func.coalesce(OutboxEvent.published_at, now))
        )


async def unhandled(db: Database, *, before: datetime, limit: int) -> list[Event]:
    """Up to `limit` events recorded before `before` that no worker has finished, oldest
    first: their message was lost, dead-lettered, or never published."""
    async with db.write() as conn:
        found = await conn.execute(
            select(OutboxEvent.id, OutboxEvent.kind, OutboxEvent.payload)
            .where(OutboxEvent.handled_at.is_(None), OutboxEvent.created_at < before)
            .order_by(OutboxEvent.created_at)
            .limit(limit)
        )
        return [Event(id=r.id, kind=r.kind, payload=r.payload) for r in found]


async def purge_handled(db: Database, *, before: datetime, limit: int) -> int:
    """Delete up to `limit` events handled before `before`, oldest first, in one transaction;
    how many. An event no worker has finished (unpublished, or still failing) is never
    deleted, whatever its age."""
    oldest = (
        select(OutboxEvent.id)
        .where(OutboxEvent.handled_at < before)
        .order_by(OutboxEvent.handled_at)
        .limit(limit)
    )
    async with db.write() as conn:
        result = await conn.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(oldest)))
    return int(result.rowcount)


async def purge_processed(db: Database, *, before: datetime, limit: int) -> int:
    """Delete up to `limit` claims made before `before`, oldest first, in one transaction;
    how many. An event received again after its claims are gone is applied again: keep them
    longer than any queue keeps a message."""
    key = tuple_(ProcessedEvent.event_id, ProcessedEvent.step)
    oldest = (
        select(ProcessedEvent.event_id, ProcessedEvent.step)
        .where(ProcessedEvent.processed_at < before)
        .order_by(ProcessedEvent.processed_at)
        .limit(limit)
    )
    async with db.write() as conn:
        result = await conn.execute(delete(ProcessedEvent).where(key.in_(oldest)))
    return int(result.rowcount)


# Rows another transaction holds (a sweep sending the same events) are skipped, not waited
# for: that sweep marks them itself, and waiting would cost the relay a lock timeout each time.
_MARK_PUBLISHED = (
    update(OutboxEvent)
    .where(
        OutboxEvent.id.in_(
            select(OutboxEvent.id)
            .where(
                OutboxEvent.id.in_(bindparam("ids", expanding=True)),
                OutboxEvent.published_at.is_(None),
            )
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(published_at=bindparam("now", type_=UtcDateTime()))
)

PUBLISH_BATCH = 10
"""Messages per SendMessageBatch: SQS's maximum."""

CLAIM_S = 120.0
"""How long a sweep's claim on the events it sends lasts: above the longest a send can take
(3 attempts of a 25 s read timeout, app/adapters/queue.py), so two live sweeps never send one
event, and short enough that the events of a sweep that died are sent again soon."""

MAX_PENDING = 10_000
"""Events a process's relay keeps in memory for publishing; beyond it (the queue stalled) new
ones are left to the sweep, which finds them in the table."""

RELAY_PENDING = Gauge(
    "shop_outbox_relay_pending",
    "Events waiting in the relay's memory to be published (at most MAX_PENDING per process).",
    multiprocess_mode="livesum",
)
RELAY_DROPPED = Counter(
    "shop_outbox_relay_dropped",
    "Events the relay's full memory queue left to the sweep (back-pressure from a stalled "
    "queue); they are published by the sweep, not lost.",
)


class Relay:
    """Publishes outbox events to the queue and marks them published.

    `publish_soon` takes the events a request has just committed and returns at once: a
    background task sends them (up to 10 per call). A second task, the sweep, publishes every
    `sweep_after_s` the events that are older than that and still unpublished. Failures are
    logged and left to the sweep: an event is published at least once, never dropped.

    No call to the queue is made inside a database transaction: events are read (or claimed)
    and committed first, sent, then marked published in a transaction of their own. The
    memory queue holds at most `max_pending` events; when the queue stalls, what does not fit
    is left to the sweep and counted (`shop_outbox_relay_dropped_total`), and the backlog
    shows as `shop_outbox_relay_pending`.
    """

    def __init__(
        self,
        db: Database | Sequence[Database],
        queue: Queue,
        *,
        sweep_after_s: float = 5.0,
        max_pending: int = MAX_PENDING,
    ) -> None:
        # Stage 8's shards each record events: one relay serves them all, marking an event
        # published where it lives (an UPDATE elsewhere finds no row) and sweeping each.
        self._dbs = [db] if isinstance(db, Database) else list(db)
        self._queue = queue
        self._sweep_after = timedelta(seconds=sweep_after_s)
        self._pending: asyncio.Queue[Event] = asyncio.Queue(maxsize=max_pending)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pending(self) -> int:
        """Events waiting in memory to be published."""
        return self._pending.qsize()

    def publish_soon(self, events: Sequence[Event], *, origin: Database | None = None) -> None:
        """Queue events for publishing; those that do not fit are left to the sweep. `origin`:
        the database they were recorded in (see Event.origin)."""
        left = 0
        for event in events:
            try:
                self._pending.put_nowait(replace(event, origin=origin) if origin else event)
            except asyncio.QueueFull:
                left += 1
        if left:
            RELAY_DROPPED.inc(left)
            log.warning("outbox: relay backlog full, %d events left to the sweep", left)
        RELAY_PENDING.set(self._pending.qsize())

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._publish_forever(), name="outbox-publish"),
            asyncio.create_task(self._sweep_forever(), name="outbox-sweep"),
        ]

    async def flush(self) -> None:
        """Wait until every event handed to `publish_soon` so far was sent (or failed)."""
        await self._pending.join()

    async def stop(self, *, timeout_s: float = 5.0) -> None:
        """Send what is pending (for at most `timeout_s`), then stop; what is left is swept
        by the next process that starts."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def publish(self, events: Sequence[Event]) -> int:
        """Send events to the queue, then mark those it accepted published; how many.

        Traced as one `outbox.publish` span in the trace of the first event (the request that
        recorded it); each message carries its own event's trace context."""
        if not events:
            return 0
        with continue_trace("outbox.publish", events[0].trace, kind="producer", events=len(events)):
            sent: list[uuid.UUID] = []
            for start in range(0, len(events), PUBLISH_BATCH):
                chunk = events[start : start + PUBLISH_BATCH]
                failed = await self._send(chunk, {str(e.id): e.trace for e in chunk})
                for name, reason in failed.items():
                    log.warning(
                        "outbox event %s not published (%s); the sweep retries", name, reason
                    )
                sent += [e.id for e in chunk if str(e.id) not in failed]
            if sent:
                accepted = set(sent)
                await self._mark_published([e for e in events if e.id in accepted])
            return len(sent)

    async def _mark_published(self, events: Sequence[Event]) -> None:
        """Mark events published in the database each came from (every one, unknown)."""
        for db in self._dbs:
            ids = [e.id for e in events if e.origin is None or e.origin is db]
            if ids:
                async with db.write() as conn:
                    await conn.execute(_MARK_PUBLISHED, {"ids": ids, "now": utcnow()})

    async def sweep(self, *, limit: int = 100) -> int:
        """Publish unpublished events older than `sweep_after_s` from every database the relay
        serves, oldest first, at most `limit` from each; how many (see `_sweep_one`)."""
        return sum([await self._sweep_one(db, limit=limit) for db in self._dbs])

    async def _sweep_one(self, db: Database, *, limit: int) -> int:
        """Publish `db`'s unpublished events older than `sweep_after_s`, oldest first; how many.

        Three steps, none holding a transaction across the network: claim the events (a
        lease of CLAIM_S, committed; SKIP LOCKED and the lease keep other processes' sweeps
        off them, so two sweeps do not publish the same event twice), send them, then mark
        those the queue accepted published.

        A sweep that finds events is traced as the root of a trace of its own (`outbox.sweep`;
        the requests' trace contexts are not kept in the table), which the messages carry.
        """
        now = utcnow()
        cutoff = now - self._sweep_after
        stmt = (
            select(OutboxEvent.id, OutboxEvent.kind, OutboxEvent.payload)
            .where(
                OutboxEvent.published_at.is_(None),
                OutboxEvent.created_at < cutoff,
                or_(OutboxEvent.claimed_until.is_(None), OutboxEvent.claimed_until < now),
            )
            .order_by(OutboxEvent.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with db.write() as conn:
            rows = (await conn.execute(stmt)).all()
            events = [Event(id=r.id, kind=r.kind, payload=r.payload) for r in rows]
            if events:
                await conn.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.id.in_([e.id for e in events]))
                    .values(claimed_until=now + timedelta(seconds=CLAIM_S))
                )
        if not events:
            return 0
        with continue_trace("outbox.sweep", {}, kind="producer", events=len(events)):
            sent: list[uuid.UUID] = []
            for start in range(0, len(events), PUBLISH_BATCH):
                chunk = events[start : start + PUBLISH_BATCH]
                trace = carrier()
                failed = await self._send(chunk, {str(e.id): trace for e in chunk})
                sent += [e.id for e in chunk if str(e.id) not in failed]
            if sent:
                async with db.write() as conn:
                    await conn.execute(_MARK_PUBLISHED, {"ids": sent, "now": utcnow()})
        if len(sent) < len(events):
            log.warning(
                "outbox sweep: %d of %d events not published", len(events) - len(sent), len(events)
            )
        elif sent:
            log.info("outbox sweep: published %d events left behind", len(sent))
        return len(sent)

    async def _send(
        self, events: Sequence[Event], traces: Mapping[str, Mapping[str, str]]
    ) -> dict[str, str]:
        """Send one batch; with trace contexts (tracing on), each in its message's attributes.
        With tracing off the call is exactly what it was before tracing existed."""
        bodies = {str(e.id): e.to_message() for e in events}
        carried = {name: trace for name, trace in traces.items() if trace}
        if not carried:
            return await self._queue.send(bodies)
        return await self._queue.send(bodies, attributes=carried)

    async def _publish_forever(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while len(batch) < PUBLISH_BATCH and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            try:
                await self.publish(batch)
            except Exception as exc:
                log.warning(
                    "outbox: %d events not published (%s); the sweep retries", len(batch), exc
                )
            finally:
                for _ in batch:
                    self._pending.task_done()
                RELAY_PENDING.set(self._pending.qsize())

    async def _sweep_forever(self) -> None:
        interval = self._sweep_after.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                with quiet():  # polling: only a sweep that sends is traced
                    await self.sweep()
            except Exception as exc:
                log.warning("outbox sweep failed (%s); retrying in %.0f s", exc, interval)
