"""The invariant checks judge what the API showed: units, stock, lines and the books."""

from __future__ import annotations

from collections import Counter

from loadtests import invariants


def order(status: str, *lines: tuple[int, int]) -> dict[str, object]:
    return {"status": status, "lines": [{"product_id": p, "quantity": q} for p, q in lines]}


def test_units_sold_count_only_orders_that_stand() -> None:
    orders = {1: order("placed", (7, 2), (8, 1)), 2: order("cancelled", (7, 5)), 3: None}
    assert invariants.units_sold(orders) == Counter({7: 2, 8: 1})


def test_stock_before_plus_restocks_minus_sales_must_be_the_stock_after() -> None:
    before, restocked, sold = {7: 10, 8: 0}, {8: 500}, {7: 2, 8: 1}
    held = invariants.check_units(before, {7: 8, 8: 499}, restocked, sold)
    assert held == {
        "ok": True,
        "detail": "units ordered 3 = units taken from stock (500 restocked)",
    }
    oversold = invariants.check_units(before, {7: 5, 8: 499}, restocked, sold)
    assert oversold["ok"] is False
    assert "units ordered 3 but 6 taken from stock" in oversold["detail"]
    assert "product 7: expected 8, found 5" in oversold["detail"]


def test_negative_stock_and_orders_without_lines_are_named() -> None:
    assert (
        invariants.check_stock({1: 3, 2: -1})["detail"] == "1 products below zero (product 2: -1)"
    )
    assert invariants.check_stock({1: 3, 2: 0})["ok"] is True
    lines = invariants.check_order_lines({5: order("placed", (1, 1)), 6: None, 7: order("placed")})
    assert (
        lines["ok"] is False
        and "2 of 3 orders read back without lines (first: 6, 7)" in (lines["detail"])
    )


def test_the_trial_balance_must_say_balanced_and_add_up() -> None:
    fine = {"total_debit_cents": 120, "total_credit_cents": 120, "balanced": True, "accounts": []}
    assert invariants.check_trial_balance(fine)["ok"] is True
    lying = fine | {"total_credit_cents": 119}
    assert invariants.check_trial_balance(lying)["ok"] is False


def test_tallies_from_workers_add_up() -> None:
    tally = invariants.Tally()
    tally.merge({"orders": [1, 2], "restocked": {"7": 500}})
    tally.merge({"orders": [3], "restocked": {"7": 500, "9": 500}})
    assert tally.orders == {1, 2, 3} and tally.restocked == Counter({7: 1000, 9: 500})
    assert invariants.Tally().as_data() == {"orders": [], "restocked": {}}


class StaleThenFresh(invariants.AdminClient):
    """A shop whose catalog shows the stock from before the run for its first reads (a cache
    or a lagging replica), then the real stock."""

    def __init__(self, stale_reads: int) -> None:
        self.host, self.is_admin, self.stale_reads = "http://shop.test", True, stale_reads

    def stock(self) -> dict[int, int]:
        self.stale_reads -= 1
        return {7: 10, 8: 4} if self.stale_reads >= 0 else {7: 8, 8: 4}

    def order(self, order_id: int) -> dict[str, object] | None:
        return order("placed", (7, 2))

    def trial_balance(self) -> dict[str, object]:
        return {"total_debit_cents": 5, "total_credit_cents": 5, "balanced": True, "accounts": []}


def test_the_units_check_waits_out_a_stale_catalog_then_holds() -> None:
    tally = invariants.Tally(orders={41})
    report = invariants.check_run(
        StaleThenFresh(stale_reads=2), stock_before={7: 10, 8: 4}, tally=tally, settle_s=5
    )
    assert report["ok"] is True, report
    assert set(report["checks"]) == {
        "trial_balance_balances",
        "no_order_without_lines",
        "units_sold_equal_units_ordered",
        "stock_never_negative",
    }


def test_a_catalog_that_never_catches_up_is_reported_not_waited_for_forever() -> None:
    report = invariants.check_run(
        StaleThenFresh(stale_reads=99),
        stock_before={7: 10, 8: 4},
        tally=invariants.Tally({41}),
        settle_s=0,
    )
    assert report["ok"] is False
    assert (
        "product 7: expected 8, found 10"
        in report["checks"]["units_sold_equal_units_ordered"]["detail"]
    )


def test_an_order_request_without_a_clear_answer_is_sent_again_before_the_check() -> None:
    """A 502 from the balancer, or no answer at all, may hide a committed order: the suite
    keeps such a request pending, to be replayed with its Idempotency-Key or cart version."""
    assert invariants.outcome_known(201) and invariants.outcome_known(409)
    assert invariants.outcome_known(422)  # refused: nothing was made
    assert not invariants.outcome_known(0)  # the connection broke
    assert not invariants.outcome_known(502) and not invariants.outcome_known(504)
