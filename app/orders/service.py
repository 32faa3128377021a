"""The orders module's public API. Placing and cancelling an order are one transaction each,
spanning catalog (stock), accounting (ledger) and delivery (shipment) through their services;
with a queue (stage 7) the ledger and shipment follow through the outbox (see flows.py). With
stage 8's databases no transaction can span them: placing holds the stock in the main database
before recording the order in its customer's shard (`_place_in_shard`), and cancelling runs in
steps a crash can leave for the worker to finish (`_cancel_federated`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Integer,
    Row,
    String,
    bindparam,
    delete,
    insert,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from app.accounting import service as accounting
from app.accounting.schemas import EntryRead
from app.adapters.db import (
    Database,
    Databases,
    ShardFenced,
    Tx,
    insert_or_ignore,
    named_values,
    run,
    run_many,
    unique_violation,
)
from app.adapters.mail import Mailer
from app.adapters.outbox import Event, Relay
from app.adapters.shards import LOGICAL_SHARDS, logical_of
from app.catalog import service as catalog
from app.customers import service as customers
from app.delivery import service as delivery
from app.delivery.schemas import ShipmentRead
from app.kernel.errors import (
    Conflict,
    IllegalTransition,
    InvalidRequest,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from app.kernel.models import UtcDateTime, utcnow
from app.kernel.schemas import MAX_ORDER_ID
from app.kernel.security import Principal
from app.orders import flows
from app.orders.domain import (
    Fulfilment,
    OrderStatus,
    Totals,
    check_cancellable,
    fingerprint,
    fulfilment,
    price,
)
from app.orders.models import (
    ORDER_NUMBERS,
    CustomerOrder,
    IdempotencyKey,
    OrderFence,
    OrderLine,
    Reservation,
)
from app.orders.schemas import (
    AdminOrderPage,
    OrderCreate,
    OrderLineRead,
    OrderPage,
    OrderRead,
    ShipmentPending,
)

log = logging.getLogger("shop.orders")

# An order and its lines in one round trip: the order's columns repeat on each line's row (an
# order has 1 to MAX_LINES lines), which PostgreSQL and SQLite both answer with one index scan
# each; the rows come back in line order.
_ORDER_WITH_LINES = (
    select(
        CustomerOrder.id,
        CustomerOrder.status,
        CustomerOrder.subtotal_cents,
        CustomerOrder.tax_cents,
        CustomerOrder.total_cents,
        CustomerOrder.created_at,
        CustomerOrder.cancelled_at,
        CustomerOrder.fulfilled_at,
        OrderLine.product_id,
        OrderLine.sku,
        OrderLine.name,
        OrderLine.quantity,
        OrderLine.unit_price_cents,
        OrderLine.line_total_cents,
    )
    .select_from(CustomerOrder)
    .outerjoin(OrderLine, OrderLine.order_id == CustomerOrder.id)
    .where(CustomerOrder.id == bindparam("order_id"))
    .order_by(OrderLine.id)
)
# A customer's own order: another customer's id finds nothing, exactly as an unknown id does.
_OWN_ORDER_WITH_LINES = _ORDER_WITH_LINES.where(
    CustomerOrder.customer_id == bindparam("customer_id")
)
_ORDER_FIELDS = (
    "id",
    "status",
    "subtotal_cents",
    "tax_cents",
    "total_cents",
    "created_at",
    "cancelled_at",
)
_LINE_FIELDS = ("product_id", "sku", "name", "quantity", "unit_price_cents", "line_total_cents")
_OWN_ORDER = select(CustomerOrder.id).where(
    CustomerOrder.id == bindparam("order_id"),
    CustomerOrder.customer_id == bindparam("customer_id"),
)
_ANY_ORDER = select(CustomerOrder.id).where(CustomerOrder.id == bindparam("order_id"))
_PAGE = (
    select(
        CustomerOrder.id,
        CustomerOrder.status,
        CustomerOrder.total_cents,
        CustomerOrder.created_at,
        CustomerOrder.fulfilled_at,
    )
    .where(CustomerOrder.customer_id == bindparam("customer_id"))
    .order_by(CustomerOrder.id.desc())
    .limit(bindparam("limit", type_=Integer))
    .offset(bindparam("offset", type_=Integer))
)


@dataclass(frozen=True, slots=True)
class PlaceResult:
    """The answer to POST /orders: a replayed one when the Idempotency-Key was seen before."""

    status_code: int
    body: dict[str, Any]
    replayed: bool


def _fulfilment(row: Mapping[str, Any]) -> Fulfilment:
    return fulfilment(status=OrderStatus(row["status"]), fulfilled=row["fulfilled_at"] is not None)


def _order_query(order_id: int, principal: Principal | None) -> tuple[Any, dict[str, Any]]:
    """The statement and parameters that read an order the principal may see (None: any)."""
    if principal is None or principal.is_admin:
        return _ORDER_WITH_LINES, {"order_id": order_id}
    return _OWN_ORDER_WITH_LINES, {"order_id": order_id, "customer_id": principal.customer_id}


def _order_from_rows(order_id: int, rows: Sequence[Mapping[str, Any]]) -> OrderRead:
    """An OrderRead from the rows of _ORDER_WITH_LINES; NotFound when there are none."""
    if not rows:
        raise NotFound("order", order_id)
    first = rows[0]
    return OrderRead.model_validate(
        {
            **{name: first[name] for name in _ORDER_FIELDS},
            "fulfilment": _fulfilment(first),
            "lines": [
                {name: row[name] for name in _LINE_FIELDS}
                for row in rows
                if row["product_id"] is not None
            ],
        }
    )


async def _fetch(conn: AsyncConnection, order_id: int, principal: Principal | None) -> OrderRead:
    stmt, params = _order_query(order_id, principal)
    return _order_from_rows(order_id, await run(conn, stmt, params))


_KEY = (IdempotencyKey.customer_id == bindparam("customer_id")) & (
    IdempotencyKey.key == bindparam("key")
)
_FORGET_EXPIRED_KEY = delete(IdempotencyKey).where(
    _KEY, IdempotencyKey.created_at < bindparam("expired_before", type_=UtcDateTime())
)
_FIRST_ANSWER = select(
    IdempotencyKey.request_hash, IdempotencyKey.status_code, IdempotencyKey.response_body
).where(_KEY)
_FIRST_ANSWER_SINCE = _FIRST_ANSWER.where(
    IdempotencyKey.created_at >= bindparam("since", type_=UtcDateTime())
)
# An UPDATE's parameters may not share a column's name, hence the prefixes.
_STORE_ANSWER = (
    update(IdempotencyKey)
    .where(
        IdempotencyKey.customer_id == bindparam("b_customer_id"),
        IdempotencyKey.key == bindparam("b_key"),
    )
    .values(status_code=bindparam("b_status_code"), response_body=bindparam("b_response_body"))
)
_INSERT_ORDER = (
    insert(CustomerOrder)
    .values(
        named_values(
            "customer_id",
            "status",
            "subtotal_cents",
            "tax_cents",
            "total_cents",
            "created_at",
            "fulfilled_at",
        )
    )
    .returning(CustomerOrder.id)
)
_INSERT_LINE = insert(OrderLine).values(
    named_values(
        "order_id",
        "product_id",
        "sku",
        "name",
        "quantity",
        "unit_price_cents",
        "line_total_cents",
    )
)


async def _claim_key(
    conn: Tx, *, customer_id: int, key: str, request_hash: str, ttl: timedelta
) -> PlaceResult | None:
    """Claim an Idempotency-Key for this transaction, or return the first answer given to it.

    The claim is an INSERT that a concurrent claim of the same key waits on, so of two racing
    requests one places the order and the other replays its answer. A failed request rolls the
    claim back with everything else, so its retry runs afresh.
    """
    now = utcnow()
    key_params = {"customer_id": customer_id, "key": key}
    await run(conn, _FORGET_EXPIRED_KEY, {**key_params, "expired_before": now - ttl})
    claimed = await insert_or_ignore(
        conn,
        IdempotencyKey.__table__,  # type: ignore[arg-type]
        {**key_params, "request_hash": request_hash, "created_at": now},
    )
    if claimed:
        return None
    return _replay_of((await run(conn, _FIRST_ANSWER, key_params))[0], request_hash)


def _replay_of(first: Mapping[str, Any], request_hash: str) -> PlaceResult:
    """The first answer to a key, replayed; raises for another body or a key still in use."""
    if first["request_hash"] != request_hash:
        raise InvalidRequest(
            "Idempotency-Key",
            "this key was used with a different request body; use a new key",
            location="header",
        )
    if first["status_code"] is None or first["response_body"] is None:
        raise Conflict("a request with this Idempotency-Key is still in progress; retry")
    return PlaceResult(status_code=first["status_code"], body=first["response_body"], replayed=True)


def _order_lines(items: Sequence[catalog.Reserved]) -> list[OrderLineRead]:
    """The order's lines, priced as the stock reservation read them."""
    return [
        OrderLineRead(
            product_id=item.product_id,
            sku=item.sku,
            name=item.name,
            quantity=item.quantity,
            unit_price_cents=item.unit_price_cents,
            line_total_cents=item.unit_price_cents * item.quantity,
        )
        for item in items
    ]


