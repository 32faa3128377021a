"""Cart request and response models."""

from __future__ import annotations

from pydantic import Field

from app.carts.domain import MAX_QUANTITY
from app.kernel.schemas import ReadSchema, Schema


class CartItemSet(Schema):
    quantity: int = Field(
        ge=1,
        le=MAX_QUANTITY,
        description="Units of the product the cart should hold (to remove it, DELETE the item).",
    )


class CartCheckout(Schema):
    version: int = Field(
        ge=0,
        le=2**53,
        description="The cart version you are checking out, as GET /cart showed it. A retry "
        "with the same version answers the same order and never orders twice.",
    )


class CartLineRead(ReadSchema):
    product_id: int
    quantity: int
    sku: str | None = Field(description="Null when the product is no longer sold.")
    name: str | None
    unit_price_cents: int | None = Field(description="Today's price (carts keep no prices).")
    line_total_cents: int
    in_stock: int = Field(description="Units in stock now (0 when no longer sold).")
    problem: str | None = Field(
        description="Why a checkout would refuse this line now (no longer sold, not enough "
        "stock), or null."
    )


class CartRead(ReadSchema):
    cart_id: str
    version: int = Field(description="Changes with every change; check out this version.")
    lines: list[CartLineRead]
    subtotal_cents: int
    tax_cents: int
    total_cents: int
