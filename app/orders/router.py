"""Order HTTP routes: place, read, list and cancel your orders."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Header, Path, Query, status
from fastapi.responses import JSONResponse, Response

from app.accounting.schemas import EntryRead
from app.delivery.schemas import ShipmentRead
from app.kernel.schemas import MAX_ORDER_ID
from app.orders import service
from app.orders.schemas import (
    AdminOrderPage,
    OrderCreate,
    OrderPage,
    OrderRead,
    ShipmentPending,
)
from app.web.deps import (
    AdminDep,
    DatabasesDep,
    PageLimit,
    PageOffset,
    PrincipalDep,
    ResourcesDep,
)
from app.web.http import model_response
from app.web.openapi import ErrorBody, OutOfStockBody, conflict, errors

router = APIRouter(tags=["orders"])

OrderId = Annotated[
    int, Path(ge=1, le=MAX_ORDER_ID, description="Order id: 64-bit since API 0.2.0.")
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry-safe key: the same key and body return the first answer and create "
        "nothing; the same key with another body answers 422. Kept for at least 24 hours.",
    ),
]


NewOrder = Annotated[
    OrderCreate,
    Body(
        openapi_examples={
            "two products": {
                "summary": "Two lines",
                "value": {
                    "lines": [{"product_id": 1, "quantity": 2}, {"product_id": 7, "quantity": 1}]
                },
            }
        }
    ),
]


@router.post(
    "/orders",
    response_model=OrderRead,
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {
            "description": "The order, as placed (or as first placed, when replayed).",
            "headers": {
                "Idempotent-Replayed": {
                    "description": "`true` when this is the first answer to the same "
                    "Idempotency-Key and body, replayed: no new order was made.",
                    "schema": {"type": "string", "enum": ["true"]},
                }
            },
        }
    }
    | errors(401, 404, 413, 422, 503)
    | conflict(
        "Not enough stock for a line (nothing was reserved), or a request with the same "
        "Idempotency-Key is still in progress.",
        OutOfStockBody | ErrorBody,
    ),
)
async def place_order(
    res: ResourcesDep,
    principal: PrincipalDep,
    body: NewOrder,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Place an order: stock is reserved and the order recorded, or nothing happens at all.
    The ledger posting and the shipment follow: in the same transaction (`fulfilment: done`),
    or, where a queue takes that work off the request, shortly after (`fulfilment: pending`
    until then). 404 names an unknown product; 409 one short of stock."""
    result = await service.place_order(
        res.databases,
        customer_id=principal.customer_id,
        data=body,
        tax_rate_bp=res.settings.tax_rate_bp,
        idempotency_key=idempotency_key,
        idempotency_ttl=timedelta(hours=res.settings.idempotency_ttl_h),
        hold=timedelta(seconds=res.settings.order_hold_s),
        relay=res.relay,
        mailer=res.mailer,
    )
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return JSONResponse(result.body, status_code=result.status_code, headers=headers)


@router.get("/orders", response_model=OrderPage, responses=errors(401, 422, 503))
async def list_my_orders(
    dbs: DatabasesDep, principal: PrincipalDep, limit: PageLimit = 20, offset: PageOffset = 0
) -> Response:
    """Your orders, newest first."""
    found = await service.list_orders(
        dbs, customer_id=principal.customer_id, limit=limit, offset=offset
    )
    return model_response(found)


@router.get("/admin/orders", response_model=AdminOrderPage, responses=errors(401, 403, 422, 503))
async def list_all_orders(
    dbs: DatabasesDep,
    _admin: AdminDep,
    limit: PageLimit = 20,
    cursor: Annotated[
        str | None,
        Query(
            max_length=48,
            description="The `next_cursor` of the page before; absent for the first page.",
        ),
    ] = None,
) -> Response:
    """Every customer's orders, newest first (admins). Paged by cursor, so a page never shifts
    while orders are placed; with order shards (stage 8) every shard answers each page."""
    return model_response(await service.list_all_orders(dbs, limit=limit, cursor=cursor))


@router.get("/orders/{order_id}", response_model=OrderRead, responses=errors(401, 404, 422, 503))
async def get_order(dbs: DatabasesDep, principal: PrincipalDep, order_id: OrderId) -> Response:
    """One of your orders. 404 for orders that are not yours."""
    return model_response(await service.get_order(dbs, order_id=order_id, principal=principal))


@router.post(
    "/orders/{order_id}/cancel",
    response_model=OrderRead,
    responses=errors(401, 404, 422, 503)
    | conflict("The order is already cancelled, or its shipment has left."),
)
async def cancel_order(res: ResourcesDep, principal: PrincipalDep, order_id: OrderId) -> OrderRead:
    """Cancel one of your orders while it has not shipped. 409 once it has."""
    return await service.cancel_order(
        res.databases, order_id=order_id, principal=principal, relay=res.relay
    )


@router.get(
    "/orders/{order_id}/shipment",
    response_model=ShipmentRead,
    responses={
        202: {
            "model": ShipmentPending,
            "description": "Placed, not yet fulfilled (stage 7): no shipment yet; ask again "
            "after `Retry-After` seconds.",
        },
        **errors(401, 404, 422, 503),
    },
    tags=["delivery"],
)
async def track_order(
    dbs: DatabasesDep, principal: PrincipalDep, order_id: OrderId
) -> ShipmentRead | Response:
    """Where one of your orders is, with its history. 202 while a worker has yet to open its
    shipment; 404 for others' orders, and for one cancelled before it was fulfilled."""
    found = await service.order_shipment(dbs, order_id=order_id, principal=principal)
    if isinstance(found, ShipmentPending):
        pending = model_response(found, status_code=202)
        pending.headers["retry-after"] = "1"
        return pending
    return found


@router.get(
    "/ledger/orders/{order_id}",
    response_model=list[EntryRead],
    responses=errors(401, 404, 422, 503),
    tags=["accounting"],
)
async def list_order_entries(
    dbs: DatabasesDep, principal: PrincipalDep, order_id: OrderId
) -> list[EntryRead]:
    """The ledger entries of one of your orders (admins: any order), oldest first; an empty
    list for an order with nothing to post (a free one). 404 for others' orders."""
    return await service.order_ledger(dbs, order_id=order_id, principal=principal)