def _placed_answer(
    order_id: int,
    totals: Totals,
    created_at: datetime,
    fulfilled: Fulfilment,
    lines: list[OrderLineRead],
) -> dict[str, Any]:
    """The 201 answer to a new order, as JSON (and as its Idempotency-Key keeps it)."""
    return OrderRead(
        id=order_id,
        status=OrderStatus.PLACED,
        subtotal_cents=totals.subtotal_cents,
        tax_cents=totals.tax_cents,
        total_cents=totals.total_cents,
        created_at=created_at,
        cancelled_at=None,
        fulfilment=fulfilled,
        lines=lines,
    ).model_dump(mode="json")


async def _store_answer(conn: Tx, customer_id: int, key: str, body: dict[str, Any]) -> None:
    """Keep the 201 answer of a new order with its Idempotency-Key, for replays."""
    await run(
        conn,
        _STORE_ANSWER,
        {"b_customer_id": customer_id, "b_key": key, "b_status_code": 201, "b_response_body": body},
    )


async def answered_keys(
    dbs: Databases, *, customer_id: int, prefix: str, ttl: timedelta
) -> dict[str, dict[str, Any]]:
    """The orders this customer's unexpired Idempotency-Keys starting with `prefix` were
    answered with (201 only), by key, read from the primary: what a caller whose own record of
    a placed order was lost (a cart store that failed after the commit) can find it by."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    async with dbs.shard_for(customer_id).read(primary=True) as conn:
        found = await conn.execute(
            select(IdempotencyKey.key, IdempotencyKey.response_body).where(
                IdempotencyKey.customer_id == customer_id,
                IdempotencyKey.key.like(f"{escaped}%", escape="\\"),
                IdempotencyKey.status_code == 201,
                IdempotencyKey.created_at >= utcnow() - ttl,
            )
        )
        return {row.key: row.response_body for row in found if row.response_body is not None}


RESERVATION_EXPIRES = timedelta(seconds=60)
"""Stage 8: how long stock stays held, by default, for an order not yet known to exist. The
placing request settles it within a second or two; the worker, one left by a crash after this."""


async def place_order(
    dbs: Databases,
    *,
    customer_id: int,
    data: OrderCreate,
    tax_rate_bp: int,
    idempotency_key: str | None = None,
    idempotency_ttl: timedelta = timedelta(hours=24),
    hold: timedelta = RESERVATION_EXPIRES,
    relay: Relay | None = None,
    mailer: Mailer | None = None,
) -> PlaceResult:
    """Reserve stock and record the order, all or nothing; then its follow-up work.

    Without `relay`, the same transaction posts the ledger and opens the shipment (the answer
    says `fulfilment: done`), and the confirmation goes to `mailer` after the commit. With a
    relay (stage 7), the transaction records an `order.placed` outbox event instead, the relay
    publishes it after the commit, and the answer says `fulfilment: pending` until `shop worker`
    has done the rest (flows.py).

    Raises NotFound (unknown product), OutOfStock (409, nothing reserved), or InvalidRequest
    (an Idempotency-Key reused with a different body). On PostgreSQL the transaction is
    pipelined: three round trips (reserve, order id, the rest with the COMMIT) for one line.
    With order shards (stage 8) the stock and the order live in different databases: see
    `_place_in_shard`.
    """
    if dbs.shards:
        assert relay is not None, "shards need the queue (settings refuse them without it)"
        return await _place_in_shard(
            dbs,
            customer_id=customer_id,
            data=data,
            tax_rate_bp=tax_rate_bp,
            idempotency_key=idempotency_key,
            idempotency_ttl=idempotency_ttl,
            hold=hold,
            relay=relay,
        )
    db = dbs.main
    pairs = data.as_pairs()
    event: Event | None = None
    async with db.pipelined() as conn:
        if idempotency_key is not None:
            replay = await _claim_key(
                conn,
                customer_id=customer_id,
                key=idempotency_key,
                request_hash=fingerprint(pairs),
                ttl=idempotency_ttl,
            )
            if replay is not None:
                return replay
        # Read with the stock's round trip, not one of its own after the commit.
        email_read = (
            await customers.send_email_read(conn, customer_id=customer_id)
            if relay is None and mailer is not None
            else None
        )
        items = await catalog.reserve_stock(conn, lines=dict(pairs))
        found = await email_read.rows() if email_read is not None else []
        email: str | None = found[0]["email"] if found else None
        totals = price(
            [item.unit_price_cents * item.quantity for item in items], tax_rate_bp=tax_rate_bp
        )
        created_at = utcnow()
        inserted = await run(
            conn,
            _INSERT_ORDER,
            {
                "customer_id": customer_id,
                "status": OrderStatus.PLACED.value,
                "subtotal_cents": totals.subtotal_cents,
                "tax_cents": totals.tax_cents,
                "total_cents": totals.total_cents,
                "created_at": created_at,
                "fulfilled_at": None if relay is not None else created_at,
            },
        )
        order_id: int = inserted[0]["id"]
        lines = _order_lines(items)
        await run_many(
            conn, _INSERT_LINE, [{"order_id": order_id, **line.model_dump()} for line in lines]
        )
        follow_up = {
            "order_id": order_id,
            "customer_id": customer_id,
            "subtotal_cents": totals.subtotal_cents,
            "tax_cents": totals.tax_cents,
        }
        if relay is not None:
            event = await flows.record_placed(conn, **follow_up)
        else:
            await flows.fulfil(conn, **follow_up)
        fulfilled = Fulfilment.PENDING if relay is not None else Fulfilment.DONE
        body = _placed_answer(order_id, totals, created_at, fulfilled, lines)
        if idempotency_key is not None:
            await _store_answer(conn, customer_id, idempotency_key, body)
    if relay is not None and event is not None:
        relay.publish_soon([event])
    elif mailer is not None and email is not None:
        await flows.send_confirmation(
            mailer,
            order_id=order_id,
            email=email,
            lines=[(line.name, line.quantity, line.line_total_cents) for line in lines],
            total_cents=totals.total_cents,
        )
    return PlaceResult(status_code=201, body=body, replayed=False)


_HOLD = (
    insert(Reservation)
    .from_select(
        ["order_id", "customer_id", "lines", "state", "expires_at", "created_at"],
        select(
            ORDER_NUMBERS.next_value() * LOGICAL_SHARDS + bindparam("logical", type_=Integer()),
            bindparam("customer_id", type_=Integer()),
            bindparam("lines", type_=JSON()),
            literal("held", String(16)),
            bindparam("expires_at", type_=UtcDateTime()),
            bindparam("created_at", type_=UtcDateTime()),
        ).where(customers.exists_clause("customer_id")),
    )
    .returning(Reservation.order_id)
)
_FENCE = insert(OrderFence).values(named_values("order_id", "void", "created_at"))
_INSERT_ORDER_WITH_ID = insert(CustomerOrder).values(
    named_values(
        "id",
        "customer_id",
        "status",
        "subtotal_cents",
        "tax_cents",
        "total_cents",
        "created_at",
        "fulfilled_at",
    )
)


class _Replayed(Exception):
    """A request with the same Idempotency-Key placed the order first: roll back, answer it."""

    def __init__(self, result: PlaceResult) -> None:
        super().__init__("replayed")
        self.result = result


async def _first_answer(
    conn: AsyncConnection, *, customer_id: int, key: str, request_hash: str, ttl: timedelta
) -> PlaceResult | None:
    """Without claiming it: the answer an unexpired Idempotency-Key was given, or None when the
    key is new (or expired). Raises as `_claim_key` does for another body or a key in use."""
    found = await run(
        conn,
        _FIRST_ANSWER_SINCE,
        {
            "customer_id": customer_id,
            "key": key,
            "since": utcnow() - ttl,
        },
    )
    if not found:
        return None
    return _replay_of(found[0], request_hash)


async def _place_in_shard(
    dbs: Databases,
    *,
    customer_id: int,
    data: OrderCreate,
    tax_rate_bp: int,
    idempotency_key: str | None,
    idempotency_ttl: timedelta,
    hold: timedelta,
    relay: Relay,
) -> PlaceResult:
    """Stage 8: the stock is in the main database, the order in its customer's shard, and no
    transaction spans both (docs/stage-8.md, "An order across the stock and its shard").

    1. On the shard (with an Idempotency-Key): a key already answered is answered again.
    2. On the main database: take the stock and hold it (`reservation`, `held` for `hold`:
       SHOP_ORDER_HOLD_S) for a new order id, a number from the main database's sequence
       carrying the customer's logical shard, if the customer exists. Not enough stock: 409,
       nothing kept.
    3. On the shard: claim the key, take the id's fence, record the order, its lines, its
       `order.placed` event and the key's answer, in one transaction.
    4. The worker confirms the hold, with others, in its next pass (`confirm_committed_holds`:
       one statement on the main database per pass, not a transaction per order: main is the
       limit stage 8 moves, docs/stage-8.md).

    Whatever fails after 2 is settled at once when the databases answer (`settle_reservation`:
    the fence says whether 3 committed), else by the worker once the reservation expires; after
    the worker has settled it, 3 can no longer commit (the fence is taken), so stock and order
    always end together."""
    shard = dbs.shard_for(customer_id)
    pairs = data.as_pairs()
    request_hash = fingerprint(pairs)
    if idempotency_key is not None:
        async with shard.read(primary=True) as conn:
            replay = await _first_answer(
                conn,
                customer_id=customer_id,
                key=idempotency_key,
                request_hash=request_hash,
                ttl=idempotency_ttl,
            )
        if replay is not None:
            return replay
    created_at = utcnow()
    async with dbs.main.pipelined() as conn:
        items = await catalog.reserve_stock(conn, lines=dict(pairs))
        held = await run(
            conn,
            _HOLD,
            {
                "logical": logical_of(customer_id),
                "customer_id": customer_id,
                "lines": [[p, q] for p, q in pairs],
                "expires_at": created_at + hold,
                "created_at": created_at,
            },
        )
        if not held:
            raise Unauthenticated("this account no longer exists")
    order_id = int(held[0]["order_id"])
    totals = price(
        [item.unit_price_cents * item.quantity for item in items], tax_rate_bp=tax_rate_bp
    )
    lines = _order_lines(items)
    body = _placed_answer(order_id, totals, created_at, Fulfilment.PENDING, lines)
    try:
        async with dbs.shard_pipelined(customer_id) as conn:
            if idempotency_key is not None:
                replay = await _claim_key(
                    conn,
                    customer_id=customer_id,
                    key=idempotency_key,
                    request_hash=request_hash,
                    ttl=idempotency_ttl,
                )
                if replay is not None:  # a request with the same key placed it meanwhile
                    raise _Replayed(replay)
            await run(conn, _FENCE, {"order_id": order_id, "void": False, "created_at": created_at})
            await run(
                conn,
                _INSERT_ORDER_WITH_ID,
                {
                    "id": order_id,
                    "customer_id": customer_id,
                    "status": OrderStatus.PLACED.value,
                    "subtotal_cents": totals.subtotal_cents,
                    "tax_cents": totals.tax_cents,
                    "total_cents": totals.total_cents,
                    "created_at": created_at,
                    "fulfilled_at": None,
                },
            )
            await run_many(
                conn, _INSERT_LINE, [{"order_id": order_id, **line.model_dump()} for line in lines]
            )
            event = await flows.record_placed(
                conn,
                order_id=order_id,
                customer_id=customer_id,
                subtotal_cents=totals.subtotal_cents,
                tax_cents=totals.tax_cents,
            )
            if idempotency_key is not None:
                await _store_answer(conn, customer_id, idempotency_key, body)
    except Exception as exc:
        # The order did not commit (or its commit's answer was lost): the fence decides which;
        # refused by its logical shard's fence (a move), it surely did not.
        try:
            await settle_reservation(dbs, order_id=order_id, aborted=isinstance(exc, ShardFenced))
        except Exception as settling:
            log.warning("order %s: reservation left to the worker: %s", order_id, settling)
        if isinstance(exc, _Replayed):
            return exc.result
        if unique_violation(exc):  # the worker fenced the id: this try took too long
            raise Unavailable("the order took too long to record; retry") from exc
        raise
    # Committed: the hold is the order's now; the worker's next pass confirms it.
    relay.publish_soon([event], origin=shard)
    return PlaceResult(status_code=201, body=body, replayed=False)


async def settle_reservation(dbs: Databases, *, order_id: int, aborted: bool = False) -> str | None:
    """Settle an order's reservation (stage 8): take the order id's fence in its shard, void,
    unless it is taken. Void (taken now, or by a settlement that died before it finished), the
    order never committed and never will, so its stock returns (`released`); taken by the
    order, it exists (`confirmed`). `aborted`: the order's transaction surely did nothing (its
    logical shard's fence refused it), so the stock returns without a fence. (The holds of
    orders seen to commit are confirmed in batches: `confirm_committed_holds`.) Returns the
    new state, or None when it was settled before."""
    fenced = aborted
    if not aborted:
        async with dbs.shard_write(order_id) as conn:
            await insert_or_ignore(
                conn,
                OrderFence.__table__,  # type: ignore[arg-type]
                {"order_id": order_id, "void": True, "created_at": utcnow()},
            )
            fenced = (
                await conn.execute(select(OrderFence.void).where(OrderFence.order_id == order_id))
            ).scalar_one()
            if fenced and await _order_exists(conn, order_id):
                # Its own fence was purged before its hold was settled (fences are kept for
                # days, a hold for a minute: a worker that confirmed nothing for that long).
                # The order is the proof: its fence is restored, its stock stays sold.
                await conn.execute(
                    update(OrderFence).where(OrderFence.order_id == order_id).values(void=False)
                )
                fenced = False
    async with dbs.main.write() as conn:
        held = (
            await conn.execute(
                select(Reservation.lines)
                .where(Reservation.order_id == order_id, Reservation.state == "held")
                .with_for_update()
            )
        ).one_or_none()
        if held is None:
            return None
        state = "released" if fenced else "confirmed"
        if fenced:
            await catalog.release_stock(conn, lines={p: q for p, q in held.lines})
        await conn.execute(
            update(Reservation).where(Reservation.order_id == order_id).values(state=state)
        )
    return state


async def _order_exists(conn: AsyncConnection, order_id: int) -> bool:
    found = await conn.execute(select(CustomerOrder.id).where(CustomerOrder.id == order_id))
    return found.first() is not None


async def confirm_committed_holds(dbs: Databases, *, limit: int = 1000) -> int:
    """The worker's pass (stage 8): confirm the held reservations whose order committed, at
    most `limit`, oldest first; how many. One read of the holds and one update on the main
    database, one read of the fences per shard: a placing request leaves its hold held, so that
    an order costs main one transaction, not two. Only an order's own fence (taken with it,
    `void` false) confirms; every shard is asked, so a logical shard moved meanwhile does not
    hide it. A hold whose order has not committed (yet, or ever) is left to the request or to
    `settle_expired_reservations`."""
    if not dbs.shards:
        return 0
    async with dbs.main.write() as conn:
        held = (
            (
                await conn.execute(
                    select(Reservation.order_id)
                    .where(Reservation.state == "held")
                    .order_by(Reservation.expires_at)
                    .limit(limit)
                )
            )
            .scalars()
            .all()
        )
    if not held:
        return 0
    committed: set[int] = set()
    for shard in dbs.shards:
        async with shard.write() as conn:
            found = await conn.execute(
                select(OrderFence.order_id).where(
                    OrderFence.order_id.in_(held), OrderFence.void.is_(False)
                )
            )
            committed.update(found.scalars())
    if not committed:
        return 0
    async with dbs.main.write() as conn:
        confirmed = await conn.execute(
            update(Reservation)
            .where(Reservation.order_id.in_(sorted(committed)), Reservation.state == "held")
            .values(state="confirmed")
        )
    return int(confirmed.rowcount)


async def settle_expired_reservations(dbs: Databases, *, limit: int = 100) -> dict[str, int]:
    """The worker's pass (stage 8): settle the reservations still held past their expiry
    (a request that died between its transactions); how many ended in each state."""
    if not dbs.shards:
        return {}
    async with dbs.main.write() as conn:
        expired = (
            (
                await conn.execute(
                    select(Reservation.order_id)
                    .where(Reservation.state == "held", Reservation.expires_at < utcnow())
                    .order_by(Reservation.expires_at)
                    .limit(limit)
                )
            )
            .scalars()
            .all()
        )
    settled: dict[str, int] = {}
    for order_id in expired:
        state = await settle_reservation(dbs, order_id=order_id)
        if state is not None:
            settled[state] = settled.get(state, 0) + 1
            log.warning("order %s: its reservation expired held; %s", order_id, state)
    return settled


async def get_order(
    dbs: Databases, *, order_id: int, principal: Principal, consistent: bool = False
) -> OrderRead:
    """One order with its lines; NotFound unless the caller owns it or is an admin. One round
    trip, on the driver's fast path. `consistent=True` reads it from the primary: for a caller
    that knows the order exists but may carry no read-after token (a retried checkout)."""
    stmt, params = _order_query(order_id, principal)
    db = dbs.shard_for(order_id)
    return _order_from_rows(order_id, await db.fetch_all(stmt, primary=consistent, **params))


async def order_shipment(
    dbs: Databases, *, order_id: int, principal: Principal
) -> ShipmentRead | ShipmentPending:
    """The shipment of one of the caller's orders (admins: any), or, while a worker has yet to
    open it (stage 7), that it is pending; NotFound for others' orders, and for an order
    cancelled before it was fulfilled (it never had a shipment)."""
    try:
        return await delivery.tracking(dbs.delivery, order_id=order_id, principal=principal)
    except NotFound:
        order = await get_order(dbs, order_id=order_id, principal=principal)
        if order.fulfilment is Fulfilment.SKIPPED:
            raise
    if order.fulfilment is Fulfilment.DONE:  # the worker opened it between the two reads
        with contextlib.suppress(NotFound):  # stage 8: fulfilled, its shipment about to open
            return await delivery.tracking(dbs.delivery, order_id=order_id, principal=principal)
    return ShipmentPending(
        order_id=order_id,
        fulfilment=Fulfilment.PENDING,
        detail="The order is placed; its shipment opens once a worker has fulfilled it.",
    )


async def order_ledger(dbs: Databases, *, order_id: int, principal: Principal) -> list[EntryRead]:
    """The ledger entries of an order, possibly none (a free order posts nothing); NotFound
    unless the caller owns the order or is an admin, so other customers' ids do not leak."""
    db = dbs.shard_for(order_id)
    if principal.is_admin:
        found = await db.fetch_one(_ANY_ORDER, order_id=order_id)
    else:
        found = await db.fetch_one(_OWN_ORDER, order_id=order_id, customer_id=principal.customer_id)
    if found is None:
        raise NotFound("order", order_id)
    return await accounting.entries_of_order(dbs.accounting, order_id=order_id)


