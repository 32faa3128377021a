"""A cancellation in progress across databases (stage 8): when it was asked for, until the
order is cancelled or its shipment is found to have left; the worker finishes one left behind.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
backward_compatible = True
"""A nullable column and an index the app at 0010 ignores: it keeps serving while this rolls out."""


def upgrade() -> None:
    with op.batch_alter_table("customer_order") as batch:
        batch.add_column(
            sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
    # Partial: only the few orders whose cancellation is under way are in it.
    op.create_index(
        "ix_customer_order_cancel_requested_at",
        "customer_order",
        ["cancel_requested_at"],
        postgresql_where=sa.text("cancel_requested_at IS NOT NULL"),
        sqlite_where=sa.text("cancel_requested_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_customer_order_cancel_requested_at", table_name="customer_order")
    with op.batch_alter_table("customer_order") as batch:
        batch.drop_column("cancel_requested_at")
