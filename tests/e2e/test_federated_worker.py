"""Stage 8's federation with the real commands: `shop migrate` makes three databases, and
`shop worker`, killed between the transactions of one event (its main step committed, its
ledger or its shipment not), then restarted, leaves every order with one posting in the
accounting database, one shipment in the delivery database, nothing of either in the main one,
and books that balance.

The kill lands where the test holds a lock: on the `processed_event` table of the database
whose step must not commit yet, so the worker waits there, inside that step's transaction.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable

import psycopg
import pytest

from tests.e2e.test_worker import (
    ORDERS,
    SHOP,
    _env,
    _free_port,
    _place_orders,
    _queue,
    _scalar,
    _wait,
    _worker,
)
from tests.e2e.test_worker import moto_endpoint as moto_endpoint  # fixture

WAITING = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def databases(fresh_database: Callable[[], str]) -> dict[str, str]:
    """Three empty databases, migrated by the real `shop migrate`."""
    urls = {name: fresh_database() for name in ("main", "accounting", "delivery")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env.update(
        SHOP_ENV="production",
        SHOP_JWT_SECRET="m" * 40,
        SHOP_DATABASE_URL=urls["main"],
        SHOP_ACCOUNTING_DATABASE_URL=urls["accounting"],
        SHOP_DELIVERY_DATABASE_URL=urls["delivery"],
        SHOP_QUEUE_URL="http://127.0.0.1:1/queue/orders",
    )
    ran = subprocess.run([SHOP, "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "databases main, accounting, delivery migrated" in ran.stderr
    for url in urls.values():
        assert _scalar(_libpq(url), "SELECT count(*) FROM alembic_version") == 1
    return urls


@pytest.mark.parametrize("killed_before", ["accounting", "delivery"])
def test_a_federated_worker_killed_between_databases_applies_every_order_once(
    databases: dict[str, str], moto_endpoint: str, killed_before: str
) -> None:
    queue_url, _ = _queue(moto_endpoint)
    federated = {
        "accounting_database_url": databases["accounting"],
        "delivery_database_url": databases["delivery"],
    }
    ids = asyncio.run(
        _place_orders(databases["main"], moto_endpoint, queue_url, twice=False, **federated)
    )
    env = _env(databases["main"], moto_endpoint, queue_url, _free_port())
    env.update(
        SHOP_ACCOUNTING_DATABASE_URL=databases["accounting"],
        SHOP_DELIVERY_DATABASE_URL=databases["delivery"],
    )
    env.pop("SHOP_MAIL_SENDER")  # the mail step is stage 7's, tested there; the log takes it
    main, accounting, delivery = (_libpq(databases[n]) for n in ("main", "accounting", "delivery"))
    held = _libpq(databases[killed_before])
    fulfilled = "SELECT count(*) FROM customer_order WHERE fulfilled_at IS NOT NULL"

    with psycopg.connect(held) as blocker:
        blocker.execute("LOCK TABLE processed_event IN EXCLUSIVE MODE")
        first = _worker(env)
        try:
            _wait(lambda: _scalar(held, WAITING) > 0, 30, f"the worker to wait on {killed_before}")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        blocker.rollback()
    # Killed between databases: the main step of one order committed, the next step not.
    assert _scalar(main, fulfilled) == 1
    assert _scalar(delivery, "SELECT count(*) FROM shipment") == 0
    posted = _scalar(accounting, "SELECT count(*) FROM ledger_entry")
    assert posted == (0 if killed_before == "accounting" else 3)

    second = _worker(env)
    try:
        _wait(
            lambda: _scalar(delivery, "SELECT count(*) FROM shipment") == ORDERS,
            90,
            "every shipment",
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=15) == 0
    finally:
        if second.poll() is None:
            second.kill()
    output = second.stdout.read() if second.stdout else ""

    assert _scalar(main, fulfilled) == ORDERS
    for order_id in ids:
        assert (
            _scalar(accounting, f"SELECT count(*) FROM ledger_entry WHERE order_id = {order_id}")
            == 3
        ), order_id
    assert _scalar(main, "SELECT count(*) FROM ledger_entry") == 0
    assert _scalar(main, "SELECT count(*) FROM shipment") == 0
    assert _scalar(accounting, "SELECT count(*) FROM shipment") == 0
    assert _scalar(accounting, "SELECT sum(debit_cents) - sum(credit_cents) FROM ledger_entry") == 0
    assert "Traceback" not in output
