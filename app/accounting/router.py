"""Accounting HTTP routes: an order's entries for its owner, the trial balance for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.accounting import service
from app.accounting.schemas import EntryRead, TrialBalance
from app.core.deps import AdminDep, DatabaseDep, PrincipalDep
from app.core.openapi import errors
from app.core.schemas import MAX_INT32

router = APIRouter(tags=["accounting"])


@router.get(
    "/ledger/orders/{order_id}",
    response_model=list[EntryRead],
    responses=errors(401, 404, 422, 503),
)
async def list_order_entries(
    db: DatabaseDep,
    principal: PrincipalDep,
    order_id: Annotated[int, Path(ge=1, le=MAX_INT32)],
) -> list[EntryRead]:
    """The ledger entries of one of your orders (admins: any order). 404 for others' orders."""
    return await service.order_entries(db, order_id=order_id, principal=principal)


@router.get(
    "/admin/ledger/trial-balance", response_model=TrialBalance, responses=errors(401, 403, 503)
)
async def trial_balance(db: DatabaseDep, _admin: AdminDep) -> TrialBalance:
    """Debits and credits per account across the whole ledger (admins)."""
    return await service.trial_balance(db)
