"""The delivery module's public API: open, advance and cancel shipments, and tracking."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import ColumnElement, String, bindparam, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.adapters.db import Database, Tx, insert_or_ignore, run
from app.delivery.domain import (
    ShipmentStatus,
    advances_after,
    check_advance,
    check_transition,
)
from app.delivery.models import Shipment, ShipmentEvent
from app.delivery.schemas import ShipmentPage, ShipmentRead, TrackingEvent
from app.kernel.errors import Conflict, NotFound
from app.kernel.models import UtcDateTime, utcnow
from app.kernel.security import Principal

_COLUMNS = (Shipment.id, Shipment.order_id, Shipment.status, Shipment.updated_at)


async def _load(conn: AsyncConnection, *conditions: ColumnElement[bool]) -> list[ShipmentRead]:
    rows = (await conn.execute(select(*_COLUMNS).where(*conditions).order_by(Shipment.id))).all()
    if not rows:
        return []
    events: dict[int, list[TrackingEvent]] = defaultdict(list)
    history = await conn.execute(
        select(ShipmentEvent.shipment_id, ShipmentEvent.status, ShipmentEvent.at)
        .where(ShipmentEvent.shipment_id.in_([r.id for r in rows]))
        .order_by(ShipmentEvent.id)
    )
    for event in history:
        events[event.shipment_id].append(TrackingEvent(status=event.status, at=event.at))
    return [
        ShipmentRead(
            id=r.id,
            order_id=r.order_id,
            status=ShipmentStatus(r.status),
            allowed_next=list(advances_after(ShipmentStatus(r.status))),
            updated_at=r.updated_at,
            events=events[r.id],
        )
        for r in rows
    ]


MOVE_ATTEMPTS = 3
"""Compare-and-set rounds before a move gives up (each lost round means a concurrent move)."""


async def _move(
    conn: AsyncConnection,
    *,
    shipment_id: int,
    target: ShipmentStatus,
    check: Callable[[ShipmentStatus, ShipmentStatus], None],
) -> None:
    """Move one shipment if `check` allows it, with a compare-and-set on its status so that two
    concurrent moves cannot both succeed from the same status. Raises Conflict when the status
    changed under it MOVE_ATTEMPTS times in a row."""
    for _ in range(MOVE_ATTEMPTS):
        current = (
            await conn.execute(select(Shipment.status).where(Shipment.id == shipment_id))
        ).scalar_one_or_none()
        if current is None:
            raise NotFound("shipment", shipment_id)
        check(ShipmentStatus(current), target)
        now = utcnow()
        moved = await conn.execute(
            update(Shipment)
            .where(Shipment.id == shipment_id, Shipment.status == current)
            .values(status=target.value, updated_at=now)
        )
        if moved.rowcount == 1:
            await conn.execute(
                insert(ShipmentEvent).values(shipment_id=shipment_id, status=target.value, at=now)
            )
            return
    raise Conflict(
        f"shipment {shipment_id} kept changing while it was being moved; retry", retry=True
    )


_OPEN = insert(Shipment).values(
    order_id=bindparam("order_id"),
    customer_id=bindparam("customer_id"),
    status=ShipmentStatus.PENDING.value,
    created_at=bindparam("at"),
    updated_at=bindparam("at"),
)
# Finds the shipment by its order, so it needs no result of _OPEN and both can be pipelined.
_OPENING_EVENT = insert(ShipmentEvent).from_select(
    ["shipment_id", "status", "at"],
    select(
        Shipment.id,
        literal(ShipmentStatus.PENDING.value, String),
        bindparam("at", type_=UtcDateTime()),
    ).where(Shipment.order_id == bindparam("order_id")),
)


async def open_shipment(conn: Tx, *, order_id: int, customer_id: int) -> None:
    """Open the pending shipment of a new order inside the caller's transaction."""
    params = {"order_id": order_id, "customer_id": customer_id, "at": utcnow()}
    await run(conn, _OPEN, params)
    await run(conn, _OPENING_EVENT, params)


