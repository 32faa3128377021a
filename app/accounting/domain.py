"""Double-entry rules: which accounts an order touches, and that every posting balances."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Account(StrEnum):
    RECEIVABLE = "accounts_receivable"
    REVENUE = "sales_revenue"
    TAX_PAYABLE = "sales_tax_payable"


class LedgerEvent(StrEnum):
    ORDER_PLACED = "order_placed"
    ORDER_CANCELLED = "order_cancelled"


@dataclass(frozen=True, slots=True)
class Posting:
    account: Account
    debit_cents: int
    credit_cents: int

    def __post_init__(self) -> None:
        if self.debit_cents < 0 or self.credit_cents < 0:
            raise ValueError("amounts are never negative; reverse the side instead")
        if (self.debit_cents == 0) == (self.credit_cents == 0):
            raise ValueError("a posting is a debit or a credit, never both or neither")


class Unbalanced(ValueError):
    pass


def check_balanced(postings: Sequence[Posting]) -> None:
    """Raise Unbalanced unless debits equal credits."""
    debits = sum(p.debit_cents for p in postings)
    credits = sum(p.credit_cents for p in postings)
    if debits != credits:
        raise Unbalanced(f"debits {debits} != credits {credits}")


def order_placed(*, subtotal_cents: int, tax_cents: int) -> list[Posting]:
    """The customer owes the total; the shop earns the subtotal and owes the tax."""
    if subtotal_cents + tax_cents == 0:
        return []  # a free order moves no money
    postings = [Posting(Account.RECEIVABLE, subtotal_cents + tax_cents, 0)]
    if subtotal_cents:
        postings.append(Posting(Account.REVENUE, 0, subtotal_cents))
    if tax_cents:
        postings.append(Posting(Account.TAX_PAYABLE, 0, tax_cents))
    check_balanced(postings)
    return postings


def reversal(postings: Sequence[Posting]) -> list[Posting]:
    """The entries that cancel `postings`: the same amounts on the other side."""
    reversed_ = [Posting(p.account, p.credit_cents, p.debit_cents) for p in postings]
    check_balanced(reversed_)
    return reversed_
