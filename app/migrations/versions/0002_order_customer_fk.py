"""Every order belongs to an existing customer: a foreign key from customer_order to customer.

Before it, a correctly signed token for an account that did not exist could place an order.
Deleting a customer who has orders is refused (RESTRICT): the ledger refers to those orders.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 21:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK = "fk_customer_order_customer_id_customer"


def upgrade() -> None:
    with op.batch_alter_table("customer_order") as batch:
        batch.create_foreign_key(FK, "customer", ["customer_id"], ["id"], ondelete="RESTRICT")


def downgrade() -> None:
    with op.batch_alter_table("customer_order") as batch:
        batch.drop_constraint(FK, type_="foreignkey")
