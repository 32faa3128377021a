"""Order request and response models."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, field_validator

from app.kernel.schemas import Id, Page, Quantity, ReadSchema, Schema
from app.orders.domain import MAX_LINES, Fulfilment, OrderStatus, lines_problem


class OrderLineCreate(Schema):
    product_id: Id
    quantity: Quantity


class OrderCreate(Schema):
    lines: list[OrderLineCreate] = Field(min_length=1, max_length=MAX_LINES)

    @field_validator("lines")
    @classmethod
    def _distinct_products(cls, lines: list[OrderLineCreate]) -> list[OrderLineCreate]:
        problem = lines_problem([(line.product_id, line.quantity) for line in lines])
        if problem:
            raise ValueError(problem)
        return lines

    def as_pairs(self) -> list[tuple[int, int]]:
        return [(line.product_id, line.quantity) for line in self.lines]


class OrderLineRead(ReadSchema):
    product_id: int
    sku: str
    name: str
    quantity: int
    unit_price_cents: int
    line_total_cents: int


class OrderRead(ReadSchema):
    id: int
    status: OrderStatus
    subtotal_cents: int
    tax_cents: int
    total_cents: int
    created_at: datetime
    cancelled_at: datetime | None
    fulfilment: Fulfilment = Field(
        Fulfilment.DONE,
        description="Whether the ledger is posted and the shipment opened: `done`; `pending` "
        "while a worker has yet to do it (stage 7, with a queue); `skipped` when the order was "
        "cancelled before that.",
    )
    lines: list[OrderLineRead]


class OrderSummary(ReadSchema):
    id: int
    status: OrderStatus
    fulfilment: Fulfilment = Fulfilment.DONE
    total_cents: int
    created_at: datetime


OrderPage = Page[OrderSummary]


class AdminOrderSummary(OrderSummary):
    customer_id: int


class AdminOrderPage(ReadSchema):
    """One page of every customer's orders, newest first. `next_cursor` (null on the last
    page) asks for the page after this one: orders placed meanwhile only ever appear on the
    first page, never shift a later one."""

    items: list[AdminOrderSummary]
    limit: int
    next_cursor: str | None


class ShipmentPending(ReadSchema):
    """The answer while an order's shipment is not open yet (202): the order is placed, and a
    worker has still to post its ledger and open its shipment (stage 7). Ask again after
    `Retry-After` seconds."""

    order_id: int
    fulfilment: Fulfilment = Field(description="Always `pending` here.")
    detail: str
