"""The PostgreSQL cart store's tables: one cart row per customer and its lines (no prices)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.kernel.models import Base, OrderIdType


class CartRow(Base):
    __tablename__ = "cart"

    cart_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # A deleted account takes its cart with it; a cart is nobody else's business.
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customer.id", ondelete="CASCADE"), unique=True
    )
    # Only ever grows, across checkouts: cart_id + version is a checkout's Idempotency-Key.
    version: Mapped[int] = mapped_column(BigInteger)
    checked_out_version: Mapped[int | None] = mapped_column(BigInteger)
    checked_out_order_id: Mapped[int | None] = mapped_column(OrderIdType)
    updated_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class CartItemRow(Base):
    __tablename__ = "cart_item"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity_positive"),)

    cart_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("cart.cart_id", ondelete="CASCADE"), primary_key=True
    )
    product_id: Mapped[int] = mapped_column(primary_key=True)
    quantity: Mapped[int]
