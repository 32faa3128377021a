"""The shipment state machine: which status may follow which."""

from __future__ import annotations

from enum import StrEnum

from app.core.errors import IllegalTransition


class ShipmentStatus(StrEnum):
    PENDING = "pending"
    PACKED = "packed"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


TRANSITIONS: dict[ShipmentStatus, tuple[ShipmentStatus, ...]] = {
    ShipmentStatus.PENDING: (ShipmentStatus.PACKED, ShipmentStatus.CANCELLED),
    ShipmentStatus.PACKED: (ShipmentStatus.SHIPPED, ShipmentStatus.CANCELLED),
    ShipmentStatus.SHIPPED: (ShipmentStatus.DELIVERED,),
    ShipmentStatus.DELIVERED: (),
    ShipmentStatus.CANCELLED: (),
}


def allowed_after(current: ShipmentStatus) -> tuple[ShipmentStatus, ...]:
    return TRANSITIONS[current]


def check_transition(current: ShipmentStatus, target: ShipmentStatus) -> None:
    """Raise IllegalTransition, naming the allowed next statuses, unless current -> target is
    an edge of the state machine."""
    allowed = TRANSITIONS[current]
    if target not in allowed:
        raise IllegalTransition("shipment", current.value, target.value, [s.value for s in allowed])
