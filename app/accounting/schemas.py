"""Accounting response models."""

from __future__ import annotations

from datetime import datetime

from app.kernel.schemas import ReadSchema


class EntryRead(ReadSchema):
    id: int
    order_id: int
    event: str
    account: str
    debit_cents: int
    credit_cents: int
    created_at: datetime


class AccountBalance(ReadSchema):
    account: str
    debit_cents: int
    credit_cents: int
    balance_cents: int


class TrialBalance(ReadSchema):
    accounts: list[AccountBalance]
    total_debit_cents: int
    total_credit_cents: int
    balanced: bool
