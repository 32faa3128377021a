"""Accounting HTTP routes: the trial balance for admins. An order's entries are served by the
orders module (GET /ledger/orders/{id}), which knows who owns the order."""

from __future__ import annotations

from fastapi import APIRouter

from app.accounting import service
from app.accounting.schemas import TrialBalance
from app.web.deps import AdminDep, DatabasesDep
from app.web.openapi import errors

router = APIRouter(tags=["accounting"])


@router.get(
    "/admin/ledger/trial-balance", response_model=TrialBalance, responses=errors(401, 403, 503)
)
async def trial_balance(dbs: DatabasesDep, _admin: AdminDep) -> TrialBalance:
    """Debits and credits per account across the whole ledger (admins)."""
    return await service.trial_balance(dbs.accounting)
