"""`shop worker`, the real command, against moto's SQS and SES (a threaded moto server) and the
real PostgreSQL: killed in the middle of a batch, restarted, it leaves every order with exactly
one ledger posting, one shipment and one e-mail, and books that balance.

The worker runs as the stack runs it: SHOP_ENV=production and no JWT key at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from sqlalchemy import text

from app.kernel.security import Role
from tests.conftest import REDIS_URL, test_settings
from tests.integration.conftest import make_product, make_user

REGION = "us-east-1"
SENDER = "orders@shop.test"
SHOP = str(Path(sys.executable).parent / "shop")
ORDERS = 20


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        yield f"http://127.0.0.1:{port}"
    server.stop()


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint)


def _queue(endpoint: str, *, visibility_s: int = 2, max_receive_count: int = 5) -> tuple[str, str]:
    """The order queue and its dead-letter queue, configured as the stack configures them."""
    sqs = _client("sqs", endpoint)
    name = f"orders-{time.monotonic_ns()}"
    dead = sqs.create_queue(QueueName=f"{name}-dead")["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": str(visibility_s),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dead_arn, "maxReceiveCount": str(max_receive_count)}
            ),
        },
    )["QueueUrl"]
    return url, dead


def _sent_mail_subjects() -> list[str]:
    """What moto's SES accepted (its backend lives in this process, beside the server)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    return [m.subject for m in ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages]