async def list_orders(dbs: Databases, *, customer_id: int, limit: int, offset: int) -> OrderPage:
    """A customer's orders, newest first (one round trip, on the driver's fast path)."""
    db = dbs.shard_for(customer_id)
    rows = await db.fetch_all(_PAGE, customer_id=customer_id, limit=limit + 1, offset=offset)
    # One validation of the whole page: pydantic-core walks the list, not Python.
    return OrderPage.model_validate(
        {
            "items": [{**r, "fulfilment": _fulfilment(r)} for r in rows[:limit]],
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if len(rows) > limit else None,
        }
    )


_ALL_ORDERS = (
    select(
        CustomerOrder.id,
        CustomerOrder.customer_id,
        CustomerOrder.status,
        CustomerOrder.total_cents,
        CustomerOrder.created_at,
        CustomerOrder.fulfilled_at,
    )
    .order_by(CustomerOrder.created_at.desc(), CustomerOrder.id.desc())
    .limit(bindparam("limit", type_=Integer))
)
_ALL_ORDERS_BEFORE = _ALL_ORDERS.where(
    tuple_(CustomerOrder.created_at, CustomerOrder.id)
    < tuple_(bindparam("before_at", type_=UtcDateTime()), bindparam("before_id", type_=BigInteger))
)
_CURSOR = re.compile(r"(\d{1,20})\.(\d{1,16})")


