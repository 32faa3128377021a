"""The order's limit: the SQL a one-line POST /orders sends, from a bare route over raw psycopg.

`make bench` serves this app exactly like the bare route and the shop, against the shop's own
database, and drives it with the same wrk script as POST /orders. Each request sends, in one
transaction in psycopg's pipeline mode and as prepared statements, the statements the shop's
order sends for one line (captured from the driver, see docs/performance.md): take the stock
(waiting for its price), insert the order (waiting for its id), then the line, the three ledger
entries, the shipment and its first event (or, `/limit/orders/queued`, the `order.placed`
outbox row instead of ledger and shipment) with the COMMIT. Three round trips, as the shop's.
Nothing else: no authentication, no validation beyond reading the product id, no confirmation
e-mail, which is what makes it the limit of the shop's order on this machine and not a rival.

The customer is the one named by SHOP_LIMIT_CUSTOMER (an e-mail), looked up once at start.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg import AsyncConnection
from psycopg.types.json import Json
from psycopg_pool import AsyncConnectionPool

TAX_RATE_BP = 2000
"""The shop's default sales tax (Settings.tax_rate_bp)."""

TAKE = (
    "UPDATE stock_level SET quantity=(stock_level.quantity - %(qty)s::INTEGER) FROM product "
    "WHERE stock_level.product_id = %(pid)s::INTEGER AND stock_level.quantity >= "
    "%(qty)s::INTEGER AND product.id = stock_level.product_id "
    "RETURNING product.sku, product.name, product.price_cents"
)
INSERT_ORDER = (
    "INSERT INTO customer_order (customer_id, status, subtotal_cents, tax_cents, total_cents, "
    "created_at, fulfilled_at) VALUES (%(customer_id)s::INTEGER, %(status)s::VARCHAR, "
    "%(subtotal_cents)s::BIGINT, %(tax_cents)s::BIGINT, %(total_cents)s::BIGINT, "
    "%(created_at)s::TIMESTAMP WITH TIME ZONE, %(fulfilled_at)s::TIMESTAMP WITH TIME ZONE) "
    "RETURNING customer_order.id"
)
INSERT_LINE = (
    "INSERT INTO order_line (order_id, product_id, sku, name, quantity, unit_price_cents, "
    "line_total_cents) VALUES (%(order_id)s::INTEGER, %(product_id)s::INTEGER, "
    "%(sku)s::VARCHAR, %(name)s::VARCHAR, %(quantity)s::INTEGER, %(unit_price_cents)s::INTEGER, "
    "%(line_total_cents)s::BIGINT)"
)
INSERT_ENTRY = (
    "INSERT INTO ledger_entry (order_id, customer_id, event, account, debit_cents, "
    "credit_cents, created_at) VALUES (%(order_id)s::INTEGER, %(customer_id)s::INTEGER, "
    "%(event)s::VARCHAR, %(account)s::VARCHAR, %(debit_cents)s::BIGINT, "
    "%(credit_cents)s::BIGINT, %(created_at)s::TIMESTAMP WITH TIME ZONE)"
)
OPEN_SHIPMENT = (
    "INSERT INTO shipment (order_id, customer_id, status, created_at, updated_at) VALUES "
    "(%(order_id)s::INTEGER, %(customer_id)s::INTEGER, %(status)s::VARCHAR, "
    "%(at)s::TIMESTAMP WITH TIME ZONE, %(at)s::TIMESTAMP WITH TIME ZONE)"
)
OPENING_EVENT = (
    "INSERT INTO shipment_event (shipment_id, status, at) SELECT shipment.id, "
    "%(status)s::VARCHAR, %(at)s::TIMESTAMP WITH TIME ZONE FROM shipment "
    "WHERE shipment.order_id = %(order_id)s::INTEGER"
)
INSERT_EVENT = (
    "INSERT INTO outbox_event (id, kind, payload, created_at) VALUES (%(id)s::UUID, "
    "%(kind)s::VARCHAR, %(payload)s::JSON, %(created_at)s::TIMESTAMP WITH TIME ZONE)"
)


class Limit:
    """The pool and the customer, opened with the app."""

    pool: AsyncConnectionPool[AsyncConnection[Any]]
    customer_id: int


