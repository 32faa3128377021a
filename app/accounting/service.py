"""The accounting module's public API: post an order's entries, reverse them, report."""

from __future__ import annotations

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.accounting.domain import Account, LedgerEvent, Posting, order_placed, reversal
from app.accounting.models import LedgerEntry
from app.accounting.schemas import AccountBalance, EntryRead, TrialBalance
from app.adapters.db import Database, Tx, named_values, run_many
from app.kernel.models import utcnow

_INSERT_ENTRY = insert(LedgerEntry).values(
    named_values(
        "order_id",
        "customer_id",
        "event",
        "account",
        "debit_cents",
        "credit_cents",
        "created_at",
    )
)


async def _post(
    conn: Tx,
    *,
    order_id: int,
    customer_id: int,
    event: LedgerEvent,
    postings: list[Posting],
) -> None:
    if not postings:
        return
    now = utcnow()
    await run_many(
        conn,
        _INSERT_ENTRY,
        [
            {
                "order_id": order_id,
                "customer_id": customer_id,
                "event": event.value,
                "account": p.account.value,
                "debit_cents": p.debit_cents,
                "credit_cents": p.credit_cents,
                "created_at": now,
            }
            for p in postings
        ],
    )


async def post_order_placed(
    conn: Tx, *, order_id: int, customer_id: int, subtotal_cents: int, tax_cents: int
) -> None:
    """Post a new order's balanced entries inside the caller's transaction."""
    await _post(
        conn,
        order_id=order_id,
        customer_id=customer_id,
        event=LedgerEvent.ORDER_PLACED,
        postings=order_placed(subtotal_cents=subtotal_cents, tax_cents=tax_cents),
    )


async def post_order_cancelled(conn: AsyncConnection, *, order_id: int, customer_id: int) -> None:
    """Post the reversal of an order's entries inside the caller's transaction."""
    rows = await conn.execute(
        select(LedgerEntry.account, LedgerEntry.debit_cents, LedgerEntry.credit_cents).where(
            LedgerEntry.order_id == order_id,
            LedgerEntry.event == LedgerEvent.ORDER_PLACED.value,
        )
    )
    placed = [Posting(Account(r.account), r.debit_cents, r.credit_cents) for r in rows]
    await _post(
        conn,
        order_id=order_id,
        customer_id=customer_id,
        event=LedgerEvent.ORDER_CANCELLED,
        postings=reversal(placed),
    )


async def post_reversal_of(
    conn: AsyncConnection, *, order_id: int, customer_id: int, subtotal_cents: int, tax_cents: int
) -> None:
    """Post the reversal of an order's entries from its amounts, inside the caller's
    transaction (stage 8: the worker may apply the cancellation before the placement, so the
    reversal cannot read the entries it reverses; together they sum to zero either way)."""
    await _post(
        conn,
        order_id=order_id,
        customer_id=customer_id,
        event=LedgerEvent.ORDER_CANCELLED,
        postings=reversal(order_placed(subtotal_cents=subtotal_cents, tax_cents=tax_cents)),
    )


async def entries_of_order(db: Database, *, order_id: int) -> list[EntryRead]:
    """An order's entries, oldest first; empty for an order with nothing to post (a free one)
    or no such order. Who may see them is the caller's decision (the orders module's)."""
    stmt = (
        select(
            LedgerEntry.id,
            LedgerEntry.order_id,
            LedgerEntry.event,
            LedgerEntry.account,
            LedgerEntry.debit_cents,
            LedgerEntry.credit_cents,
            LedgerEntry.created_at,
        )
        .where(LedgerEntry.order_id == order_id)
        .order_by(LedgerEntry.id)
    )
    async with db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    return [EntryRead.model_validate(r._mapping) for r in rows]


async def trial_balance(db: Database) -> TrialBalance:
    """Debits and credits per account; `balanced` is true when the totals agree."""
    stmt = (
        select(
            LedgerEntry.account,
            func.coalesce(func.sum(LedgerEntry.debit_cents), 0).label("debit"),
            func.coalesce(func.sum(LedgerEntry.credit_cents), 0).label("credit"),
        )
        .group_by(LedgerEntry.account)
        .order_by(LedgerEntry.account)
    )
    async with db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    accounts = [
        AccountBalance(
            account=r.account,
            debit_cents=int(r.debit),
            credit_cents=int(r.credit),
            balance_cents=int(r.debit) - int(r.credit),
        )
        for r in rows
    ]
    debit = sum(a.debit_cents for a in accounts)
    credit = sum(a.credit_cents for a in accounts)
    return TrialBalance(
        accounts=accounts,
        total_debit_cents=debit,
        total_credit_cents=credit,
        balanced=debit == credit,
    )
