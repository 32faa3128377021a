"""Cart HTTP routes: your cart, its items, and its checkout."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request, status
from fastapi.responses import JSONResponse, Response

from app.carts import service
from app.carts.domain import CartStoreUnavailable
from app.carts.schemas import CartCheckout, CartItemSet, CartRead
from app.carts.store import CartStore, store_for
from app.kernel.schemas import MAX_INT32
from app.orders.schemas import OrderRead
from app.web.deps import PrincipalDep, ResourcesDep
from app.web.http import model_response
from app.web.openapi import ErrorBody, OutOfStockBody, conflict, errors

router = APIRouter(tags=["carts"])


async def cart_store(res: ResourcesDep) -> CartStore:
    """The store of this process's carts (tests override this dependency to run the same
    HTTP tests against both stores)."""
    return store_for(res)


CartStoreDep = Annotated[CartStore, Depends(cart_store)]


def cart_store_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    """The exception handler of CartStoreUnavailable (installed by create_app): 503 with
    Retry-After, like an unavailable database."""
    assert isinstance(exc, CartStoreUnavailable)
    return JSONResponse(
        {"detail": exc.message},
        status_code=exc.status_code,
        headers={"Retry-After": str(exc.retry_after_s)},
    )


ProductId = Annotated[int, Path(ge=1, le=MAX_INT32, description="Product id.")]
ItemQuantity = Annotated[
    CartItemSet,
    Body(openapi_examples={"three": {"summary": "Three units", "value": {"quantity": 3}}}),
]
CheckoutVersion = Annotated[
    CartCheckout,
    Body(
        openapi_examples={
            "as seen": {"summary": "The version GET /cart showed", "value": {"version": 4}}
        }
    ),
]
_BUSY = "The cart changed under this request too many times in a row (retry)"


@router.get("/cart", response_model=CartRead, responses=errors(401, 503))
async def get_cart(res: ResourcesDep, store: CartStoreDep, principal: PrincipalDep) -> Response:
    """Your cart at today's prices, with totals as an order would have them now. Lines whose
    product is no longer sold, or short of stock, say so in `problem`. Only you see your cart."""
    cart = await service.get_cart(
        store,
        res.db,
        customer_id=principal.customer_id,
        tax_rate_bp=res.settings.tax_rate_bp,
    )
    return model_response(cart)


@router.put(
    "/cart/items/{product_id}",
    response_model=CartRead,
    responses=errors(401, 404, 413, 422, 503)
    | conflict(f"The cart already holds 50 other products. {_BUSY}."),
)
async def set_cart_item(
    res: ResourcesDep,
    store: CartStoreDep,
    principal: PrincipalDep,
    product_id: ProductId,
    body: ItemQuantity,
) -> Response:
    """Put a product in your cart, or change how many units it holds (1 to 10000). No stock
    is taken until checkout. 404 for an unknown product."""
    cart = await service.set_item(
        store,
        res.db,
        customer_id=principal.customer_id,
        product_id=product_id,
        quantity=body.quantity,
        tax_rate_bp=res.settings.tax_rate_bp,
    )
    return model_response(cart)


@router.delete(
    "/cart/items/{product_id}",
    response_model=CartRead,
    responses=errors(401, 404, 422, 503) | conflict(f"{_BUSY}."),
)
async def remove_cart_item(
    res: ResourcesDep, store: CartStoreDep, principal: PrincipalDep, product_id: ProductId
) -> Response:
    """Take a product out of your cart. 404 when your cart does not hold it."""
    cart = await service.remove(
        store,
        res.db,
        customer_id=principal.customer_id,
        product_id=product_id,
        tax_rate_bp=res.settings.tax_rate_bp,
    )
    return model_response(cart)


@router.post(
    "/cart/checkout",
    response_model=OrderRead,
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {
            "description": "The order, as placed (or as first placed, for a retry).",
            "headers": {
                "Idempotent-Replayed": {
                    "description": "`true` when this checkout of this version was placed "
                    "before: its order is answered and nothing new is ordered.",
                    "schema": {"type": "string", "enum": ["true"]},
                }
            },
        }
    }
    | errors(401, 413, 422, 503)
    | conflict(
        "Nothing was ordered and the cart is as it was: a product is short of stock or no "
        "longer sold, the cart is empty, or it changed since `version`.",
        OutOfStockBody | ErrorBody,
    ),
)
async def checkout_cart(
    res: ResourcesDep, store: CartStoreDep, principal: PrincipalDep, body: CheckoutVersion
) -> JSONResponse:
    """Order what your cart held at `version` (stock reserved, ledger posted, shipment opened,
    all or nothing), then empty it of what was ordered. A retry with the same version answers
    the same order (`Idempotent-Replayed: true`) and never orders twice."""
    result = await service.checkout(
        store,
        res.databases,
        customer_id=principal.customer_id,
        version=body.version,
        tax_rate_bp=res.settings.tax_rate_bp,
        idempotency_ttl=timedelta(hours=res.settings.idempotency_ttl_h),
        hold=timedelta(seconds=res.settings.order_hold_s),
        relay=res.relay,
        mailer=res.mailer,
    )
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return JSONResponse(result.body, status_code=result.status_code, headers=headers)
