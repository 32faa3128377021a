"""Order rules: what a valid order is, how it is priced, when it may be cancelled, and how
an idempotent request is recognised."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from app.kernel.errors import Conflict

MAX_LINES = 50


class OrderStatus(StrEnum):
    PLACED = "placed"
    CANCELLED = "cancelled"


class Fulfilment(StrEnum):
    """Whether an order's follow-up work (ledger posting, shipment) is done."""

    PENDING = "pending"
    """Recorded as an event; a worker will do it (stage 7)."""
    DONE = "done"
    SKIPPED = "skipped"
    """Cancelled before a worker reached it: there was nothing to post and nothing to ship."""


def fulfilment(*, status: OrderStatus, fulfilled: bool) -> Fulfilment:
    if fulfilled:
        return Fulfilment.DONE
    return Fulfilment.SKIPPED if status is OrderStatus.CANCELLED else Fulfilment.PENDING


@dataclass(frozen=True, slots=True)
class Totals:
    subtotal_cents: int
    tax_cents: int

    @property
    def total_cents(self) -> int:
        return self.subtotal_cents + self.tax_cents


def lines_problem(lines: Sequence[tuple[int, int]]) -> str | None:
    """Why a list of (product_id, quantity) is not an order, or None."""
    if not lines:
        return "an order needs at least one line"
    if len(lines) > MAX_LINES:
        return f"an order has at most {MAX_LINES} lines"
    seen: set[int] = set()
    for product_id, _ in lines:
        if product_id in seen:
            return f"product {product_id} appears on more than one line; merge the quantities"
        seen.add(product_id)
    return None


def price(line_totals: Sequence[int], *, tax_rate_bp: int) -> Totals:
    """Subtotal and tax; tax is rounded half up to the cent, once, on the subtotal."""
    subtotal = sum(line_totals)
    tax = (subtotal * tax_rate_bp + 5_000) // 10_000
    return Totals(subtotal_cents=subtotal, tax_cents=tax)


def check_cancellable(status: OrderStatus) -> None:
    if status is OrderStatus.CANCELLED:
        raise Conflict("the order is already cancelled", status=status.value, allowed=[])


def fingerprint(lines: Sequence[tuple[int, int]]) -> str:
    """A digest of what was asked for, to tell a retry from a different request under the
    same Idempotency-Key. Line order does not matter."""
    canonical = json.dumps(sorted(lines), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
