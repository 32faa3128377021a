"""Orders, their lines (with the price paid), and the idempotency keys of POST /orders."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Sequence, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.kernel.models import Base, OrderIdType, utcnow


class CustomerOrder(Base):
    __tablename__ = "customer_order"
    __table_args__ = (
        Index("ix_customer_order_customer_id_id", "customer_id", "id"),
        # The admins' listing, newest first, paged by (created_at, id): see list_all_orders.
        Index("ix_customer_order_created_at_id", "created_at", "id"),
        Index(
            "ix_customer_order_cancel_requested_at",
            "cancel_requested_at",
            postgresql_where=text("cancel_requested_at IS NOT NULL"),
            sqlite_where=text("cancel_requested_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(OrderIdType, primary_key=True)
    # Every order belongs to an account that exists (a forged token cannot order for nobody).
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id", ondelete="RESTRICT"))
    status: Mapped[str] = mapped_column(String(16))
    subtotal_cents: Mapped[int] = mapped_column(BigInteger)
    tax_cents: Mapped[int] = mapped_column(BigInteger)
    total_cents: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    cancelled_at: Mapped[datetime | None]
    # When the ledger was posted and the shipment opened: in the placing transaction without a
    # queue, by `shop worker` with one (NULL until then; stays NULL if cancelled before).
    fulfilled_at: Mapped[datetime | None]
    # The confirmation e-mail, where a worker sends it (stage 7): when SES accepted it, or why
    # SES refused it for good (a sandbox, an unverified identity); and the lease a worker holds
    # while SES answers, so that no transaction stays open across the call.
    confirmation_sent_at: Mapped[datetime | None]
    confirmation_refused: Mapped[str | None] = mapped_column(String(500))
    confirmation_claimed_until: Mapped[datetime | None]
    # A cancellation under way across databases (stage 8): set before the shipment is
    # cancelled in the delivery database, cleared when the order is cancelled (or its shipment
    # found gone); the worker finishes one that a crash left behind.
    cancel_requested_at: Mapped[datetime | None]


class OrderLine(Base):
    __tablename__ = "order_line"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(
        OrderIdType, ForeignKey("customer_order.id", ondelete="CASCADE"), index=True
    )
    product_id: Mapped[int]
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int]
    unit_price_cents: Mapped[int]
    line_total_cents: Mapped[int] = mapped_column(BigInteger)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_key"

    customer_id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None]
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


ORDER_NUMBERS = Sequence("order_number_seq", metadata=Base.metadata)
"""Stage 8: order numbers drawn in the main database with the stock's hold, so that ids stay
unique across shards whichever shard a logical shard lives in (an order id is a number times
LOGICAL_SHARDS plus its customer's logical shard)."""


class Reservation(Base):
    """Stage 8: stock taken for an order whose record lives in its customer's shard, in the
    main database with the stock. `held` until the order is known to exist (`confirmed`) or
    known never to (`released`, its stock returned); the worker settles one left `held` past
    `expires_at` (app/orders/service.py, `settle_expired_reservations`)."""

    __tablename__ = "reservation"
    __table_args__ = (
        Index(
            "ix_reservation_held_expires_at",
            "expires_at",
            postgresql_where=text("state = 'held'"),
            sqlite_where=text("state = 'held'"),
        ),
        Index("ix_reservation_created_at", "created_at"),
    )

    order_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    customer_id: Mapped[int]
    lines: Mapped[list[list[int]]] = mapped_column(JSON)
    """[[product_id, quantity], ...]: what the stock gets back if the order never exists."""
    state: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OrderFence(Base):
    """Stage 8, in each shard: an order id that is taken, and by whom. The order's own
    transaction inserts it (`void` false); settling a reservation inserts it void unless it is
    there. Whoever inserts it first decides, for good: the order exists, or it never will (its
    transaction, arriving later, fails on the fence). A settlement that dies after taking it
    leaves it void, and the next one reads it so."""

    __tablename__ = "order_fence"

    order_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    void: Mapped[bool]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
