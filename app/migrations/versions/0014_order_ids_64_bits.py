"""Order ids in 64 bits, in every table that holds one: stage 8's ids carry their logical shard
(`number * 1024 + logical`) and pass 2^31 - 1 after about two million orders, where a 32-bit
column would refuse the next order.

PostgreSQL only: on SQLite an INTEGER is 64 bits already. Each ALTER rewrites its table under
an exclusive lock (seconds for a million orders): run it in a quiet hour on a large shop.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
backward_compatible = True
"""Wider columns the app at 0013 reads and writes as before: it keeps serving while this rolls
out (an order it places waits for the table's lock, then goes through)."""

COLUMNS = (
    ("customer_order", "id"),
    ("order_line", "order_id"),
    ("ledger_entry", "order_id"),
    ("shipment", "order_id"),
    ("cart", "checked_out_order_id"),
)


def _alter(to: sa.types.TypeEngine[int], sequence_as: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=to)
    # The order numbers of a database without shards: a serial's sequence has a type of its own.
    op.execute(
        sa.text(
            "DO $$ BEGIN EXECUTE format('ALTER SEQUENCE %s AS " + sequence_as + "', "
            "pg_get_serial_sequence('customer_order', 'id')); END $$"
        )
    )


def upgrade() -> None:
    _alter(sa.BigInteger(), "bigint")


def downgrade() -> None:
    _alter(sa.Integer(), "integer")
