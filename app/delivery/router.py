"""Delivery HTTP routes: tracking for customers, the shipment work queue for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.core.deps import AdminDep, DatabaseDep, PageDep, PrincipalDep
from app.core.schemas import MAX_INT32
from app.delivery import service
from app.delivery.domain import ShipmentStatus
from app.delivery.schemas import ShipmentAdvance, ShipmentPage, ShipmentRead

router = APIRouter(tags=["delivery"])


@router.get("/orders/{order_id}/shipment", response_model=ShipmentRead)
async def tracking(
    db: DatabaseDep,
    principal: PrincipalDep,
    order_id: Annotated[int, Path(ge=1, le=MAX_INT32)],
) -> ShipmentRead:
    """Where one of your orders is, with its history. 404 for others' orders."""
    return await service.tracking(db, order_id=order_id, principal=principal)


@router.get("/admin/shipments", response_model=ShipmentPage)
async def list_shipments(
    db: DatabaseDep,
    _admin: AdminDep,
    page: PageDep,
    status: Annotated[ShipmentStatus | None, Query(description="Only this status.")] = None,
) -> ShipmentPage:
    """Shipments, oldest first (admins)."""
    return await service.list_shipments(db, status=status, limit=page.limit, offset=page.offset)


@router.post("/admin/shipments/{shipment_id}/advance", response_model=ShipmentRead)
async def advance(
    db: DatabaseDep,
    _admin: AdminDep,
    shipment_id: Annotated[int, Path(ge=1, le=MAX_INT32)],
    body: ShipmentAdvance,
) -> ShipmentRead:
    """Move a shipment on (admins). 409 names the statuses allowed from the current one."""
    return await service.advance_shipment(
        db, shipment_id=shipment_id, target=ShipmentStatus(body.to)
    )