async def _insert_unless_opened(
    conn: AsyncConnection, order_id: int, customer_id: int, status: ShipmentStatus, at: datetime
) -> bool:
    """Insert an order's shipment in `status` unless it has one (an order has at most one)."""
    row = {"order_id": order_id, "customer_id": customer_id, "status": status.value}
    table = Shipment.__table__
    return await insert_or_ignore(conn, table, {**row, "created_at": at, "updated_at": at})  # type: ignore[arg-type]


async def open_shipment_once(conn: AsyncConnection, *, order_id: int, customer_id: int) -> None:
    """Open the pending shipment of a new order unless the order has one already: a
    cancellation may have left a cancelled one first (stage 8, `cancel_or_forestall`)."""
    at = utcnow()
    if await _insert_unless_opened(conn, order_id, customer_id, ShipmentStatus.PENDING, at):
        await run(conn, _OPENING_EVENT, {"order_id": order_id, "at": at})


async def cancel_or_forestall(conn: AsyncConnection, *, order_id: int, customer_id: int) -> None:
    """Cancel an order's shipment inside the caller's transaction (stage 8, where the shipment
    lives in a database of its own and may not be open yet): a shipment already cancelled
    stays so; where none is open yet, a cancelled one takes its place, so that the worker's
    `open_shipment_once` later finds it and opens nothing. Raises IllegalTransition once the
    shipment has left."""
    at = utcnow()
    forestalled = await _insert_unless_opened(
        conn, order_id, customer_id, ShipmentStatus.CANCELLED, at
    )
    shipment_id, status = (
        await conn.execute(
            select(Shipment.id, Shipment.status).where(Shipment.order_id == order_id)
        )
    ).one()
    if forestalled:
        await conn.execute(
            insert(ShipmentEvent).values(
                shipment_id=shipment_id, status=ShipmentStatus.CANCELLED.value, at=at
            )
        )
    elif status != ShipmentStatus.CANCELLED.value:
        await _move(
            conn, shipment_id=shipment_id, target=ShipmentStatus.CANCELLED, check=check_transition
        )


async def cancel_for_order(conn: AsyncConnection, *, order_id: int) -> None:
    """Cancel an order's shipment inside the caller's transaction; raises IllegalTransition
    once it has shipped."""
    shipment_id = (
        await conn.execute(select(Shipment.id).where(Shipment.order_id == order_id))
    ).scalar_one_or_none()
    if shipment_id is None:
        raise NotFound("shipment for order", order_id)
    await _move(
        conn, shipment_id=shipment_id, target=ShipmentStatus.CANCELLED, check=check_transition
    )


async def advance_shipment(
    db: Database, *, shipment_id: int, target: ShipmentStatus
) -> ShipmentRead:
    """Move a shipment to its next status (admins); IllegalTransition names the allowed ones."""
    async with db.write() as conn:
        await _move(conn, shipment_id=shipment_id, target=target, check=check_advance)
        return (await _load(conn, Shipment.id == shipment_id))[0]


async def tracking(db: Database, *, order_id: int, principal: Principal) -> ShipmentRead:
    """The shipment of an order with its history; NotFound unless the caller owns the order
    or is an admin."""
    conditions = [Shipment.order_id == order_id]
    if not principal.is_admin:
        conditions.append(Shipment.customer_id == principal.customer_id)
    async with db.read() as conn:
        found = await _load(conn, *conditions)
    if not found:
        raise NotFound("order", order_id)
    return found[0]


async def list_shipments(
    db: Database, *, status: ShipmentStatus | None, limit: int, offset: int
) -> ShipmentPage:
    """Shipments oldest first, optionally in one status (admins' work queue)."""
    conditions = [Shipment.status == status.value] if status else []
    async with db.read() as conn:
        ids = (
            (
                await conn.execute(
                    select(Shipment.id)
                    .where(*conditions)
                    .order_by(Shipment.id)
                    .limit(limit + 1)
                    .offset(offset)
                )
            )
            .scalars()
            .all()
        )
        items = await _load(conn, Shipment.id.in_(ids[:limit])) if ids else []
    next_offset = offset + limit if len(ids) > limit else None
    return ShipmentPage(items=items, limit=limit, offset=offset, next_offset=next_offset)
