"""Catalog HTTP routes: browsing for everyone, product management for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response, status

from app.catalog import service
from app.catalog.schemas import PriceChange, ProductCreate, ProductPage, ProductRead, Restock
from app.core.deps import AdminDep, CacheDep, DatabaseDep, PageDep
from app.core.openapi import conflict, errors
from app.core.schemas import MAX_INT32, SearchText

router = APIRouter(tags=["catalog"])

ProductId = Annotated[int, Path(ge=1, le=MAX_INT32, description="Product id.")]
NewProduct = Annotated[
    ProductCreate,
    Body(
        openapi_examples={
            "lamp": {
                "summary": "A product with its first stock",
                "value": {
                    "sku": "LAMP-OAK-01",
                    "name": "Oak Desk Lamp",
                    "description": "A compact desk lamp in oiled oak.",
                    "price_cents": 4990,
                    "initial_stock": 25,
                },
            }
        }
    ),
]
NewPrice = Annotated[
    PriceChange,
    Body(openapi_examples={"sale": {"summary": "EUR 39.90", "value": {"price_cents": 3990}}}),
]
Units = Annotated[
    Restock,
    Body(openapi_examples={"delivery": {"summary": "A delivery of 50", "value": {"quantity": 50}}}),
]


@router.get("/products", response_model=ProductPage, responses=errors(422, 503))
async def list_products(
    db: DatabaseDep,
    cache: CacheDep,
    page: PageDep,
    q: Annotated[
        SearchText | None, Query(description="Only products whose name or SKU contains this.")
    ] = None,
) -> Response:
    """List products by name, a page at a time. The stock shown may be a few seconds old
    (`SHOP_CACHE_STOCK_STALENESS_S`); prices and new products show at once."""
    body = await service.page_json(db, cache, text=q, limit=page.limit, offset=page.offset)
    return Response(body, media_type="application/json")


@router.get("/products/{product_id}", response_model=ProductRead, responses=errors(404, 422, 503))
async def get_product(db: DatabaseDep, cache: CacheDep, product_id: ProductId) -> Response:
    """One product, with the units in stock. The stock shown may be a few seconds old
    (`SHOP_CACHE_STOCK_STALENESS_S`); placing an order always checks the real stock."""
    body = await service.product_json(db, cache, product_id=product_id)
    return Response(body, media_type="application/json")


@router.post(
    "/admin/products",
    response_model=ProductRead,
    status_code=status.HTTP_201_CREATED,
    responses=errors(401, 403, 413, 422, 503) | conflict("A product with this SKU exists."),
)
async def create_product(
    db: DatabaseDep, cache: CacheDep, _admin: AdminDep, body: NewProduct
) -> ProductRead:
    """Create a product (admins). 409 when the SKU exists."""
    return await service.create_product(db, data=body, cache=cache)


@router.put(
    "/admin/products/{product_id}/price",
    response_model=ProductRead,
    responses=errors(401, 403, 404, 413, 422, 503),
)
async def change_price(
    db: DatabaseDep, cache: CacheDep, _admin: AdminDep, product_id: ProductId, body: NewPrice
) -> ProductRead:
    """Change a product's price (admins). Orders already placed keep their price."""
    return await service.change_price(
        db, product_id=product_id, price_cents=body.price_cents, cache=cache
    )


@router.post(
    "/admin/products/{product_id}/restock",
    response_model=ProductRead,
    responses=errors(401, 403, 404, 413, 422, 503)
    | conflict("The stock would exceed its maximum (`max_stock`)."),
)
async def restock(
    db: DatabaseDep, cache: CacheDep, _admin: AdminDep, product_id: ProductId, body: Units
) -> ProductRead:
    """Add units to a product's stock (admins). 409 when it would exceed the maximum."""
    return await service.restock(db, product_id=product_id, quantity=body.quantity, cache=cache)
