"""Expand/contract: which app versions a migrated database still serves.

`shop migrate` records, for the revision it leaves the database at, the oldest revision whose
app still runs against it: the revisions above that one are all marked `backward_compatible`
(they only add what an older app ignores). An older app reads that row to accept a database
ahead of its own head; without it, the older app refuses to start and says why.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
backward_compatible = True
"""A new table nothing older reads: the app at 0008 still runs against this schema."""


def upgrade() -> None:
    op.create_table(
        "schema_compatibility",
        sa.Column("revision", sa.String(length=32), nullable=False),
        sa.Column("oldest_app_revision", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_schema_compatibility")),
    )


def downgrade() -> None:
    op.drop_table("schema_compatibility")