def _cursor_of(created_at: datetime, order_id: int) -> str:
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{order_id}"


def _position(cursor: str) -> tuple[datetime, int]:
    found = _CURSOR.fullmatch(cursor)
    if found is None:
        raise InvalidRequest(
            "cursor", "not a cursor this listing gave; use its next_cursor", location="query"
        )
    micros, order_id = int(found[1]), int(found[2])
    if order_id > MAX_ORDER_ID:
        raise InvalidRequest(
            "cursor", "not a cursor this listing gave; use its next_cursor", location="query"
        )
    try:
        return _EPOCH + timedelta(microseconds=micros), order_id
    except OverflowError:
        raise InvalidRequest(
            "cursor", "not a cursor this listing gave; use its next_cursor", location="query"
        ) from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def list_all_orders(
    dbs: Databases, *, limit: int, cursor: str | None = None
) -> AdminOrderPage:
    """Every customer's orders, newest first, for admins: each database that holds orders (the
    main one, or every shard, asked at once) answers its next `limit` after the cursor, and
    the pages are merged. Keyset paging on (created_at, id): a page never shifts when orders
    are placed meanwhile. InvalidRequest for a cursor this listing did not give."""
    stmt = _ALL_ORDERS
    params: dict[str, Any] = {"limit": limit + 1}
    if cursor is not None:
        stmt = _ALL_ORDERS_BEFORE
        params["before_at"], params["before_id"] = _position(cursor)
    pages = await asyncio.gather(
        *(db.fetch_all(stmt, primary=True, **params) for db in dbs.recording())
    )
    rows = sorted(
        (row for page in pages for row in page),
        key=lambda r: (r["created_at"], r["id"]),
        reverse=True,
    )
    shown = rows[:limit]
    more = len(rows) > limit
    return AdminOrderPage.model_validate(
        {
            "items": [{**r, "fulfilment": _fulfilment(r)} for r in shown],
            "limit": limit,
            "next_cursor": _cursor_of(shown[-1]["created_at"], shown[-1]["id"]) if more else None,
        }
    )


