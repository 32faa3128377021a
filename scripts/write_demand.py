#!/usr/bin/env python3
"""What one order costs the write primary: PostgreSQL CPU per one-line order, measured.

    .venv/bin/python scripts/write_demand.py [--orders 400] [--repeats 3]

The figure stage 8's design (docs/stage-8.md) sizes shards with: the CPU time the PostgreSQL
backends of the shop's database spend per order, read from /proc (so PostgreSQL must run on this
machine, as the test suite's does), for the two order paths the ladder has:

- `in-request` (stages 2-6): reserve, order, line, ledger, shipment and Idempotency-Key in the
  request's transaction;
- `queued` (stage 7): the request's transaction writes the order and an outbox event; the relay
  publishes it (to moto's SQS here) and a worker posts the ledger and opens the shipment. Every
  one of these transactions runs on the primary and is counted.

CPU time per order does not depend on how busy the machine is (throughput would), so the figure
holds on a shared machine; it does depend on the CPU: the design doc states which. The app runs
in this process through an in-process HTTP client; its CPU (app and client together) is printed
too for the in-request path (not for the queued one, where this process also runs moto and the
worker), as a ratio, not as a figure for the app alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

SHOP = shutil.which("shop", path=str(Path(sys.executable).parent)) or "shop"
ADMIN_URL = os.environ.get("SHOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SECRET = "demand-" + "x" * 40
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _backend_cpu_s(admin: psycopg.Connection[Any], database: str) -> float:
    """CPU seconds (user + system) of every backend now connected to `database`."""
    pids = [
        row[0]
        for row in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    ]
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended between the query and the read
        total += (int(fields[11]) + int(fields[12])) * TICK_S
    return total


@contextmanager
def _database() -> Iterator[tuple[str, str]]:
    name = f"shop_demand_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    try:
        env = {
            **os.environ,
            "SHOP_DATABASE_URL": url,
            "SHOP_ENV": "test",
            "SHOP_JWT_SECRET": SECRET,
        }
        subprocess.run([SHOP, "migrate"], env=env, check=True)
        yield name, url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _moto() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    return server, f"http://127.0.0.1:{port}"


def _queue(endpoint: str) -> str:
    import boto3

    client = boto3.client("sqs", region_name="us-east-1", endpoint_url=endpoint)
    dead = client.create_queue(QueueName="demand-dead")["QueueUrl"]
    arn = client.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "5"})
    return str(
        client.create_queue(QueueName="demand", Attributes={"RedrivePolicy": policy})["QueueUrl"]
    )


async def _measure(path: str, orders: int, endpoint: str | None) -> dict[str, float]:
    from asgi_lifespan import LifespanManager

    from app.adapters.mail import LogMailer
    from app.adapters.queue import Queue
    from app.catalog import service as catalog
    from app.catalog.schemas import ProductCreate
    from app.customers import service as customers
    from app.customers.schemas import SignUp
    from app.kernel.security import Principal, Role
    from app.kernel.settings import Settings
    from app.main import create_app
    from app.worker import Worker

    with _database() as (name, url):
        values: dict[str, Any] = {
            "database_url": url,
            "env": "test",
            "jwt_secret": SECRET,
            "password_time_cost": 1,
            "password_memory_kib": 1024,
            "metrics": False,
            "access_log": False,
            "_env_file": None,
        }
        queue_url = None
        if path == "queued":
            assert endpoint is not None
            queue_url = _queue(endpoint)
            values |= {
                "queue_url": queue_url,
                "aws_endpoint_url": endpoint,
                "aws_region": "us-east-1",
            }
        settings = Settings(**values)
        app = create_app(settings)
        async with LifespanManager(app, startup_timeout=30):
            resources = app.state.resources
            user = await customers.sign_up(
                resources.db,
                resources.passwords,
                data=SignUp(email="demand@example.com", password="correct-horse-42", full_name="D"),
                role=Role.CUSTOMER,
            )
            token, _ = resources.tokens.issue(Principal(customer_id=user.id, role=Role.CUSTOMER))
            product = await catalog.create_product(
                resources.db,
                data=ProductCreate(
                    sku="DEMAND-1", name="Demand", price_cents=1000, initial_stock=1_000_000
                ),
                cache=resources.cache,
            )
            worker = (
                Worker(
                    resources.db,
                    Queue(queue_url, region="us-east-1", endpoint_url=endpoint),
                    LogMailer(),
                    wait_s=0,
                )
                if queue_url
                else None
            )
            headers = {"Authorization": f"Bearer {token}"}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:

                async def place(n: int, tag: str) -> None:
                    answer = await c.post(
                        "/orders",
                        headers={**headers, "Idempotency-Key": f"{tag}-{n}"},
                        json={"lines": [{"product_id": product.id, "quantity": 1}]},
                    )
                    if answer.status_code != 201:
                        raise SystemExit(f"order refused: {answer.status_code} {answer.text}")

                async def drain() -> None:
                    if worker is None:
                        return
                    await asyncio.sleep(0.2)  # the relay publishes after the commit
                    idle = 0
                    while idle < 3:
                        idle = idle + 1 if await worker.run_once() == 0 else 0

                for n in range(50):  # warm: pools opened, statements prepared
                    await place(n, "warm")
                await drain()
                with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                    db_before = _backend_cpu_s(admin, name)
                    app_before = time.process_time()
                    for n in range(orders):
                        await place(n, "run")
                    await drain()
                    db_after = _backend_cpu_s(admin, name)
                    app_after = time.process_time()
    return {
        "db_ms": (db_after - db_before) / orders * 1000,
        "app_and_client_ms": (app_after - app_before) / orders * 1000,
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.orders < 1 or args.repeats < 1:
        parser.error("--orders and --repeats must be at least 1")
    server, endpoint = _moto()
    try:
        print(f"CPU: {_cpu_model()}; {args.orders} one-line orders per run, {args.repeats} runs")
        for path in ("in-request", "queued"):
            runs = [await _measure(path, args.orders, endpoint) for _ in range(args.repeats)]
            db = [r["db_ms"] for r in runs]
            app = [r["app_and_client_ms"] for r in runs]
            line = (
                f"{path:>10}: PostgreSQL {statistics.median(db):.2f} ms CPU per order "
                f"(runs {min(db):.2f}-{max(db):.2f})"
            )
            if path == "in-request":  # queued: this process also runs moto and the worker
                line += (
                    f"; app and client in-process {statistics.median(app):.2f} ms "
                    f"({min(app):.2f}-{max(app):.2f})"
                )
            print(line, flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