def _worker(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SHOP, "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _scalar(url: str, sql: str) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


@pytest.fixture
def database(fresh_database: Callable[[], str]) -> str:
    from app.migrations import runner

    url = fresh_database()
    runner.upgrade(url)
    return url


def _env(database: str, moto_endpoint: str, queue_url: str, metrics_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env.update(
        SHOP_ENV="production",  # and no SHOP_JWT_SECRET*: the stack gives workers none
        SHOP_DATABASE_URL=database,
        SHOP_QUEUE_URL=queue_url,
        SHOP_MAIL_SENDER=SENDER,
        SHOP_AWS_REGION=REGION,
        SHOP_AWS_ENDPOINT_URL=moto_endpoint,
        SHOP_WORKER_WAIT_S="1",
        SHOP_WORKER_METRICS_PORT=str(metrics_port),
        # Blocked by the test's lock, the worker waits instead of giving up.
        SHOP_DATABASE_LOCK_TIMEOUT_MS="0",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    return env


async def _place_orders(
    database: str,
    moto_endpoint: str,
    queue_url: str,
    *,
    count: int = ORDERS,
    twice: bool = True,
    **settings: str,
) -> list[int]:
    """Orders through the app with a queue; with `twice`, half their events published twice.
    `settings` are more of the app's settings (stage 8's federated databases)."""
    import httpx
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    app = create_app(
        test_settings(
            database_url=database,
            redis_url=REDIS_URL,
            queue_url=queue_url,
            mail_sender=SENDER,
            aws_region=REGION,
            aws_endpoint_url=moto_endpoint,
            **settings,
        )
    )
    async with LifespanManager(app, startup_timeout=30):
        resources = app.state.resources
        products = [await make_product(resources, initial_stock=100) for _ in range(3)]
        buyers = [await make_user(resources) for _ in range(4)]
        transport = httpx.ASGITransport(app=app)
        ids = []
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            for n in range(count):
                answer = await client.post(
                    "/orders",
                    headers=buyers[n % 4].headers,
                    json={"lines": [{"product_id": products[n % 3].id, "quantity": 1 + n % 2}]},
                )
                assert answer.status_code == 201, answer.text
                assert answer.json()["fulfilment"] == "pending"
                ids.append(answer.json()["id"])
        await resources.relay.flush()
        if not twice:
            return ids
        # The relay publishes at least once: half the events go out a second time.
        async with resources.db.write() as conn:
            await conn.execute(
                text(
                    "UPDATE outbox_event SET published_at = NULL, "
                    "created_at = created_at - interval '1 hour' "
                    "WHERE (payload->>'order_id')::int % 2 = 0"
                )
            )
        assert await resources.relay.sweep() == count // 2
        await make_user(resources, role=Role.ADMIN)
    return ids


def test_a_worker_killed_mid_batch_and_restarted_applies_every_order_exactly_once(
    database: str, moto_endpoint: str
) -> None:
    queue_url, dead_url = _queue(moto_endpoint)
    _client("ses", moto_endpoint).verify_email_identity(EmailAddress=SENDER)
    mails_before = len(_sent_mail_subjects())
    ids = asyncio.run(_place_orders(database, moto_endpoint, queue_url))
    libpq = database.replace("postgresql+psycopg://", "postgresql://")
    fulfilled = "SELECT count(*) FROM customer_order WHERE fulfilled_at IS NOT NULL"

    # Hold every other order locked: the worker handles the orders before the first of them,
    # then waits on it, inside its transaction, in the middle of its batch.
    with psycopg.connect(libpq) as blocker:
        blocker.execute(
            "SELECT id FROM customer_order WHERE id % 2 = 0 ORDER BY id FOR UPDATE"
        ).fetchall()
        first = _worker(_env(database, moto_endpoint, queue_url, _free_port()))
        try:
            _wait(
                lambda: (
                    _scalar(
                        libpq,
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    )
                    > 0
                ),
                30,
                "the worker to wait on a locked order",
            )
            done_before_kill = _scalar(libpq, fulfilled)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        blocker.rollback()
    assert 0 < done_before_kill < ORDERS

    metrics_port = _free_port()
    second = _worker(_env(database, moto_endpoint, queue_url, metrics_port))
    try:
        _wait(lambda: _scalar(libpq, fulfilled) == ORDERS, 60, "every order to be fulfilled")
        _wait(lambda: len(_sent_mail_subjects()) - mails_before >= ORDERS, 30, "every e-mail")
        time.sleep(3)  # the duplicates and the killed batch come back; they change nothing
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=15) == 0
    finally:
        if second.poll() is None:
            second.kill()
    output = second.stdout.read() if second.stdout else ""

    for order_id in ids:
        assert (
            _scalar(libpq, f"SELECT count(*) FROM ledger_entry WHERE order_id = {order_id}") == 3
        ), order_id  # one posting: receivable, revenue, tax
        assert _scalar(libpq, f"SELECT count(*) FROM shipment WHERE order_id = {order_id}") == 1
    subjects = _sent_mail_subjects()[mails_before:]
    assert sorted(subjects) == sorted(f"Your order #{i}" for i in ids)
    debit, credit = (
        _scalar(libpq, "SELECT sum(debit_cents) FROM ledger_entry"),
        _scalar(libpq, "SELECT sum(credit_cents) FROM ledger_entry"),
    )
    assert debit == credit
    sqs = _client("sqs", moto_endpoint)
    for url in (queue_url, dead_url):
        attributes = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        assert attributes == {
            "ApproximateNumberOfMessages": "0",
            "ApproximateNumberOfMessagesNotVisible": "0",
        }, url
    assert 'shop_worker_events_processed_total{kind="order.placed"}' in metrics
    assert "shop_worker_queue_age_seconds" in metrics
    assert "stopped after finishing its batch" in output
    assert "Traceback" not in output


def test_the_worker_needs_a_queue(database: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env.update(SHOP_ENV="production", SHOP_DATABASE_URL=database, SHOP_WORKER_METRICS_PORT="0")
    ran = subprocess.run([SHOP, "worker"], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode != 0
    assert "SHOP_QUEUE_URL" in ran.stderr and "Traceback" not in ran.stderr


def test_sigterm_lets_the_worker_finish_its_batch_before_it_exits(
    database: str, moto_endpoint: str
) -> None:
    queue_url, _ = _queue(moto_endpoint, visibility_s=60)
    _client("ses", moto_endpoint).verify_email_identity(EmailAddress=SENDER)
    ids = asyncio.run(_place_orders(database, moto_endpoint, queue_url, count=6, twice=False))
    libpq = database.replace("postgresql+psycopg://", "postgresql://")
    waiting = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )

    with psycopg.connect(libpq) as blocker:
        blocker.execute("SELECT id FROM customer_order WHERE id = %s FOR UPDATE", (ids[2],))
        worker = _worker(_env(database, moto_endpoint, queue_url, _free_port()))
        try:
            _wait(lambda: _scalar(libpq, waiting) > 0, 30, "the worker to wait on order 3")
            worker.send_signal(signal.SIGTERM)
            time.sleep(1)
            assert worker.poll() is None  # still finishing its batch
            blocker.rollback()
            assert worker.wait(timeout=15) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
    output = worker.stdout.read() if worker.stdout else ""

    fulfilled = "SELECT count(*) FROM customer_order WHERE fulfilled_at IS NOT NULL"
    assert _scalar(libpq, fulfilled) == 6, output
    remaining = _client("sqs", moto_endpoint).get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert set(remaining.values()) == {"0"}  # handled and deleted before the exit
    assert "stopped after finishing its batch" in output
