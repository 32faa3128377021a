"""The order flow across modules: what follows a placed order (the ledger posting, the shipment
and the confirmation e-mail), done in the request or, with a queue (stage 7), by `shop worker`.

Placing an order is one transaction that reserves stock and records the order (service.py).
Without a queue it also posts the ledger and opens the shipment (`fulfil`), and the e-mail goes
after the commit. With a queue the same transaction records an `order.placed` outbox event
instead (`record_placed`), and the worker applies it with `handle_order_placed`:

- step `fulfil`, one transaction: claim the step, lock the order, post the ledger and open the
  shipment unless the order was cancelled first, mark it fulfilled;
- step `mail`, no transaction open while SES answers: (1) lock the order and take a lease on
  its confirmation (`confirmation_claimed_until`, MAIL_LEASE) if the order is fulfilled, not
  cancelled and not yet mailed, and commit; (2) send; (3) record the outcome on the order
  (`confirmation_sent_at`, or `confirmation_refused` with SES's reason) and claim the step.
  A failure releases the lease and the message comes again. A refusal that no retry can change
  (MailRefused: SES's sandbox, an unverified identity, an address it cannot parse) is recorded,
  logged at ERROR with the order's id, and not retried. Another delivery of the same event
  that finds the lease held fails and comes back after it. Only a worker killed between SES's
  answer and (3) sends a second e-mail, once its lease has run out; and a cancellation that
  lands during the call itself cannot stop a mail already handed to SES.

Each claim is a `processed_event` row (app/adapters/outbox.py), so an event delivered twice, or to
two workers at once, is applied once. A cancellation locks the same order row: either the
worker fulfilled first and the cancellation reverses everything, or the cancellation came first
and the worker finds a cancelled order, with nothing to post or ship.

Stage 8's federation (accounting and delivery in databases of their own, `Databases`) splits
step `fulfil` into three transactions, one per database (`_fulfil_federated`), and a
cancellation posts its reversal through an `order.cancelled` event (`handle_order_cancelled`);
docs/stage-8.md says why each is safe under a crash.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.accounting import service as accounting
from app.adapters import outbox, tracing
from app.adapters.db import Database, Databases, Tx
from app.adapters.mail import Mail, Mailer, MailRefused
from app.catalog import service as catalog
from app.customers import service as customers
from app.delivery import service as delivery
from app.kernel.models import utcnow
from app.orders.domain import OrderStatus
from app.orders.models import CustomerOrder, OrderLine

log = logging.getLogger("shop.orders")

ORDER_PLACED = "order.placed"
ORDER_CANCELLED = "order.cancelled"


async def fulfil(
    conn: Tx, *, order_id: int, customer_id: int, subtotal_cents: int, tax_cents: int
) -> None:
    """Post the order's ledger entries and open its shipment in the caller's transaction
    (statements through `run` only, so a pipelined block may call it)."""
    await accounting.post_order_placed(
        conn,
        order_id=order_id,
        customer_id=customer_id,
        subtotal_cents=subtotal_cents,
        tax_cents=tax_cents,
    )
    await delivery.open_shipment(conn, order_id=order_id, customer_id=customer_id)


async def record_placed(
    conn: Tx, *, order_id: int, customer_id: int, subtotal_cents: int, tax_cents: int
) -> outbox.Event:
    """Record, in the placing transaction, the event that has a worker fulfil the order."""
    return await outbox.record(
        conn,
        kind=ORDER_PLACED,
        payload={
            "order_id": order_id,
            "customer_id": customer_id,
            "subtotal_cents": subtotal_cents,
            "tax_cents": tax_cents,
        },
    )


async def record_cancelled(
    conn: AsyncConnection,
    *,
    order_id: int,
    customer_id: int,
    subtotal_cents: int,
    tax_cents: int,
    reverse: bool = True,
    restock: list[list[int]] | None = None,
) -> outbox.Event:
    """Stage 8: record, in the cancelling transaction, the event that has a worker post the
    reversal in the accounting database (`reverse`: the order had been fulfilled) and, where
    the order lives in a shard, return its stock in the main database (`restock`: its lines,
    [[product_id, quantity], ...])."""
    return await outbox.record(
        conn,
        kind=ORDER_CANCELLED,
        payload={
            "order_id": order_id,
            "customer_id": customer_id,
            "subtotal_cents": subtotal_cents,
            "tax_cents": tax_cents,
            "reverse": reverse,
            "restock": restock or [],
        },
    )


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def confirmation(
    *, order_id: int, email: str, lines: list[tuple[str, int, int]], total_cents: int
) -> Mail:
    """The new-order confirmation; lines are (name, quantity, line total in cents)."""
    text = "\n".join(
        [
            f"Thank you for your order #{order_id}.",
            "",
            *(f"{quantity} x {name}: {_money(total)}" for name, quantity, total in lines),
            "",
            f"Total (tax included): {_money(total_cents)}",
        ]
    )
    return Mail(to=email, subject=f"Your order #{order_id}", text=text)


async def _confirmation_of(db: Database, conn: AsyncConnection, order_id: int) -> Mail:
    """The confirmation of an order (its lines, total and the customer's address)."""
    order = (
        await conn.execute(
            select(CustomerOrder.customer_id, CustomerOrder.total_cents).where(
                CustomerOrder.id == order_id
            )
        )
    ).one()
    lines = await conn.execute(
        select(OrderLine.name, OrderLine.quantity, OrderLine.line_total_cents)
        .where(OrderLine.order_id == order_id)
        .order_by(OrderLine.id)
    )
    customer = await customers.get_customer(db, customer_id=order.customer_id)
    return confirmation(
        order_id=order_id,
        email=customer.email,
        lines=[(r.name, r.quantity, r.line_total_cents) for r in lines],
        total_cents=order.total_cents,
    )


async def send_confirmation(
    mailer: Mailer,
    *,
    order_id: int,
    email: str,
    lines: list[tuple[str, int, int]],
    total_cents: int,
) -> None:
    """In-request mode: send a just-placed order's confirmation after its commit (the
    customer's address was read in the placing transaction). A failure is logged, not raised:
    the order stands."""
    try:
        await mailer.send(
            confirmation(order_id=order_id, email=email, lines=lines, total_cents=total_cents)
        )
    except Exception as exc:
        log.warning("confirmation of order %s not sent: %s", order_id, exc)


async def handle_order_placed(
    db: Database | Databases,
    mailer: Mailer,
    *,
    event_id: uuid.UUID,
    payload: Mapping[str, Any],
) -> None:
    """Apply an `order.placed` event at most once per step (see the module's docstring).
    Raises when a step failed; the steps already committed stay done."""
    dbs = db if isinstance(db, Databases) else Databases.single(db)
    order_id = int(payload["order_id"])
    with tracing.span("order.fulfil", order_id=order_id):
        if dbs.split:
            await _fulfil_federated(dbs, event_id=event_id, payload=payload)
        else:
            await _fulfil_once(dbs.main, event_id=event_id, order_id=order_id)
    with tracing.span("order.mail", order_id=order_id):
        await _mail(dbs, mailer, event_id=event_id, order_id=order_id)


async def _fulfil_federated(
    dbs: Databases, *, event_id: uuid.UUID, payload: Mapping[str, Any]
) -> None:
    """The `fulfil` step where the order's work spans databases (stage 8's federation or
    shards): three transactions, each done once whatever the deliveries of the event.

    1. On the database that holds the order (the main one, or its shard): lock the order;
       unless it was cancelled first, mark it fulfilled (`fulfilled_at` is the step's mark). A
       cancelled order that was never fulfilled ends it.
    2. On accounting's: claim step `ledger` and post the order's entries.
    3. On delivery's: claim step `ship` and open its shipment, unless a cancellation has left
       a cancelled one first (`open_shipment_once`).

    A cancellation after 1 posts the reversal from its own event (`handle_order_cancelled`), in
    either order with 2: the two sum to zero."""
    order_id = int(payload["order_id"])
    async with dbs.shard_write(order_id) as conn:
        order = (
            await conn.execute(
                select(CustomerOrder.status, CustomerOrder.fulfilled_at)
                .where(CustomerOrder.id == order_id)
                .with_for_update()
            )
        ).one_or_none()
        if order is None:
            log.warning("order.placed %s: order %s does not exist", event_id, order_id)
            return
        if order.fulfilled_at is None:
            if order.status == OrderStatus.CANCELLED.value:
                return  # cancelled before it was fulfilled: nothing to post or ship
            await conn.execute(
                update(CustomerOrder)
                .where(CustomerOrder.id == order_id)
                .values(fulfilled_at=utcnow())
            )
    customer_id = int(payload["customer_id"])
    async with dbs.accounting.write() as conn:
        if await outbox.claim(conn, event_id=event_id, step="ledger"):
            await accounting.post_order_placed(
                conn,
                order_id=order_id,
                customer_id=customer_id,
                subtotal_cents=int(payload["subtotal_cents"]),
                tax_cents=int(payload["tax_cents"]),
            )
    async with dbs.delivery.write() as conn:
        if await outbox.claim(conn, event_id=event_id, step="ship"):
            await delivery.open_shipment_once(conn, order_id=order_id, customer_id=customer_id)


async def handle_order_cancelled(
    dbs: Databases, *, event_id: uuid.UUID, payload: Mapping[str, Any]
) -> None:
    """Apply an `order.cancelled` event (stage 8), each step once: `restock`, in the main
    database, returns the stock of an order that lived in a shard; `reverse`, in the
    accounting database, posts the reversal of a fulfilled order's entries."""
    order_id = int(payload["order_id"])
    restock = [(int(p), int(q)) for p, q in payload.get("restock", [])]
    if restock:
        with tracing.span("order.restock", order_id=order_id):
            async with dbs.main.write() as conn:
                if await outbox.claim(conn, event_id=event_id, step="restock"):
                    await catalog.release_stock(conn, lines=dict(restock))
    if payload.get("reverse", True):
        with tracing.span("order.reverse", order_id=order_id):
            async with dbs.accounting.write() as conn:
                if await outbox.claim(conn, event_id=event_id, step="reverse"):
                    await accounting.post_reversal_of(
                        conn,
                        order_id=order_id,
                        customer_id=int(payload["customer_id"]),
                        subtotal_cents=int(payload["subtotal_cents"]),
                        tax_cents=int(payload["tax_cents"]),
                    )


async def _fulfil_once(db: Database, *, event_id: uuid.UUID, order_id: int) -> None:
    """The `fulfil` step (see the module's docstring)."""
    async with db.write() as conn:
        if await outbox.claim(conn, event_id=event_id, step="fulfil"):
            order = (
                await conn.execute(
                    select(
                        CustomerOrder.customer_id,
                        CustomerOrder.status,
                        CustomerOrder.subtotal_cents,
                        CustomerOrder.tax_cents,
                        CustomerOrder.fulfilled_at,
                    )
                    .where(CustomerOrder.id == order_id)
                    .with_for_update()
                )
            ).one_or_none()
            if order is None:
                log.warning("order.placed %s: order %s does not exist", event_id, order_id)
            elif order.status == OrderStatus.CANCELLED.value or order.fulfilled_at is not None:
                pass  # cancelled before it was fulfilled, or fulfilled already
            else:
                await fulfil(
                    conn,
                    order_id=order_id,
                    customer_id=order.customer_id,
                    subtotal_cents=order.subtotal_cents,
                    tax_cents=order.tax_cents,
                )
                await conn.execute(
                    update(CustomerOrder)
                    .where(CustomerOrder.id == order_id)
                    .values(fulfilled_at=utcnow())
                )


class MailInFlight(Exception):
    """Another delivery of the same event holds the order's mail lease: this one comes back."""


MAIL_LEASE = timedelta(seconds=90)
"""How long a worker may take to hand a confirmation to SES (the SES client gives up within
about 40 s: 3 attempts of a 2 s connect and a 10 s read); past it, another worker may send."""


async def _mail(dbs: Databases, mailer: Mailer, *, event_id: uuid.UUID, order_id: int) -> None:
    """The `mail` step (see the module's docstring): lease, commit, send, record; on the
    database that holds the order (its shard, stage 8), the address read from the main one."""
    async with dbs.shard_write(order_id) as conn:
        done = await conn.execute(
            select(outbox.ProcessedEvent.event_id).where(
                outbox.ProcessedEvent.event_id == event_id, outbox.ProcessedEvent.step == "mail"
            )
        )
        if done.first() is not None:
            return
        order = (
            await conn.execute(
                select(
                    CustomerOrder.status,
                    CustomerOrder.fulfilled_at,
                    CustomerOrder.confirmation_sent_at,
                    CustomerOrder.confirmation_refused,
                    CustomerOrder.confirmation_claimed_until,
                )
                .where(CustomerOrder.id == order_id)
                .with_for_update()
            )
        ).one_or_none()
        if (
            order is None
            or order.fulfilled_at is None
            or order.status == OrderStatus.CANCELLED.value
            or order.confirmation_sent_at is not None
            or order.confirmation_refused is not None
        ):
            # Nothing to send: unknown, cancelled (before it was fulfilled or after: a cancel
            # leaves `fulfilled_at` set), or its outcome already recorded.
            await outbox.claim(conn, event_id=event_id, step="mail")
            return
        now = utcnow()
        if order.confirmation_claimed_until is not None and order.confirmation_claimed_until > now:
            raise MailInFlight(f"order {order_id}: its confirmation is being sent")
        await _set_confirmation(conn, order_id, confirmation_claimed_until=now + MAIL_LEASE)
        mail = await _confirmation_of(dbs.main, conn, order_id)
    try:
        await mailer.send(mail)
    except MailRefused as exc:
        log.error("confirmation of order %s given up (event %s): %s", order_id, event_id, exc)
        outcome: dict[str, Any] = {"confirmation_refused": str(exc)[:500] or "refused"}
    except BaseException:
        async with dbs.shard_write(order_id) as conn:
            await _set_confirmation(conn, order_id, confirmation_claimed_until=None)
        raise
    else:
        outcome = {"confirmation_sent_at": utcnow()}
    async with dbs.shard_write(order_id) as conn:
        await _set_confirmation(conn, order_id, confirmation_claimed_until=None, **outcome)
        await outbox.claim(conn, event_id=event_id, step="mail")


async def _set_confirmation(conn: AsyncConnection, order_id: int, **values: Any) -> None:
    await conn.execute(update(CustomerOrder).where(CustomerOrder.id == order_id).values(**values))


def recorded_in(dbs: Databases, event: outbox.Event) -> Database:
    """The database whose outbox holds an order's event: its shard (stage 8), else the main
    one. Every kind of event here names its order."""
    return dbs.shard_for(int(event.payload["order_id"]))


Handler = Callable[[Databases, Mailer, uuid.UUID, Mapping[str, Any]], Awaitable[None]]


async def _order_placed(
    dbs: Databases, mailer: Mailer, event_id: uuid.UUID, payload: Mapping[str, Any]
) -> None:
    await handle_order_placed(dbs, mailer, event_id=event_id, payload=payload)


async def _order_cancelled(
    dbs: Databases, _mailer: Mailer, event_id: uuid.UUID, payload: Mapping[str, Any]
) -> None:
    await handle_order_cancelled(dbs, event_id=event_id, payload=payload)


HANDLERS: dict[str, Handler] = {ORDER_PLACED: _order_placed, ORDER_CANCELLED: _order_cancelled}
"""What `shop worker` does with each kind of event."""