_CANCEL_COLUMNS = (
    CustomerOrder.customer_id,
    CustomerOrder.status,
    CustomerOrder.subtotal_cents,
    CustomerOrder.tax_cents,
    CustomerOrder.fulfilled_at,
)


async def _lock_for_cancel(
    conn: AsyncConnection, order_id: int, principal: Principal | None
) -> Row[int, str, int, int, datetime | None]:
    """Lock an order the caller may cancel (`principal` None: any); NotFound or Conflict."""
    stmt = select(*_CANCEL_COLUMNS).where(CustomerOrder.id == order_id).with_for_update()
    if principal is not None and not principal.is_admin:
        stmt = stmt.where(CustomerOrder.customer_id == principal.customer_id)
    order = (await conn.execute(stmt)).one_or_none()
    if order is None:
        raise NotFound("order", order_id)
    check_cancellable(OrderStatus(order.status))
    return order


async def _cancel_here(
    conn: AsyncConnection, order_id: int, *, restock: bool = True
) -> dict[int, int]:
    """Mark the order cancelled inside the caller's transaction and, with `restock`, return
    its stock there too (not in a shard, whose database holds no stock); its lines."""
    rows = await conn.execute(
        select(OrderLine.product_id, OrderLine.quantity).where(OrderLine.order_id == order_id)
    )
    lines = {r.product_id: r.quantity for r in rows}
    if restock:
        await catalog.release_stock(conn, lines=lines)
    await conn.execute(
        update(CustomerOrder)
        .where(CustomerOrder.id == order_id)
        .values(status=OrderStatus.CANCELLED.value, cancelled_at=utcnow(), cancel_requested_at=None)
    )
    return lines


