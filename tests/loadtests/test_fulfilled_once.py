"""The faults' fulfilment check against a real PostgreSQL migrated to head: every order placed
and not cancelled ends with its sale in the ledger once and one shipment, and the check says
which orders did not (loadtests/ladder/faults.py)."""

from __future__ import annotations

import psycopg

from loadtests.ladder.faults import check_fulfilled_once


def _database(fresh_database) -> str:  # type: ignore[no-untyped-def]
    from app.migrations import runner

    url: str = fresh_database()
    runner.upgrade(url)
    return url.replace("postgresql+psycopg://", "postgresql://")


def _order(
    conn: psycopg.Connection, status: str, *, fulfilled: bool, sales: int, ships: int
) -> int:
    """An order of 1,100 cents (1,000 and 100 of tax) with its sale posted `sales` times."""
    order_id = conn.execute(
        "INSERT INTO customer_order (customer_id, status, subtotal_cents, tax_cents, total_cents,"
        " created_at, fulfilled_at) VALUES (1, %s, 1000, 100, 1100, now(),"
        " CASE WHEN %s THEN now() END) RETURNING id",
        (status, fulfilled),
    ).fetchone()[0]  # type: ignore[index]
    for _ in range(sales):
        for account, debit, credit in (("receivable", 1100, 0), ("revenue", 0, 1000),
                                       ("tax_payable", 0, 100)):  # fmt: skip
            conn.execute(
                "INSERT INTO ledger_entry (order_id, customer_id, event, account, debit_cents,"
                " credit_cents, created_at) VALUES (%s, 1, 'order_placed', %s, %s, %s, now())",
                (order_id, account, debit, credit),
            )
    for _ in range(ships):
        conn.execute(
            "INSERT INTO shipment (order_id, customer_id, status, created_at, updated_at)"
            " VALUES (%s, 1, 'pending', now(), now())",
            (order_id,),
        )
    return int(order_id)


def test_each_order_is_found_fulfilled_once_or_named(fresh_database) -> None:  # type: ignore[no-untyped-def]
    url = _database(fresh_database)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO customer (id, email, full_name, password_hash, role, created_at)"
            " VALUES (1, 'a@example.com', 'A', 'x', 'customer', now())"
        )
        good = _order(conn, "placed", fulfilled=True, sales=1, ships=1)
        cancelled_early = _order(conn, "cancelled", fulfilled=False, sales=0, ships=0)
        waiting = _order(conn, "placed", fulfilled=False, sales=0, ships=0)
        twice = _order(conn, "placed", fulfilled=True, sales=2, ships=1)
        no_shipment = _order(conn, "placed", fulfilled=True, sales=1, ships=0)

    found = check_fulfilled_once(
        url, [good, cancelled_early, waiting, twice, no_shipment], wait_s=0
    )
    assert found["unfulfilled_ids"] == [waiting]
    assert found["fulfilled_twice_ids"] == [twice]
    # Twice is incomplete too (its debits are not its total once); no shipment is.
    assert found["fulfilled_incompletely_ids"] == sorted([twice, no_shipment])

    clean = check_fulfilled_once(url, [good, cancelled_early], wait_s=0)
    assert (clean["unfulfilled"], clean["fulfilled_twice"], clean["fulfilled_incompletely"]) == (
        0,
        0,
        0,
    )
