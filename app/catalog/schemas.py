"""Catalog request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from app.kernel.schemas import Cents, LongText, Name, Page, ReadSchema, Schema

Sku = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
]
ImageKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._/-]{1,300}$")]


class ProductCreate(Schema):
    sku: Sku = Field(description="Letters, digits, '.', '_' or '-'; compared case-insensitively.")
    name: Name
    description: LongText = ""
    price_cents: Cents
    image_key: ImageKey | None = Field(None, description="Key of the image in the assets store.")
    initial_stock: int = Field(0, ge=0, le=1_000_000)


class PriceChange(Schema):
    price_cents: Cents


class Restock(Schema):
    quantity: int = Field(ge=1, le=1_000_000, description="Units to add to the stock.")


class ProductRead(ReadSchema):
    id: int
    sku: str
    name: str
    description: str
    price_cents: int
    image_key: str | None
    image_url: str | None = Field(
        None, description="Where the image is served (a CDN URL at stage 5); null without one."
    )
    stock: int
    updated_at: datetime


ProductPage = Page[ProductRead]


class StockRead(ReadSchema):
    product_id: int
    quantity: int = Field(description="Units in stock, as the write primary holds them now.")


StockPage = Page[StockRead]
