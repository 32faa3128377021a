"""When a worker finished an outbox event: what reconciliation looks for (events whose message
was lost, dead-lettered or never published) and what the purge waits for.

Existing events start unhandled: the first reconciliation applies each once more, which their
processed_event claims make a no-op for every step already done, and marks them handled.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 14:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_event") as batch:
        batch.add_column(sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_outbox_event_handled_at_created_at",
        "outbox_event",
        ["handled_at", "created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_event_handled_at_created_at", table_name="outbox_event")
    with op.batch_alter_table("outbox_event") as batch:
        batch.drop_column("handled_at")