limit = Limit()


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    url = os.environ["SHOP_DATABASE_URL"].replace("+psycopg", "")
    size = int(os.environ.get("SHOP_DATABASE_POOL_SIZE", "6")) + int(
        os.environ.get("SHOP_DATABASE_MAX_OVERFLOW", "10")
    )
    async with AsyncConnectionPool(
        url,
        min_size=4,
        max_size=size,
        kwargs={"options": "-c statement_timeout=15000 -c lock_timeout=5000"},
        open=False,
    ) as pool:
        async with pool.connection() as conn:
            found = await (
                await conn.execute(
                    "SELECT id FROM customer WHERE email = %s",
                    (os.environ.get("SHOP_LIMIT_CUSTOMER", "customer1@example.com"),),
                )
            ).fetchone()
        assert found is not None, "no such customer"
        limit.pool, limit.customer_id = pool, found[0]
        yield


app = FastAPI(lifespan=lifespan)


async def _place(request: Request, *, queued: bool) -> JSONResponse:
    line = json.loads(await request.body())["lines"][0]
    product_id, quantity = int(line["product_id"]), int(line["quantity"])
    customer_id = limit.customer_id
    async with limit.pool.connection() as conn, conn.pipeline() as pipeline:
        cursor = conn.cursor()
        await cursor.execute(TAKE, {"pid": product_id, "qty": quantity}, prepare=True)
        await pipeline.sync()
        taken = await cursor.fetchone()
        if taken is None:
            return JSONResponse({"detail": "out of stock"}, status_code=409)
        sku, name, price = taken
        subtotal = price * quantity
        tax = (subtotal * TAX_RATE_BP + 5_000) // 10_000
        now = datetime.now(UTC)
        await cursor.execute(
            INSERT_ORDER,
            {
                "customer_id": customer_id,
                "status": "placed",
                "subtotal_cents": subtotal,
                "tax_cents": tax,
                "total_cents": subtotal + tax,
                "created_at": now,
                "fulfilled_at": None if queued else now,
            },
            prepare=True,
        )
        await pipeline.sync()
        row = await cursor.fetchone()
        assert row is not None
        order_id = row[0]
        await cursor.execute(
            INSERT_LINE,
            {
                "order_id": order_id,
                "product_id": product_id,
                "sku": sku,
                "name": name,
                "quantity": quantity,
                "unit_price_cents": price,
                "line_total_cents": subtotal,
            },
            prepare=True,
        )
        if queued:
            payload = {
                "order_id": order_id,
                "customer_id": customer_id,
                "subtotal_cents": subtotal,
                "tax_cents": tax,
            }
            await cursor.execute(
                INSERT_EVENT,
                {
                    "id": uuid.uuid4(),
                    "kind": "order.placed",
                    "payload": Json(payload),
                    "created_at": now,
                },
                prepare=True,
            )
        else:
            entries = [("accounts_receivable", subtotal + tax, 0), ("sales_revenue", 0, subtotal)]
            entries += [("sales_tax_payable", 0, tax)] if tax else []
            await cursor.executemany(
                INSERT_ENTRY,
                [
                    {
                        "order_id": order_id,
                        "customer_id": customer_id,
                        "event": "order_placed",
                        "account": account,
                        "debit_cents": debit,
                        "credit_cents": credit,
                        "created_at": now,
                    }
                    for account, debit, credit in entries
                ],
            )
            shipment = {"order_id": order_id, "customer_id": customer_id, "at": now}
            await cursor.execute(OPEN_SHIPMENT, shipment | {"status": "pending"}, prepare=True)
            await cursor.execute(OPENING_EVENT, shipment | {"status": "pending"}, prepare=True)
        await conn.commit()
    return JSONResponse({"id": order_id, "status": "placed"}, status_code=201)


@app.post("/limit/orders")
async def place(request: Request) -> JSONResponse:
    """One line's order: stock, order, line, ledger and shipment, committed."""
    return await _place(request, queued=False)


@app.post("/limit/orders/queued")
async def place_queued(request: Request) -> JSONResponse:
    """Stage 7's: stock, order, line and the outbox row, committed."""
    return await _place(request, queued=True)
