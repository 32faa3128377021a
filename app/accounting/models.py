"""The ledger: append-only rows, one per posting (a trigger refuses UPDATE and DELETE)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from app.kernel.models import Base, OrderIdType, utcnow


class LedgerEntry(Base):
    __tablename__ = "ledger_entry"
    __table_args__ = (
        CheckConstraint(
            "debit_cents >= 0 AND credit_cents >= 0 AND (debit_cents = 0) <> (credit_cents = 0)",
            name="one_side",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(OrderIdType, index=True)
    customer_id: Mapped[int] = mapped_column(index=True)
    event: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(64), index=True)
    debit_cents: Mapped[int] = mapped_column(BigInteger)
    credit_cents: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
