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
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

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


# --- shards: the web process killed between the stock's database and the order's ---------------


@pytest.fixture
def sharded(fresh_database: Callable[[], str], moto_endpoint: str) -> dict[str, str]:
    """Five databases migrated by the real `shop migrate`, and the environment of a stage-8
    shop on them (SHOP_ORDER_HOLD_S short, so that the worker settles within the test)."""
    urls = {n: fresh_database() for n in ("main", "accounting", "delivery", "shard1", "shard2")}
    queue_url, _ = _queue(moto_endpoint)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env.update(
        SHOP_ENV="test",
        SHOP_JWT_SECRET="s" * 40,
        SHOP_PASSWORD_TIME_COST="1",
        SHOP_PASSWORD_MEMORY_KIB="1024",
        SHOP_DATABASE_URL=urls["main"],
        SHOP_ACCOUNTING_DATABASE_URL=urls["accounting"],
        SHOP_DELIVERY_DATABASE_URL=urls["delivery"],
        SHOP_ORDER_SHARD_URLS=f"{urls['shard1']},{urls['shard2']}",
        SHOP_ORDER_HOLD_S="2",
        SHOP_QUEUE_URL=queue_url,
        SHOP_AWS_REGION="us-east-1",
        SHOP_AWS_ENDPOINT_URL=moto_endpoint,
        SHOP_WORKER_WAIT_S="1",
        SHOP_WORKER_PURGE_EVERY_S="1",
        SHOP_WORKER_METRICS_PORT="0",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    ran = subprocess.run([SHOP, "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "databases main, accounting, delivery, shard 1, shard 2 migrated" in ran.stderr
    seeded = subprocess.run(
        [SHOP, "seed", "--products", "3", "--customers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert seeded.returncode == 0, seeded.stderr
    return {**urls, **{f"env:{k}": v for k, v in env.items()}}


@pytest.mark.parametrize(
    ("held_table", "outcome"),
    [
        # Waiting for its Idempotency-Key's claim: the order's statements are not sent yet.
        ("idempotency_key", "released"),
        # Waiting on the fence, with the order's statements and COMMIT already sent in the
        # pipeline: PostgreSQL runs them once the lock goes, though their process is gone.
        ("order_fence", "confirmed"),
    ],
)
def test_a_shop_killed_between_the_stock_and_the_order_leaves_stock_and_orders_agreeing(
    sharded: dict[str, str], held_table: str, outcome: str
) -> None:

    env = _env_of(sharded)
    main = _libpq(sharded["main"])
    server, base = _start_shop(env)
    try:
        token = _sign_in(base)
        customer_id = _scalar(main, "SELECT id FROM customer WHERE email = 'customer1@example.com'")
        logical = customer_id % 1024
        number = _scalar(main, f"SELECT shard FROM shard_map WHERE logical = {logical}")
        shard = _libpq(sharded[f"shard{number}"])
        product_id = _scalar(main, "SELECT min(product_id) FROM stock_level")
        stock = _scalar(main, f"SELECT quantity FROM stock_level WHERE product_id = {product_id}")
        with psycopg.connect(shard) as blocker:
            blocker.execute(f"LOCK TABLE {held_table} IN EXCLUSIVE MODE")
            placing = threading.Thread(
                target=_post_quietly,
                args=(f"{base}/orders", token, product_id),
                daemon=True,
            )
            placing.start()
            _wait(lambda: _scalar(shard, WAITING) > 0, 30, "the order to wait in its shard")
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=10)
            blocker.rollback()
    finally:
        if server.poll() is None:
            server.kill()
    assert _scalar(main, "SELECT state FROM reservation") == "held"
    taken = f"SELECT quantity FROM stock_level WHERE product_id = {product_id}"
    assert _scalar(main, taken) == stock - 1

    worker = _worker(env)
    try:
        _wait(
            lambda: _scalar(main, "SELECT state FROM reservation") != "held",
            30,
            "the worker to settle the hold",
        )
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    output = worker.stdout.read() if worker.stdout else ""
    assert _scalar(main, "SELECT state FROM reservation") == outcome
    orders = _scalar(shard, "SELECT count(*) FROM customer_order")
    if outcome == "released":
        assert (orders, _scalar(main, taken)) == (0, stock)
        assert _scalar(shard, "SELECT void FROM order_fence") is True
    else:
        assert (orders, _scalar(main, taken)) == (1, stock - 1)
        assert _scalar(shard, "SELECT void FROM order_fence") is False
    if outcome == "released":
        assert "its reservation expired held; released" in output
    else:  # the order committed: the pass confirms its hold like any other, no warning
        assert "expired held" not in output
    assert "Traceback" not in output


def _env_of(sharded: dict[str, str]) -> dict[str, str]:
    """The stage-8 shop's environment the `sharded` fixture carries."""
    return {k[4:]: v for k, v in sharded.items() if k.startswith("env:")}


def _start_shop(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """`shop serve` on a free port, answering: the process and its base URL."""
    port = _free_port()
    server = subprocess.Popen(
        [SHOP, "serve", "--port", str(port), "--no-access-log"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _answers(f"{base}/healthz"), 30, "the shop to start")
    except BaseException:
        server.kill()
        raise
    return server, base


def _sign_in(base: str) -> str:
    """The seeded customer 1's access token."""
    import httpx

    answer = httpx.post(
        f"{base}/auth/token",
        data={"username": "customer1@example.com", "password": "demo-password-1"},
    )
    return str(answer.json()["access_token"])


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _post_quietly(url: str, token: str, product_id: int) -> None:
    """The customer's request, whose answer never comes: the server is killed under it."""
    import httpx

    with contextlib.suppress(httpx.HTTPError):
        httpx.post(
            url,
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "killed-checkout"},
            json={"lines": [{"product_id": product_id, "quantity": 1}]},
            timeout=30,
        )


def test_shop_shards_move_moves_a_customers_orders_while_the_shop_serves(
    sharded: dict[str, str],
) -> None:
    """`shop shards move` against a running `shop serve`: the customer's order is read back
    through the server once its directory has followed (within seconds), the next order lands
    in the new shard, and the old one keeps nothing of that logical shard."""
    import httpx

    env = _env_of(sharded)
    main = _libpq(sharded["main"])
    server, base = _start_shop(env)
    try:
        token = _sign_in(base)
        headers = {"Authorization": f"Bearer {token}"}
        product_id = _scalar(main, "SELECT min(product_id) FROM stock_level")
        order = {"lines": [{"product_id": product_id, "quantity": 1}]}
        first = httpx.post(f"{base}/orders", headers=headers, json=order).json()["id"]
        logical = first % 1024
        source = _scalar(main, f"SELECT shard FROM shard_map WHERE logical = {logical}")
        target = 3 - source

        moved = subprocess.run(
            [SHOP, "shards", "move", str(logical), "--to", str(target), "--grace-s", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert moved.returncode == 0, moved.stderr
        assert f"logical shard {logical} is in shard {target}" in moved.stderr
        assert "Traceback" not in moved.stderr

        def read_back() -> bool:
            return httpx.get(f"{base}/orders/{first}", headers=headers).status_code == 200

        _wait(read_back, 10, "the server to follow the directory")
        second = httpx.post(f"{base}/orders", headers=headers, json=order)
        assert second.status_code == 201, second.text
    finally:
        server.kill()
        server.wait(timeout=10)
    new, old = _libpq(sharded[f"shard{target}"]), _libpq(sharded[f"shard{source}"])
    mine = f"SELECT count(*) FROM customer_order WHERE id % 1024 = {logical}"
    assert (_scalar(new, mine), _scalar(old, mine)) == (2, 0)
    assert _scalar(old, f"SELECT state FROM shard_move WHERE logical = {logical}") == "gone"
    output = server.stdout.read() if server.stdout else ""
    assert "Traceback" not in output


def test_shop_shards_move_without_shards_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env |= {"SHOP_ENV": "test", "SHOP_JWT_SECRET": "s" * 40,
            "SHOP_SQLITE_PATH": str(tmp_path / "shop.db")}  # fmt: skip
    assert subprocess.run([SHOP, "migrate"], env=env, capture_output=True).returncode == 0
    refused = subprocess.run(
        [SHOP, "shards", "move", "5", "--to", "2"], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "shop: shards: no order shards are configured (SHOP_ORDER_SHARD_URLS)"
    )


def test_shop_purge_keys_forgets_old_keys_in_every_order_shard(sharded: dict[str, str]) -> None:
    env = _env_of(sharded)
    old = "now() - interval '3 days'"
    for number, shard in ((1, "shard1"), (2, "shard2")):
        with psycopg.connect(_libpq(sharded[shard])) as conn:
            conn.execute(
                "INSERT INTO idempotency_key (customer_id, key, request_hash, created_at) "
                f"VALUES ({number}, 'old', 'h', {old}), ({number}, 'new', 'h', now())"
            )
    purged = subprocess.run(
        [SHOP, "purge-keys"], env=env, capture_output=True, text=True, timeout=120
    )
    assert purged.returncode == 0, purged.stderr
    assert "forgot 2 idempotency keys" in purged.stderr
    for shard in ("shard1", "shard2"):
        keys = _scalar(_libpq(sharded[shard]), "SELECT string_agg(key, ',') FROM idempotency_key")
        assert keys == "new"
