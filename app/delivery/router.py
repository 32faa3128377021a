"""Delivery HTTP routes: the shipment work queue for admins. Customers track an order at
`GET /orders/{id}/shipment`, served by the orders module, which knows whether the order is
still waiting for its shipment."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query

from app.delivery import service
from app.delivery.domain import ShipmentStatus
from app.delivery.schemas import ShipmentAdvance, ShipmentPage, ShipmentRead
from app.kernel.schemas import MAX_INT32
from app.web.deps import AdminDep, DatabasesDep, PageLimit, PageOffset
from app.web.openapi import TransitionRefused, conflict, errors

router = APIRouter(tags=["delivery"])


@router.get("/admin/shipments", response_model=ShipmentPage, responses=errors(401, 403, 422, 503))
async def list_shipments(
    dbs: DatabasesDep,
    _admin: AdminDep,
    status: Annotated[ShipmentStatus | None, Query(description="Only this status.")] = None,
    limit: PageLimit = 20,
    offset: PageOffset = 0,
) -> ShipmentPage:
    """Shipments, oldest first (admins)."""
    return await service.list_shipments(dbs.delivery, status=status, limit=limit, offset=offset)


@router.post(
    "/admin/shipments/{shipment_id}/advance",
    response_model=ShipmentRead,
    responses=errors(401, 403, 404, 413, 422, 503)
    | conflict("Not a next status of this shipment; `allowed` names those.", TransitionRefused),
)
async def advance_shipment(
    dbs: DatabasesDep,
    _admin: AdminDep,
    shipment_id: Annotated[int, Path(ge=1, le=MAX_INT32)],
    body: Annotated[
        ShipmentAdvance,
        Body(openapi_examples={"pack": {"summary": "Packed", "value": {"to": "packed"}}}),
    ],
) -> ShipmentRead:
    """Move a shipment on (admins): to one of its `allowed_next` statuses. 409 names those
    when the move is not one of them."""
    return await service.advance_shipment(
        dbs.delivery, shipment_id=shipment_id, target=ShipmentStatus(body.to)
    )
