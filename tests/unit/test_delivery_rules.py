"""The shipment state machine, with no database: every edge, and every non-edge."""

from __future__ import annotations

import itertools

import pytest

from app.delivery.domain import TRANSITIONS, ShipmentStatus, check_transition
from app.kernel.errors import IllegalTransition

S = ShipmentStatus
LEGAL = {
    (S.PENDING, S.PACKED),
    (S.PENDING, S.CANCELLED),
    (S.PACKED, S.SHIPPED),
    (S.PACKED, S.CANCELLED),
    (S.SHIPPED, S.DELIVERED),
}
ILLEGAL = sorted(set(itertools.product(S, S)) - LEGAL)


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL))
def test_a_legal_move_is_accepted(current: S, target: S) -> None:
    check_transition(current, target)


@pytest.mark.parametrize(("current", "target"), ILLEGAL)
def test_an_illegal_move_is_refused_naming_the_allowed_ones(current: S, target: S) -> None:
    with pytest.raises(IllegalTransition) as refused:
        check_transition(current, target)
    assert refused.value.extra["allowed"] == [s.value for s in TRANSITIONS[current]]
    assert refused.value.status_code == 409


def test_delivered_and_cancelled_are_final() -> None:
    assert TRANSITIONS[S.DELIVERED] == ()
    assert TRANSITIONS[S.CANCELLED] == ()


def test_a_shipment_can_no_longer_be_cancelled_once_shipped() -> None:
    with pytest.raises(IllegalTransition):
        check_transition(S.SHIPPED, S.CANCELLED)
