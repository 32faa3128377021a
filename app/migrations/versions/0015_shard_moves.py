"""Moving a logical shard online (stage 8): each shard's own record of the logical shards that
are moving away from it or have moved (`shard_move`), and the fence every write to a logical
shard's rows takes first (`shop_shard_fence`, PostgreSQL: shards are PostgreSQL).

The fence takes a shared advisory lock on the logical shard for the transaction, then reads
`shard_move`: a row `moving` answers SQLSTATE SH001, `gone` SH002. A move takes the same lock
exclusively to write its row, so it waits for the writes in flight, and every write after it
sees the row (each statement of a function reads the latest committed rows).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 13:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
backward_compatible = True
"""A new table and function the app at 0014 does not use: it keeps serving while this rolls
out (moving a logical shard needs every process at 0015)."""

FENCE = """
CREATE OR REPLACE FUNCTION shop_shard_fence(k integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    found text;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1936224868, k);
    SELECT state INTO found FROM shard_move WHERE logical = k;
    IF found = 'moving' THEN
        RAISE EXCEPTION 'logical shard % is moving to another database', k
            USING ERRCODE = 'SH001';
    ELSIF found = 'gone' THEN
        RAISE EXCEPTION 'logical shard % has moved to another database', k
            USING ERRCODE = 'SH002';
    END IF;
END $$
"""


def upgrade() -> None:
    op.create_table(
        "shard_move",
        sa.Column("logical", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("logical", name=op.f("pk_shard_move")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text(FENCE))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text("DROP FUNCTION shop_shard_fence(integer)"))
    op.drop_table("shard_move")
