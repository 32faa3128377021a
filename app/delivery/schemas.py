"""Delivery request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from app.delivery.domain import ShipmentStatus
from app.kernel.schemas import Page, ReadSchema, Schema


class ShipmentAdvance(Schema):
    to: Literal["packed", "shipped", "delivered"] = Field(
        description="The next status. Cancelling goes through the order (POST /orders/{id}/cancel)."
    )


class TrackingEvent(ReadSchema):
    status: ShipmentStatus
    at: datetime


class ShipmentRead(ReadSchema):
    id: int
    order_id: int
    status: ShipmentStatus
    allowed_next: list[ShipmentStatus] = Field(
        description="The statuses POST /admin/shipments/{id}/advance accepts from this one."
    )
    updated_at: datetime
    events: list[TrackingEvent]


ShipmentPage = Page[ShipmentRead]
