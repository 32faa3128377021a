"""The shop's invariants, checked through its API after a load test (or alone).

What the API lets an admin observe, and so what is checked:

- `stock_never_negative`: every product's stock, read page by page from `GET /products`.
- `trial_balance_balances`: `GET /admin/ledger/trial-balance` says balanced, and its debits
  equal its credits.
- `no_order_without_lines`: every order the run placed (each id a `201` answered) reads back
  through `GET /orders/{id}` as an admin with at least one line. That route joins an order with
  its lines, so an order left without lines answers 404 there: that counts as a violation.
- `units_sold_equal_units_ordered`: per product, the stock before the run, plus what the admin
  restocked, minus the units of the run's orders that are not cancelled, equals the stock after
  it. This needs the run's record (stock before, orders, restocks), so it is checked by the
  Locust run, not by this module alone. The API lists no one's orders but one's own, so an order
  whose answer the load generator never received cannot be read; it would show as a mismatch.

The stock is read as the admin reads it (`GET /admin/stock`: from the write primary, never
from the cache of stage 5 or a replica of stage 4, whose stock may be seconds old), before the
run and after it. A request cut off by the end of the run may still be finishing in the shop,
so the orders and the stock after it are re-read until the comparison holds or `settle_s` has
passed.

Alone: `python -m loadtests.invariants --host URL` (admin from `SHOP_LOAD_ADMIN_EMAIL` and
`SHOP_LOAD_ADMIN_PASSWORD`, or `--admin-email`/`--admin-password-stdin`) prints the checks it can
make without a run's record and exits 1 when one is violated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

PAGE = 100
"""Products per page when reading the whole catalog (the API's maximum)."""


class ShopUnreachable(RuntimeError):
    """The shop did not answer, or refused the admin's credentials."""


class AdminClient:
    """Reads the shop through its API, signed in as an admin when credentials are given."""

    def __init__(
        self, host: str, *, email: str | None, password: str | None, timeout_s: float = 15.0
    ) -> None:
        self.host = host.rstrip("/")
        self.timeout_s = timeout_s
        self.http = requests.Session()
        self.is_admin = False
        if email and password:
            answer = self._send(
                "POST", "/auth/token", data={"username": email, "password": password}
            )
            if answer.status_code != 200:
                raise ShopUnreachable(
                    f"the admin {email} could not sign in: {answer.status_code} {answer.text[:200]}"
                )
            self.http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
            self.is_admin = True

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            return self.http.request(method, self.host + path, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise ShopUnreachable(f"{method} {self.host}{path}: {exc}") from exc

    def _json(self, path: str) -> Any:
        answer = self._send("GET", path)
        if answer.status_code != 200:
            raise ShopUnreachable(f"GET {path} answered {answer.status_code}: {answer.text[:200]}")
        return answer.json()

    def stock(self) -> dict[int, int]:
        """Every product's stock. An admin reads `GET /admin/stock`, exact at the moment it is
        read (the write primary's, never a cache's or a replica's); anyone else reads the
        public catalog, whose stock may be a few seconds old, with a fresh query string per
        read so that no HTTP cache (the CDN stand-in) answers with an old page."""
        stock: dict[int, int] = {}
        offset: int | None = 0
        fresh = time.monotonic_ns()
        while offset is not None:
            if self.is_admin:
                page = self._json(f"/admin/stock?limit={PAGE}&offset={offset}")
                stock.update((int(i["product_id"]), int(i["quantity"])) for i in page["items"])
            else:
                page = self._json(f"/products?limit={PAGE}&offset={offset}&fresh={fresh}")
                stock.update((int(p["id"]), int(p["stock"])) for p in page["items"])
            offset = page.get("next_offset")
        return stock

    def order(self, order_id: int) -> dict[str, Any] | None:
        """An order as an admin sees it; None when it answers 404."""
        answer = self._send("GET", f"/orders/{int(order_id)}")
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise ShopUnreachable(f"GET /orders/{order_id} answered {answer.status_code}")
        found: dict[str, Any] = answer.json()
        return found

    def trial_balance(self) -> dict[str, Any]:
        found: dict[str, Any] = self._json("/admin/ledger/trial-balance")
        return found


def outcome_known(status_code: int) -> bool:
    """Whether an order request's answer says what happened: a 201 made the order, a 4xx made
    nothing. No answer (0: the connection broke) or a 5xx (a balancer whose upstream went away
    mid-request, for one) may hide an order the shop committed: such a request is sent again,
    retry-safely, before the run's record is checked."""
    return 0 < status_code < 500


@dataclass
class Tally:
    """What a run did that the checks need: the orders it placed (ids answered 201) and the
    units it restocked per product. Workers send theirs to the master, which merges them."""

    orders: set[int] = field(default_factory=set)
    restocked: Counter[int] = field(default_factory=Counter)

    def merge(self, data: Mapping[str, Any]) -> None:
        self.orders.update(int(order_id) for order_id in data.get("orders", ()))
        for product_id, units in (data.get("restocked") or {}).items():
            self.restocked[int(product_id)] += int(units)

    def as_data(self) -> dict[str, Any]:
        return {
            "orders": sorted(self.orders),
            "restocked": {str(k): v for k, v in self.restocked.items()},
        }


def _result(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": ok, "detail": detail}


def check_stock(stock: Mapping[int, int]) -> dict[str, Any]:
    negative = {pid: units for pid, units in stock.items() if units < 0}
    if negative:
        shown = ", ".join(f"product {pid}: {units}" for pid, units in sorted(negative.items())[:5])
        return _result(False, f"{len(negative)} products below zero ({shown})")
    lowest = min(stock.values(), default=0)
    return _result(True, f"{len(stock)} products, lowest stock {lowest}")


def check_trial_balance(balance: Mapping[str, Any]) -> dict[str, Any]:
    debit, credit = int(balance["total_debit_cents"]), int(balance["total_credit_cents"])
    ok = bool(balance["balanced"]) and debit == credit
    return _result(
        ok,
        f"debits {debit} and credits {credit} cents over "
        f"{len(balance.get('accounts', []))} accounts"
        + ("" if ok else f" (balanced={balance['balanced']})"),
    )


def read_orders(client: AdminClient, order_ids: Iterable[int]) -> dict[int, dict[str, Any] | None]:
    """The run's orders as an admin reads them (None: answered 404), a few at a time."""
    ids = sorted(set(order_ids))
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(ids, pool.map(client.order, ids), strict=True))


def check_order_lines(orders: Mapping[int, dict[str, Any] | None]) -> dict[str, Any]:
    without = [oid for oid, order in orders.items() if order is None or not order.get("lines")]
    if without:
        return _result(
            False,
            f"{len(without)} of {len(orders)} orders read back without lines "
            f"(first: {', '.join(map(str, without[:5]))})",
        )
    lines = sum(len(order["lines"]) for order in orders.values() if order)
    return _result(True, f"{len(orders)} orders placed in the run, {lines} lines")


def units_sold(orders: Mapping[int, dict[str, Any] | None]) -> Counter[int]:
    """Units per product in the orders that stand (not cancelled)."""
    sold: Counter[int] = Counter()
    for order in orders.values():
        if order and order.get("status") != "cancelled":
            for line in order.get("lines", ()):
                sold[int(line["product_id"])] += int(line["quantity"])
    return sold


def check_units(
    before: Mapping[int, int],
    after: Mapping[int, int],
    restocked: Mapping[int, int],
    sold: Mapping[int, int],
) -> dict[str, Any]:
    """Stock before + restocked - sold must be the stock after, for every product."""
    mismatched = {}
    for pid in set(before) | set(after) | set(restocked) | set(sold):
        expected = before.get(pid, 0) + restocked.get(pid, 0) - sold.get(pid, 0)
        if after.get(pid, 0) != expected:
            mismatched[pid] = (expected, after.get(pid, 0))
    ordered, taken = (
        sum(sold.values()),
        sum(
            before.get(pid, 0) + restocked.get(pid, 0) - after.get(pid, 0)
            for pid in set(before) | set(after)
        ),
    )
    if mismatched:
        shown = ", ".join(
            f"product {pid}: expected {exp}, found {got}"
            for pid, (exp, got) in sorted(mismatched.items())[:5]
        )
        return _result(
            False,
            f"units ordered {ordered} but {taken} taken from stock; "
            f"{len(mismatched)} products differ ({shown})",
        )
    return _result(
        True,
        f"units ordered {ordered} = units taken from stock ({sum(restocked.values())} restocked)",
    )


def check_run(
    client: AdminClient,
    *,
    stock_before: Mapping[int, int] | None,
    tally: Tally | None,
    settle_s: float = 12.0,
) -> dict[str, Any]:
    """Every check this client can make; `stock_before` and `tally` (the run's record) enable the
    order checks. Returns {"ok", "checks": {name: {"ok", "detail"}}, "skipped": {name: why}}."""
    checks: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    no_admin = "no admin credentials (SHOP_LOAD_ADMIN_EMAIL, SHOP_LOAD_ADMIN_PASSWORD)"
    no_record = "needs a run's record of stock before, orders and restocks"
    orders: dict[int, dict[str, Any] | None] | None = None
    if not client.is_admin:
        skipped["trial_balance_balances"] = no_admin
        skipped["no_order_without_lines"] = no_admin
    else:
        checks["trial_balance_balances"] = check_trial_balance(client.trial_balance())
        if tally is None:
            skipped["no_order_without_lines"] = "needs the ids of a run's orders"
        else:
            orders = read_orders(client, tally.orders)
            checks["no_order_without_lines"] = check_order_lines(orders)
    stock = client.stock()
    if orders is None or stock_before is None or tally is None:
        skipped["units_sold_equal_units_ordered"] = no_admin if not client.is_admin else no_record
    else:
        sold = units_sold(orders)
        deadline = time.monotonic() + settle_s
        while True:
            units = check_units(stock_before, stock, tally.restocked, sold)
            if units["ok"] or time.monotonic() >= deadline:
                break
            # A request cut off by the end (an order, a cancellation, a restock) may still be
            # finishing in the shop.
            time.sleep(1.0)
            sold = units_sold(read_orders(client, tally.orders))
            stock = client.stock()
        checks["units_sold_equal_units_ordered"] = units
    checks["stock_never_negative"] = check_stock(stock)
    report: dict[str, Any] = {"ok": all(c["ok"] for c in checks.values()), "checks": checks}
    if skipped:
        report["skipped"] = skipped
    return report


def render(report: Mapping[str, Any]) -> str:
    lines = []
    for name, result in report["checks"].items():
        lines.append(f"{'ok  ' if result['ok'] else 'FAIL'} {name}: {result['detail']}")
    for name, why in (report.get("skipped") or {}).items():
        lines.append(f"--   {name}: not checked, {why}")
    lines.append("invariants hold" if report["ok"] else "INVARIANTS VIOLATED")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.invariants", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--host", required=True, help="the shop's base URL, e.g. http://127.0.0.1:8000"
    )
    parser.add_argument("--admin-email", default=os.environ.get("SHOP_LOAD_ADMIN_EMAIL"))
    parser.add_argument(
        "--admin-password-stdin",
        action="store_true",
        help="read the admin's password from standard input (else SHOP_LOAD_ADMIN_PASSWORD)",
    )
    parser.add_argument("--json", dest="json_out", help="also write the checks to this file")
    args = parser.parse_args(argv)
    if not args.host.startswith(("http://", "https://")):
        parser.error(f"--host must be an http:// or https:// URL, not {args.host!r}")
    password = (
        sys.stdin.readline().rstrip("\n")
        if args.admin_password_stdin
        else os.environ.get("SHOP_LOAD_ADMIN_PASSWORD")
    )
    try:
        client = AdminClient(args.host, email=args.admin_email, password=password)
        report = check_run(client, stock_before=None, tally=None)
    except ShopUnreachable as exc:
        print(f"cannot check the invariants: {exc}", file=sys.stderr)
        return 2
    print(render(report))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
