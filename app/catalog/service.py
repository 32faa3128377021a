"""The catalog's public API: products, prices and stock. Each function owns its transaction,
except `reserve_stock` / `release_stock`, which join the caller's (an order's) transaction.

Cache (stage 5): `product_json` and `page_json` answer from Redis when the process has a cache.
Every cached answer sits under one catalog generation (see app/adapters/cache.py): each write here
starts a new one after its commit, so a new price, a restock or a new product is visible to the
next read. Orders take stock through `reserve_stock` inside their own transaction, which this
module cannot see commit; they do not invalidate (an order is the hot write path, and a
generation per order would leave nothing cached), so the stock a cached answer shows is at most
`cache.ttl_s` (SHOP_CACHE_STOCK_STALENESS_S) old. The cache never decides a reservation: the
conditional UPDATE in `reserve_stock` does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Integer, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.adapters.assets import Assets
from app.adapters.cache import Cache
from app.adapters.db import Database, Tx, run
from app.adapters.replicas import position_now, reading_after
from app.catalog.domain import (
    MAX_STOCK,
    OutOfStock,
    ReservedItem,
    StockLimit,
    checked_image,
    normalise_sku,
    reservation_order,
)
from app.catalog.models import Product, StockLevel
from app.catalog.schemas import ProductCreate, ProductPage, ProductRead, StockPage, StockRead
from app.kernel.errors import Conflict, NotFound
from app.kernel.models import utcnow

_READ = select(
    Product.id,
    Product.sku,
    Product.name,
    Product.description,
    Product.price_cents,
    Product.image_key,
    StockLevel.quantity.label("stock"),
    Product.updated_at,
).join(StockLevel, StockLevel.product_id == Product.id)
# The hot reads: constants with named parameters, so that Database.fetch_* prepares them once.
_BY_ID = _READ.where(Product.id == bindparam("product_id"))
_PAGE = (
    _READ.order_by(Product.name, Product.id)
    .limit(bindparam("limit", type_=Integer))
    .offset(bindparam("offset", type_=Integer))
)
_STOCK_PAGE = (
    select(StockLevel.product_id, StockLevel.quantity)
    .order_by(StockLevel.product_id)
    .limit(bindparam("limit", type_=Integer))
    .offset(bindparam("offset", type_=Integer))
)
_PAGE_MATCHING = _PAGE.where(
    Product.name.ilike(bindparam("pattern"), escape="\\")
    | Product.sku.ilike(bindparam("pattern"), escape="\\")
)


def _contains_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with its wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _product(row: Any, assets: Assets | None) -> ProductRead:
    product = ProductRead.model_validate(row)
    if product.image_key is not None:
        product.image_url = (
            assets.url(product.image_key) if assets is not None else f"/static/{product.image_key}"
        )
    return product


async def _fetch(conn: AsyncConnection, product_id: int, assets: Assets | None) -> ProductRead:
    row = (await conn.execute(_BY_ID, {"product_id": product_id})).one_or_none()
    if row is None:
        raise NotFound("product", product_id)
    return _product(row._mapping, assets)


# Every cached catalog answer lives under this generation: one INCR after a write kills them all.
_GENERATION = "catalog:generation"


async def catalog_changed(cache: Cache | None) -> None:
    """Start a new catalog generation: every cached product and page is refilled on next read.

    The writes below call it after their commit; call it after changing catalog tables any
    other way (a bulk load, a test that empties them). When Redis is unavailable it is sent
    when Redis answers again, and the old entries die by their time to live at the latest.

    With replicas (stage 4), the request's position (just past this write's commit) goes with
    the generation: every refill anywhere in the fleet then reads from a server that has the
    write, so a lagging replica cannot put the old price back into the cache.
    """
    if cache is not None:
        await cache.new_generation(_GENERATION, not_before=position_now())


async def product_json(
    db: Database, cache: Cache | None, *, product_id: int, assets: Assets | None = None
) -> bytes:
    """One product with its stock, as the JSON of ProductRead; raises NotFound.

    From the cache when there is one (a hit: no serialisation, and one Redis round trip or,
    from the in-process layer, none);
    concurrent misses in a process cost one database query.
    """

    async def fill(not_before: int) -> bytes:
        with reading_after(not_before):
            found = await get_product(db, product_id=product_id, assets=assets)
        return found.model_dump_json().encode()

    if cache is None:
        return await fill(0)
    return await cache.read_through(
        generation=_GENERATION, key=lambda gen: ("catalog", gen, "product", product_id), fill=fill
    )


async def page_json(
    db: Database,
    cache: Cache | None,
    *,
    text: str | None,
    limit: int,
    offset: int,
    assets: Assets | None = None,
) -> bytes:
    """A page of products, as the JSON of ProductPage; cached like `product_json`."""

    async def fill(not_before: int) -> bytes:
        with reading_after(not_before):
            found = await list_products(db, text=text, limit=limit, offset=offset, assets=assets)
        return found.model_dump_json().encode()

    if cache is None:
        return await fill(0)
    # The search text is hashed: keys stay short and free of whatever a visitor typed.
    searched = hashlib.sha256(text.encode()).hexdigest()[:32] if text else "-"
    return await cache.read_through(
        generation=_GENERATION,
        key=lambda gen: ("catalog", gen, "page", limit, offset, searched),
        fill=fill,
    )


async def get_product(
    db: Database, *, product_id: int, assets: Assets | None = None
) -> ProductRead:
    """One product with its stock; raises NotFound. Image URLs are `assets`' (else paths
    on the app)."""
    row = await db.fetch_one(_BY_ID, product_id=product_id)
    if row is None:
        raise NotFound("product", product_id)
    return _product(row, assets)


async def list_products(
    db: Database,
    *,
    text: str | None,
    limit: int,
    offset: int,
    assets: Assets | None = None,
) -> ProductPage:
    """Products by name, optionally only those whose name or SKU contains `text`."""
    if text:
        rows = await db.fetch_all(
            _PAGE_MATCHING, pattern=_contains_pattern(text), limit=limit + 1, offset=offset
        )
    else:
        rows = await db.fetch_all(_PAGE, limit=limit + 1, offset=offset)
    items = [_product(r, assets) for r in rows[:limit]]
    next_offset = offset + limit if len(rows) > limit else None
    return ProductPage(items=items, limit=limit, offset=offset, next_offset=next_offset)


async def stock_page(db: Database, *, limit: int, offset: int) -> StockPage:
    """Every product's stock by product id, read from the primary and never cached: the
    exact figures an inventory count (or a check of the shop's invariants) needs."""
    rows = await db.fetch_all(_STOCK_PAGE, primary=True, limit=limit + 1, offset=offset)
    return StockPage(
        items=[StockRead.model_validate(r) for r in rows[:limit]],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if len(rows) > limit else None,
    )


async def create_product(
    db: Database, *, data: ProductCreate, cache: Cache | None = None, assets: Assets | None = None
) -> ProductRead:
    """Create a product and its stock level; raises Conflict when the SKU exists.

    Pass the process's cache: pages that should now list the product are then refilled."""
    sku = normalise_sku(data.sku)
    try:
        async with db.write() as conn:
            now = utcnow()
            product_id = (
                await conn.execute(
                    insert(Product)
                    .values(
                        sku=sku,
                        name=data.name,
                        description=data.description,
                        price_cents=data.price_cents,
                        image_key=data.image_key,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(Product.id)
                )
            ).scalar_one()
            await conn.execute(
                insert(StockLevel).values(product_id=product_id, quantity=data.initial_stock)
            )
            created = await _fetch(conn, product_id, assets)
    except IntegrityError as exc:
        raise Conflict(f"a product with SKU {sku!r} exists", sku=sku) from exc
    await catalog_changed(cache)
    return created


async def change_price(
    db: Database,
    *,
    product_id: int,
    price_cents: int,
    cache: Cache | None = None,
    assets: Assets | None = None,
) -> ProductRead:
    """Set a new price; orders already placed keep the price they were placed at.

    With the process's cache, the next read anywhere in the fleet shows the new price."""
    async with db.write() as conn:
        result = await conn.execute(
            update(Product)
            .where(Product.id == product_id)
            .values(price_cents=price_cents, updated_at=utcnow())
        )
        if result.rowcount == 0:
            raise NotFound("product", product_id)
        changed = await _fetch(conn, product_id, assets)
    await catalog_changed(cache)
    return changed


async def restock(
    db: Database,
    *,
    product_id: int,
    quantity: int,
    cache: Cache | None = None,
    assets: Assets | None = None,
) -> ProductRead:
    """Add units to the stock; raises NotFound, or StockLimit past the maximum.

    With the process's cache, the next read anywhere in the fleet shows the new stock."""
    async with db.write() as conn:
        result = await conn.execute(
            update(StockLevel)
            .where(
                StockLevel.product_id == product_id,
                StockLevel.quantity <= MAX_STOCK - quantity,
            )
            .values(quantity=StockLevel.quantity + quantity)
        )
        if result.rowcount == 0:
            current = await _fetch(conn, product_id, assets)  # raises NotFound
            raise StockLimit(product_id=product_id, current=current.stock, adding=quantity)
        restocked = await _fetch(conn, product_id, assets)
    await catalog_changed(cache)
    return restocked


async def set_image(
    db: Database,
    *,
    product_id: int,
    data: bytes,
    max_bytes: int,
    assets: Assets,
    cache: Cache | None = None,
) -> ProductRead:
    """Store `data` as the product's image and point the product at it.

    Raises ImageTooLarge (413) past `max_bytes`, InvalidRequest (422) unless it is a PNG, JPEG
    or WebP image, NotFound. The image is stored (under its content hash) before the product
    names it, so a product never points at a missing file; the next read anywhere in the fleet
    has the new URL (the catalog generation moves on, as for any catalog write).
    """
    name, kind = checked_image(data, max_bytes=max_bytes)
    await get_product(db, product_id=product_id)  # 404 before storing anything
    await assets.put(name, data, media_type=kind.media_type)
    async with db.write() as conn:
        result = await conn.execute(
            update(Product)
            .where(Product.id == product_id)
            .values(image_key=name, updated_at=utcnow())
        )
        if result.rowcount == 0:
            raise NotFound("product", product_id)
        changed = await _fetch(conn, product_id, assets)
    await catalog_changed(cache)
    return changed


# On PostgreSQL one statement per line: the conditional UPDATE joined to the product, returning
# its price. SQLite cannot return columns of a joined table, so there it is UPDATE then SELECT.
_TAKE = (
    update(StockLevel)
    .where(
        StockLevel.product_id == bindparam("pid"),
        StockLevel.quantity >= bindparam("qty"),
        Product.id == StockLevel.product_id,
    )
    .values(quantity=StockLevel.quantity - bindparam("qty"))
    .returning(Product.sku, Product.name, Product.price_cents)
)
_TAKE_WITHOUT_PRICE = (
    update(StockLevel)
    .where(StockLevel.product_id == bindparam("pid"), StockLevel.quantity >= bindparam("qty"))
    .values(quantity=StockLevel.quantity - bindparam("qty"))
)
_PRICE = select(Product.sku, Product.name, Product.price_cents).where(
    Product.id == bindparam("pid")
)
_AVAILABLE = select(StockLevel.quantity).where(StockLevel.product_id == bindparam("pid"))


Reserved = ReservedItem
"""A line taken out of stock (what `reserve_stock` returns), for the modules that use it."""


async def reserve_stock(conn: Tx, *, lines: Mapping[int, int]) -> list[ReservedItem]:
    """Take `lines` ({product_id: quantity}) out of stock inside the caller's transaction.

    Each line is one conditional UPDATE (`quantity >= wanted`), so stock can never go below
    zero whatever the concurrency; it also reads the price the line is charged at. Raises
    NotFound or OutOfStock; the caller's rollback then undoes the lines already taken.
    Returns the lines in product order. Cached answers are not invalidated: the stock they
    show ages by at most the cache's time to live (see the module docstring).
    """
    reserved: list[ReservedItem] = []
    for product_id, quantity in reservation_order(dict(lines)):
        params = {"pid": product_id, "qty": quantity}
        if conn.dialect.name == "postgresql":
            taken = await run(conn, _TAKE, params)
        else:  # the embedded database: no UPDATE ... FROM ... RETURNING
            assert isinstance(conn, AsyncConnection)
            moved = await conn.execute(_TAKE_WITHOUT_PRICE, params)
            taken = await run(conn, _PRICE, params) if moved.rowcount else []
        if not taken:
            available = await run(conn, _AVAILABLE, params)
            if not available:
                raise NotFound("product", product_id)
            raise OutOfStock(
                product_id=product_id, requested=quantity, available=available[0]["quantity"]
            )
        reserved.append(
            ReservedItem(
                product_id=product_id,
                sku=taken[0]["sku"],
                name=taken[0]["name"],
                unit_price_cents=taken[0]["price_cents"],
                quantity=quantity,
            )
        )
    return reserved


async def release_stock(conn: AsyncConnection, *, lines: Mapping[int, int]) -> None:
    """Put units back (a cancelled order), inside the caller's transaction."""
    for product_id, quantity in reservation_order(dict(lines)):
        await conn.execute(
            update(StockLevel)
            .where(StockLevel.product_id == product_id)
            .values(quantity=StockLevel.quantity + quantity)
        )


async def bulk_create_products(
    db: Database, *, rows: Iterable[dict[str, Any]], cache: Cache | None = None
) -> int:
    """Insert many products with their stock in one transaction (seeding); returns the count.

    Each row holds the ProductCreate fields; SKUs must be new. Without the cache (the `shop
    seed` command has none) cached pages show the new products within their time to live.
    """
    rows = list(rows)
    now = utcnow()
    created = 0
    async with db.write() as conn:
        for first in range(0, len(rows), 1000):
            chunk = rows[first : first + 1000]
            stock_by_sku = {normalise_sku(r["sku"]): r.get("initial_stock", 0) for r in chunk}
            products = [
                {
                    "sku": normalise_sku(r["sku"]),
                    "name": r["name"],
                    "description": r.get("description", ""),
                    "price_cents": r["price_cents"],
                    "image_key": r.get("image_key"),
                    "created_at": now,
                    "updated_at": now,
                }
                for r in chunk
            ]
            ids = await conn.execute(insert(Product).returning(Product.id, Product.sku), products)
            await conn.execute(
                insert(StockLevel),
                [{"product_id": pid, "quantity": stock_by_sku[sku]} for pid, sku in ids],
            )
            created += len(products)
    await catalog_changed(cache)
    return created
