"""The confirmation e-mail's outcome, on the order: sent when, or refused why; and the lease a
worker takes while SES answers, so that the mail step holds no transaction during the call.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 17:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
backward_compatible = True
"""Three nullable columns the app at 0009 ignores: it keeps serving while this one rolls out."""


def upgrade() -> None:
    with op.batch_alter_table("customer_order") as batch:
        batch.add_column(
            sa.Column("confirmation_sent_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("confirmation_refused", sa.String(length=500), nullable=True))
        batch.add_column(
            sa.Column("confirmation_claimed_until", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("customer_order") as batch:
        batch.drop_column("confirmation_claimed_until")
        batch.drop_column("confirmation_refused")
        batch.drop_column("confirmation_sent_at")
