"""The order flow across modules: what follows a placed order (the ledger posting, the shipment
and the confirmation e-mail), done in the request or, with a queue (stage 7), by `shop worker`.

Placing an order is one transaction that reserves stock and records the order (service.py).
Without a queue it also posts the ledger and opens the shipment (`fulfil`), and the e-mail goes
after the commit. With a queue the same transaction records an `order.placed` outbox event
instead (`record_placed`), and the worker applies it with `handle_order_placed`:

- step `fulfil`, one transaction: claim the step, lock the order, post the ledger and open the
  shipment unless the order was cancelled first, mark it fulfilled;
- step `mail`, one transaction held while SES accepts the message: claim the step, send the
  confirmation to the customer of a fulfilled order that is not cancelled. A failure rolls the
  claim back and the message comes again; only a worker killed between SES's answer and the
  COMMIT sends a second e-mail. A refusal that no retry can change (MailRefused: SES's
  sandbox, an unverified identity, an address it cannot parse) is logged at ERROR with the
  order's id and the claim committed: the mail is given up, and the message is not received
  again until it is dead-lettered.

Each claim is a `processed_event` row (app/core/outbox.py), so an event delivered twice, or to
two workers at once, is applied once. A cancellation locks the same order row: either the
worker fulfilled first and the cancellation reverses everything, or the cancellation came first
and the worker finds a cancelled order, with nothing to post or ship.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.accounting import service as accounting
from app.core import outbox
from app.core.db import Database
from app.core.mail import Mail, Mailer, MailRefused
from app.core.models import utcnow
from app.customers import service as customers
from app.delivery import service as delivery
from app.orders.domain import OrderStatus
from app.orders.models import CustomerOrder, OrderLine

log = logging.getLogger("shop.orders")

ORDER_PLACED = "order.placed"


async def fulfil(
    conn: AsyncConnection, *, order_id: int, customer_id: int, subtotal_cents: int, tax_cents: int
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
    conn: AsyncConnection, *, order_id: int, customer_id: int, subtotal_cents: int, tax_cents: int
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


async def _confirmation_of(db: Database, conn: AsyncConnection, order_id: int) -> Mail | None:
    """The confirmation of a fulfilled order that still stands, or None: an unknown order, or a
    cancelled one (before it was fulfilled, or after: a cancellation leaves `fulfilled_at` set,
    and the mail step may come after it when SES failed the first time)."""
    order = (
        await conn.execute(
            select(
                CustomerOrder.customer_id,
                CustomerOrder.status,
                CustomerOrder.total_cents,
                CustomerOrder.fulfilled_at,
            ).where(CustomerOrder.id == order_id)
        )
    ).one_or_none()
    if order is None or order.fulfilled_at is None or order.status == OrderStatus.CANCELLED.value:
        return None
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
    db: Database,
    mailer: Mailer,
    *,
    order_id: int,
    customer_id: int,
    lines: list[tuple[str, int, int]],
    total_cents: int,
) -> None:
    """In-request mode: send a just-placed order's confirmation after its commit (one read:
    the customer's address). A failure is logged, not raised: the order stands."""
    try:
        customer = await customers.get_customer(db, customer_id=customer_id)
        await mailer.send(
            confirmation(
                order_id=order_id, email=customer.email, lines=lines, total_cents=total_cents
            )
        )
    except Exception as exc:
        log.warning("confirmation of order %s not sent: %s", order_id, exc)


async def handle_order_placed(
    db: Database, mailer: Mailer, *, event_id: uuid.UUID, payload: Mapping[str, Any]
) -> None:
    """Apply an `order.placed` event at most once per step (see the module's docstring).
    Raises when a step failed; the steps already committed stay done."""
    order_id = int(payload["order_id"])
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
    async with db.write() as conn:
        if await outbox.claim(conn, event_id=event_id, step="mail"):
            mail = await _confirmation_of(db, conn, order_id)
            if mail is not None:
                # Inside the claiming transaction: SES failing rolls the claim back, and the
                # message comes again. A refusal no retry can change commits the claim instead:
                # the mail is given up, not retried until the message is dead-lettered.
                try:
                    await mailer.send(mail)
                except MailRefused as exc:
                    log.error(
                        "confirmation of order %s given up (event %s): %s", order_id, event_id, exc
                    )


Handler = Callable[[Database, Mailer, uuid.UUID, Mapping[str, Any]], Awaitable[None]]


async def _order_placed(
    db: Database, mailer: Mailer, event_id: uuid.UUID, payload: Mapping[str, Any]
) -> None:
    await handle_order_placed(db, mailer, event_id=event_id, payload=payload)


HANDLERS: dict[str, Handler] = {ORDER_PLACED: _order_placed}
"""What `shop worker` does with each kind of event."""
