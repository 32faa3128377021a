"""Double-entry rules, with no database."""

from __future__ import annotations

import pytest

from app.accounting.domain import (
    Account,
    Posting,
    Unbalanced,
    check_balanced,
    order_placed,
    reversal,
)


def test_an_order_debits_the_receivable_and_credits_revenue_and_tax() -> None:
    postings = order_placed(subtotal_cents=1000, tax_cents=200)
    assert Posting(Account.RECEIVABLE, 1200, 0) in postings
    assert Posting(Account.REVENUE, 0, 1000) in postings
    assert Posting(Account.TAX_PAYABLE, 0, 200) in postings


def test_an_untaxed_order_posts_no_tax_line() -> None:
    accounts = [p.account for p in order_placed(subtotal_cents=500, tax_cents=0)]
    assert Account.TAX_PAYABLE not in accounts


def test_a_free_order_posts_nothing() -> None:
    assert order_placed(subtotal_cents=0, tax_cents=0) == []


def test_a_reversal_swaps_sides_and_nets_every_account_to_zero() -> None:
    placed = order_placed(subtotal_cents=1234, tax_cents=247)
    both = placed + reversal(placed)
    for account in Account:
        debit = sum(p.debit_cents for p in both if p.account is account)
        credit = sum(p.credit_cents for p in both if p.account is account)
        assert debit == credit


def test_unbalanced_postings_are_refused() -> None:
    with pytest.raises(Unbalanced):
        check_balanced([Posting(Account.RECEIVABLE, 100, 0), Posting(Account.REVENUE, 0, 99)])


@pytest.mark.parametrize(("debit", "credit"), [(0, 0), (5, 5), (-1, 0), (0, -1)])
def test_a_posting_is_one_positive_side(debit: int, credit: int) -> None:
    with pytest.raises(ValueError):
        Posting(Account.REVENUE, debit, credit)
