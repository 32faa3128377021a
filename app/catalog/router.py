"""Catalog HTTP routes: browsing for everyone, product management for admins."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response, status
from starlette.requests import ClientDisconnect

from app.catalog import service
from app.catalog.schemas import (
    PriceChange,
    ProductCreate,
    ProductPage,
    ProductRead,
    Restock,
    StockPage,
)
from app.kernel.errors import InvalidRequest
from app.kernel.schemas import MAX_INT32, SearchText
from app.web.deps import (
    AdminDep,
    AssetsDep,
    CacheDep,
    DatabaseDep,
    PageLimit,
    PageOffset,
    ResourcesDep,
)
from app.web.http import public_response
from app.web.openapi import conflict, errors

router = APIRouter(tags=["catalog"])

IMAGE_UPLOAD = re.compile(r"^/admin/products/[^/]+/image$")
"""The path of the image upload: its body limit is SHOP_IMAGE_MAX_BYTES, not SHOP_MAX_BODY_BYTES."""

ProductId = Annotated[int, Path(ge=1, le=MAX_INT32, description="Product id.")]
IfNoneMatch = Annotated[
    str | None,
    Header(
        description="The ETag of an answer you kept: 304 with no body while it is still current."
    ),
]
# What a public catalog answer carries, for the docs.
_CACHEABLE: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "Cache-Control": {
                "description": "`public, max-age=N` (SHOP_CATALOG_MAX_AGE_S): a CDN or browser "
                "may reuse the answer that long.",
                "schema": {"type": "string"},
            },
            "ETag": {
                "description": "A strong tag of the body; send it back in If-None-Match.",
                "schema": {"type": "string"},
            },
        }
    },
    304: {"description": "Not modified: the answer whose ETag you sent is still current."},
}
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
_IMAGE_BODY = {
    "required": True,
    "description": "The image file's bytes: PNG, JPEG or WebP (recognised by its first bytes, "
    "whatever the Content-Type says), at most SHOP_IMAGE_MAX_BYTES (2 MB).",
    "content": {
        media_type: {
            "schema": {"type": "string", "format": "binary"},
            "examples": {"file": {"summary": "The file itself", "value": "(the file's bytes)"}},
        }
        for media_type in _IMAGE_TYPES
    },
}
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


@router.get("/products", response_model=ProductPage, responses=errors(422, 503) | _CACHEABLE)
async def list_products(
    res: ResourcesDep,
    q: Annotated[
        SearchText | None, Query(description="Only products whose name or SKU contains this.")
    ] = None,
    limit: PageLimit = 20,
    offset: PageOffset = 0,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """List products by name, a page at a time. The stock shown may be a few seconds old
    (`SHOP_CACHE_STOCK_STALENESS_S`); prices and new products show at once here, and through
    a CDN or a browser's cache within `SHOP_CATALOG_MAX_AGE_S` (the answer's max-age)."""
    body = await service.page_json(
        res.db, res.cache, text=q, limit=limit, offset=offset, assets=res.assets
    )
    return public_response(
        body, max_age_s=res.settings.catalog_max_age_s, if_none_match=if_none_match
    )


@router.get(
    "/products/{product_id}",
    response_model=ProductRead,
    responses=errors(404, 422, 503) | _CACHEABLE,
)
async def get_product(
    res: ResourcesDep, product_id: ProductId, if_none_match: IfNoneMatch = None
) -> Response:
    """One product, with the units in stock. The stock shown may be a few seconds old
    (`SHOP_CACHE_STOCK_STALENESS_S`), plus `SHOP_CATALOG_MAX_AGE_S` through a CDN; placing an
    order always checks the real stock."""
    body = await service.product_json(res.db, res.cache, product_id=product_id, assets=res.assets)
    return public_response(
        body, max_age_s=res.settings.catalog_max_age_s, if_none_match=if_none_match
    )


@router.get("/admin/stock", response_model=StockPage, responses=errors(401, 403, 422, 503))
async def stock(
    db: DatabaseDep, _admin: AdminDep, limit: PageLimit = 100, offset: PageOffset = 0
) -> StockPage:
    """Every product's units in stock, by product id (admins): read from the write primary,
    never from a cache or a replica, so it is exact at the moment it is read, where the
    public catalog's stock may be a few seconds old."""
    return await service.stock_page(db, limit=limit, offset=offset)


@router.post(
    "/admin/products",
    response_model=ProductRead,
    status_code=status.HTTP_201_CREATED,
    responses=errors(401, 403, 413, 422, 503) | conflict("A product with this SKU exists."),
)
async def create_product(
    db: DatabaseDep, cache: CacheDep, assets: AssetsDep, _admin: AdminDep, body: NewProduct
) -> ProductRead:
    """Create a product (admins). 409 when the SKU exists."""
    return await service.create_product(db, data=body, cache=cache, assets=assets)


@router.put(
    "/admin/products/{product_id}/price",
    response_model=ProductRead,
    responses=errors(401, 403, 404, 413, 422, 503),
)
async def change_price(
    db: DatabaseDep,
    cache: CacheDep,
    assets: AssetsDep,
    _admin: AdminDep,
    product_id: ProductId,
    body: NewPrice,
) -> ProductRead:
    """Change a product's price (admins). Orders already placed keep their price."""
    return await service.change_price(
        db, product_id=product_id, price_cents=body.price_cents, cache=cache, assets=assets
    )


@router.post(
    "/admin/products/{product_id}/restock",
    response_model=ProductRead,
    responses=errors(401, 403, 404, 413, 422, 503)
    | conflict("The stock would exceed its maximum (`max_stock`)."),
)
async def restock(
    db: DatabaseDep,
    cache: CacheDep,
    assets: AssetsDep,
    _admin: AdminDep,
    product_id: ProductId,
    body: Units,
) -> ProductRead:
    """Add units to a product's stock (admins). 409 when it would exceed the maximum."""
    return await service.restock(
        db, product_id=product_id, quantity=body.quantity, cache=cache, assets=assets
    )


@router.put(
    "/admin/products/{product_id}/image",
    response_model=ProductRead,
    responses=errors(401, 403, 404, 413, 422, 503),
    openapi_extra={"requestBody": _IMAGE_BODY},
)
async def upload_image(
    request: Request, res: ResourcesDep, _admin: AdminDep, product_id: ProductId
) -> ProductRead:
    """Upload a product's image (admins): the raw bytes of a PNG, JPEG or WebP file as the
    body, e.g. `curl -T lamp.png -H 'Content-Type: image/png' ...`. It is stored under a name
    made from its content (S3 at stage 5, else the app's own folder) and every product answer
    carries its URL (`image_url`) from the next read on. 413 past SHOP_IMAGE_MAX_BYTES, 422
    for anything that is not one of these images."""
    try:
        data = await request.body()
    except ClientDisconnect:
        # The client left, or BodyLimit has answered 413 already: nothing is stored, and
        # this answer goes nowhere.
        raise InvalidRequest("body", "the upload did not arrive whole") from None
    return await service.set_image(
        res.db,
        product_id=product_id,
        data=data,
        max_bytes=res.settings.image_max_bytes,
        assets=res.assets,
        cache=res.cache,
    )
