"""Carts: a customer's cart and its lines, for the PostgreSQL cart store.

One cart per customer (`cart_id` is derived from the customer id, as in the DynamoDB store). The
cart row keeps its version across checkouts, so a version (the checkout's Idempotency-Key) is
never reused. Lines hold no price: the catalog prices a cart when it is read.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 22:35:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cart",
        sa.Column("cart_id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("checked_out_version", sa.BigInteger(), nullable=True),
        sa.Column("checked_out_order_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customer.id"],
            name=op.f("fk_cart_customer_id_customer"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("cart_id", name=op.f("pk_cart")),
        sa.UniqueConstraint("customer_id", name=op.f("uq_cart_customer_id")),
    )
    op.create_table(
        "cart_item",
        sa.Column("cart_id", sa.String(length=64), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_cart_item_quantity_positive")),
        sa.ForeignKeyConstraint(
            ["cart_id"],
            ["cart.cart_id"],
            name=op.f("fk_cart_item_cart_id_cart"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("cart_id", "product_id", name=op.f("pk_cart_item")),
    )


def downgrade() -> None:
    op.drop_table("cart_item")
    op.drop_table("cart")
