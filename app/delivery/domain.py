"""The shipment state machine: which status may follow which."""

from __future__ import annotations

from enum import StrEnum

from app.kernel.errors import IllegalTransition


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


def advances_after(current: ShipmentStatus) -> tuple[ShipmentStatus, ...]:
    """The statuses an admin may advance a shipment to: the next ones, except `cancelled`,
    which only cancelling the order reaches."""
    return tuple(s for s in TRANSITIONS[current] if s is not ShipmentStatus.CANCELLED)


def check_transition(current: ShipmentStatus, target: ShipmentStatus) -> None:
    """Raise IllegalTransition, naming the allowed next statuses, unless current -> target is
    an edge of the state machine."""
    allowed = TRANSITIONS[current]
    if target not in allowed:
        raise IllegalTransition("shipment", current.value, target.value, [s.value for s in allowed])


def check_advance(current: ShipmentStatus, target: ShipmentStatus) -> None:
    """Raise IllegalTransition, naming the statuses an admin may advance to, unless
    current -> target is one of them."""
    allowed = advances_after(current)
    if target not in allowed:
        raise IllegalTransition("shipment", current.value, target.value, [s.value for s in allowed])