async def cancel_order(
    dbs: Databases, *, order_id: int, principal: Principal, relay: Relay | None = None
) -> OrderRead:
    """Cancel an order that has not shipped: the shipment is cancelled, the stock returns and
    the ledger posts the reversal, in one transaction. Raises NotFound, or Conflict when the
    order is already cancelled or its shipment has left (naming what is allowed).

    An order whose follow-up work is still pending (stage 7) has no entries and no shipment
    yet: its stock returns and it is cancelled; the worker, which locks the same row, then
    finds it cancelled and posts and ships nothing (flows.py). Stage 8's federated databases
    take more than one transaction: see `_cancel_federated`."""
    if dbs.split:
        return await _cancel_federated(dbs, order_id=order_id, principal=principal, relay=relay)
    async with dbs.main.write() as conn:
        order = await _lock_for_cancel(conn, order_id, principal)
        fulfilled = order.fulfilled_at is not None
        if fulfilled:
            await delivery.cancel_for_order(conn, order_id=order_id)
            await accounting.post_order_cancelled(
                conn, order_id=order_id, customer_id=order.customer_id
            )
        await _cancel_here(conn, order_id)
        return await _fetch(conn, order_id, None)


async def _cancel_federated(
    dbs: Databases, *, order_id: int, principal: Principal, relay: Relay | None
) -> OrderRead:
    """Stage 8: the shipment lives in the delivery database and the ledger in accounting's, so
    no one transaction spans them.

    1. On the main database: lock the order and check that it may be cancelled. Not yet
       fulfilled, it has nothing elsewhere: it is cancelled here and now, and the worker finds
       it so. Otherwise the request is recorded (`cancel_requested_at`) and committed.
    2. On delivery's: cancel the shipment, or leave a cancelled one where the worker has yet to
       open it (`cancel_or_forestall`). A shipment that has left ends it: the request is
       cleared and the answer is 409.
    3. On the main database: return the stock, mark the order cancelled and record
       `order.cancelled`, from which the worker posts the reversal in accounting's.

    With order shards the order lives in its shard, not in the main database: steps 1 and 3
    run there, and the stock, kept in the main database, returns through `order.cancelled`
    too (the worker's `restock` step), for an order cancelled before its fulfilment as well.

    A crash after 1 leaves a request that the worker's reconciliation finishes
    (`finish_requested_cancels`); every step finds done what was done before it."""
    event: Event | None = None
    async with dbs.shard_write(order_id) as conn:
        order = await _lock_for_cancel(conn, order_id, principal)
        if order.fulfilled_at is None:
            restock_here = not dbs.shards
            lines = await _cancel_here(conn, order_id, restock=restock_here)
            if not restock_here:
                event = await _record_cancelled(conn, order, order_id, lines, reverse=False)
            found = await _fetch(conn, order_id, None)
        else:
            found = None
            await conn.execute(
                update(CustomerOrder)
                .where(CustomerOrder.id == order_id)
                .values(cancel_requested_at=utcnow())
            )
    if found is not None:
        if relay is not None and event is not None:
            relay.publish_soon([event], origin=dbs.shard_for(order_id))
        return found
    return await _finish_cancel(dbs, order_id=order_id, customer_id=order.customer_id, relay=relay)


