"""Stage 8's shards: the directory of logical shards, the reservations and the sequence of
order numbers (in the main database), and the fence of taken order ids (in each shard). Every
database carries every table; each fills only its own.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
backward_compatible = True
"""New tables the app at 0011 ignores: it keeps serving while this rolls out."""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # shards are PostgreSQL; SQLite has none
        op.execute(sa.schema.CreateSequence(sa.Sequence("order_number_seq")))
    op.create_table(
        "shard_map",
        sa.Column("logical", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("logical", name=op.f("pk_shard_map")),
    )
    op.create_table(
        "reservation",
        sa.Column("order_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_reservation")),
    )
    # Partial: the worker looks only for reservations still held.
    op.create_index(
        "ix_reservation_held_expires_at",
        "reservation",
        ["expires_at"],
        postgresql_where=sa.text("state = 'held'"),
        sqlite_where=sa.text("state = 'held'"),
    )
    op.create_index("ix_reservation_created_at", "reservation", ["created_at"])
    op.create_table(
        "order_fence",
        sa.Column("order_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("void", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_order_fence")),
    )
    op.create_index(op.f("ix_order_fence_created_at"), "order_fence", ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_order_fence_created_at"), table_name="order_fence")
    op.drop_table("order_fence")
    op.drop_index("ix_reservation_created_at", table_name="reservation")
    op.drop_index("ix_reservation_held_expires_at", table_name="reservation")
    op.drop_table("reservation")
    op.drop_table("shard_map")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.schema.DropSequence(sa.Sequence("order_number_seq")))
