"""The admins' listing of every order, newest first, paged by (created_at, id) in each
database that holds orders (stage 8's shards each answer one page, merged).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
backward_compatible = True
"""An index the app at 0012 does not need: it keeps serving while this rolls out."""


def upgrade() -> None:
    op.create_index(
        "ix_customer_order_created_at_id", "customer_order", ["created_at", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_customer_order_created_at_id", table_name="customer_order")
