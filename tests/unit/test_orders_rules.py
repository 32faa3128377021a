"""Order rules, with no database."""

from __future__ import annotations

import pytest

from app.kernel.errors import Conflict
from app.orders.domain import (
    MAX_LINES,
    OrderStatus,
    check_cancellable,
    fingerprint,
    lines_problem,
    price,
)


def test_an_order_needs_at_least_one_line() -> None:
    assert lines_problem([]) == "an order needs at least one line"


def test_a_product_may_appear_on_one_line_only() -> None:
    problem = lines_problem([(1, 2), (2, 1), (1, 5)])
    assert problem is not None
    assert "product 1" in problem


def test_an_order_has_a_maximum_number_of_lines() -> None:
    assert lines_problem([(i, 1) for i in range(1, MAX_LINES + 1)]) is None
    assert lines_problem([(i, 1) for i in range(1, MAX_LINES + 2)]) is not None


@pytest.mark.parametrize(
    ("subtotal", "rate_bp", "tax"),
    [
        (1000, 2000, 200),
        (999, 2000, 200),
        (997, 2000, 199),
        (1, 500, 0),
        (10, 500, 1),
        (0, 2000, 0),
    ],
)
def test_tax_is_rounded_half_up_to_the_cent(subtotal: int, rate_bp: int, tax: int) -> None:
    totals = price([subtotal], tax_rate_bp=rate_bp)
    assert totals.tax_cents == tax
    assert totals.total_cents == subtotal + tax


def test_the_subtotal_is_the_sum_of_the_lines() -> None:
    assert price([100, 250, 5], tax_rate_bp=0).subtotal_cents == 355


def test_a_cancelled_order_cannot_be_cancelled_again() -> None:
    check_cancellable(OrderStatus.PLACED)
    with pytest.raises(Conflict):
        check_cancellable(OrderStatus.CANCELLED)


def test_the_fingerprint_ignores_line_order_but_not_quantities() -> None:
    assert fingerprint([(1, 2), (3, 4)]) == fingerprint([(3, 4), (1, 2)])
    assert fingerprint([(1, 2)]) != fingerprint([(1, 3)])
    assert fingerprint([(1, 2)]) != fingerprint([(2, 1)])
