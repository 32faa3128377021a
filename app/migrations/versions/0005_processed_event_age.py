"""An index on processed_event's age, for the worker's purge of old claims.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 14:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_processed_event_processed_at", "processed_event", ["processed_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_processed_event_processed_at", table_name="processed_event")