async def _record_cancelled(
    conn: AsyncConnection,
    order: Row[int, str, int, int, datetime | None],
    order_id: int,
    lines: Mapping[int, int],
    *,
    reverse: bool,
) -> Event:
    return await flows.record_cancelled(
        conn,
        order_id=order_id,
        customer_id=order.customer_id,
        subtotal_cents=order.subtotal_cents,
        tax_cents=order.tax_cents,
        reverse=reverse,
        restock=[[p, q] for p, q in sorted(lines.items())] if lines else [],
    )


async def _finish_cancel(
    dbs: Databases, *, order_id: int, customer_id: int, relay: Relay | None
) -> OrderRead:
    """Steps 2 and 3 of `_cancel_federated`."""
    try:
        async with dbs.delivery.write() as conn:
            await delivery.cancel_or_forestall(conn, order_id=order_id, customer_id=customer_id)
    except IllegalTransition:
        async with dbs.shard_write(order_id) as conn:
            await conn.execute(
                update(CustomerOrder)
                .where(CustomerOrder.id == order_id)
                .values(cancel_requested_at=None)
            )
        raise
    event: Event | None = None
    async with dbs.shard_write(order_id) as conn:
        order = (
            await conn.execute(
                select(*_CANCEL_COLUMNS).where(CustomerOrder.id == order_id).with_for_update()
            )
        ).one()
        if order.status != OrderStatus.CANCELLED.value:
            restock_here = not dbs.shards
            lines = await _cancel_here(conn, order_id, restock=restock_here)
            event = await _record_cancelled(
                conn, order, order_id, {} if restock_here else lines, reverse=True
            )
        found = await _fetch(conn, order_id, None)
    if relay is not None and event is not None:
        relay.publish_soon([event], origin=dbs.shard_for(order_id))
    return found


