"""Orders finished by workers (stage 7): the outbox, the worker's processed events, and when an
order's ledger posting and shipment were done.

Every order placed before this revision was fulfilled in its own transaction, so its
`fulfilled_at` is its `created_at`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 22:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox_event",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_event")),
    )
    op.create_index(
        "ix_outbox_event_published_at_created_at",
        "outbox_event",
        ["published_at", "created_at"],
        unique=False,
    )
    op.create_table(
        "processed_event",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("step", sa.String(length=32), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "step", name=op.f("pk_processed_event")),
    )
    with op.batch_alter_table("customer_order") as batch:
        batch.add_column(sa.Column("fulfilled_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE customer_order SET fulfilled_at = created_at")


def downgrade() -> None:
    # An order still waiting for a worker cannot wait any longer once the outbox is gone:
    # refuse rather than leave orders with no ledger posting and no shipment.
    pending = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT count(*) FROM customer_order "
                "WHERE fulfilled_at IS NULL AND status <> 'cancelled'"
            )
        )
        .scalar()
    )
    if pending:
        raise RuntimeError(
            f"{pending} orders still wait for `shop worker`; run it until they are fulfilled "
            "before downgrading below 0004"
        )
    with op.batch_alter_table("customer_order") as batch:
        batch.drop_column("fulfilled_at")
    op.drop_table("processed_event")
    op.drop_index("ix_outbox_event_published_at_created_at", table_name="outbox_event")
    op.drop_table("outbox_event")
