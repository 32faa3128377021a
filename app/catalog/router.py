"""Catalog HTTP routes: browsing for everyone, product management for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from app.catalog import service
from app.catalog.schemas import PriceChange, ProductCreate, ProductPage, ProductRead, Restock
from app.core.deps import AdminDep, DatabaseDep, PageDep
from app.core.http import model_response
from app.core.schemas import MAX_INT32, SearchText

router = APIRouter(tags=["catalog"])

ProductId = Annotated[int, Path(ge=1, le=MAX_INT32, description="Product id.")]


@router.get("/products", response_model=ProductPage)
async def list_products(
    db: DatabaseDep,
    page: PageDep,
    q: Annotated[
        SearchText | None, Query(description="Only products whose name or SKU contains this.")
    ] = None,
) -> Response:
    """List products by name, a page at a time."""
    found = await service.list_products(db, text=q, limit=page.limit, offset=page.offset)
    return model_response(found)


@router.get("/products/{product_id}", response_model=ProductRead)
async def get_product(db: DatabaseDep, product_id: ProductId) -> Response:
    """One product, with the units in stock."""
    return model_response(await service.get_product(db, product_id=product_id))


@router.post("/admin/products", response_model=ProductRead, status_code=status.HTTP_201_CREATED)
async def create_product(db: DatabaseDep, _admin: AdminDep, body: ProductCreate) -> ProductRead:
    """Create a product (admins). 409 when the SKU exists."""
    return await service.create_product(db, data=body)


@router.put("/admin/products/{product_id}/price", response_model=ProductRead)
async def change_price(
    db: DatabaseDep, _admin: AdminDep, product_id: ProductId, body: PriceChange
) -> ProductRead:
    """Change a product's price (admins). Orders already placed keep their price."""
    return await service.change_price(db, product_id=product_id, price_cents=body.price_cents)


@router.post("/admin/products/{product_id}/restock", response_model=ProductRead)
async def restock(
    db: DatabaseDep, _admin: AdminDep, product_id: ProductId, body: Restock
) -> ProductRead:
    """Add units to a product's stock (admins)."""
    return await service.restock(db, product_id=product_id, quantity=body.quantity)