async def finish_requested_cancels(
    dbs: Databases, *, older_than: timedelta, limit: int = 100, relay: Relay | None = None
) -> int:
    """Finish the cancellations (stage 8) asked for more than `older_than` ago and left
    unfinished by a crash between their transactions; how many ended cancelled. One whose
    shipment has left since is dropped, as its request would have been answered 409."""
    if not dbs.split:
        return 0
    pending: list[Row[int, int]] = []
    for db in dbs.recording():
        async with db.write() as conn:
            pending += (
                await conn.execute(
                    select(CustomerOrder.id, CustomerOrder.customer_id)
                    .where(
                        CustomerOrder.cancel_requested_at < utcnow() - older_than,
                        CustomerOrder.status != OrderStatus.CANCELLED.value,
                    )
                    .order_by(CustomerOrder.cancel_requested_at)
                    .limit(limit)
                )
            ).all()
    finished = 0
    for row in pending:
        try:
            await _finish_cancel(dbs, order_id=row.id, customer_id=row.customer_id, relay=relay)
        except IllegalTransition as exc:
            log.warning("cancellation of order %s dropped: %s", row.id, exc)
            continue
        log.warning("finished the cancellation of order %s, which a crash had left", row.id)
        finished += 1
    return finished


async def purge_settled(dbs: Databases, *, before: datetime, limit: int) -> int:
    """Forget settled reservations (main database) and order-id fences (each shard) older
    than `before`, at most `limit` from each, oldest first (stage 8); how many rows. A fence
    is needed only until its reservation is settled, seconds after the order."""
    if not dbs.shards:
        return 0
    old_settled = (
        select(Reservation.order_id)
        .where(Reservation.state != "held", Reservation.created_at < before)
        .order_by(Reservation.created_at)
        .limit(limit)
    )
    old_fences = (
        select(OrderFence.order_id)
        .where(OrderFence.created_at < before)
        .order_by(OrderFence.created_at)
        .limit(limit)
    )
    async with dbs.main.write() as conn:
        deleted = int(
            (
                await conn.execute(delete(Reservation).where(Reservation.order_id.in_(old_settled)))
            ).rowcount
        )
    for shard in dbs.shards:
        async with shard.write() as conn:
            deleted += int(
                (
                    await conn.execute(
                        delete(OrderFence).where(OrderFence.order_id.in_(old_fences))
                    )
                ).rowcount
            )
    return deleted


async def purge_idempotency_keys(
    db: Database, *, older_than: timedelta, limit: int | None = None
) -> int:
    """Forget Idempotency-Keys older than `older_than` (at most `limit` of them, oldest first,
    when given), in one transaction; returns how many."""
    expired = IdempotencyKey.created_at < utcnow() - older_than
    stmt = delete(IdempotencyKey).where(expired)
    if limit is not None:
        oldest = (
            select(IdempotencyKey.customer_id, IdempotencyKey.key)
            .where(expired)
            .order_by(IdempotencyKey.created_at)
            .limit(limit)
        )
        stmt = delete(IdempotencyKey).where(
            tuple_(IdempotencyKey.customer_id, IdempotencyKey.key).in_(oldest)
        )
    async with db.write() as conn:
        result = await conn.execute(stmt)
    return int(result.rowcount)
