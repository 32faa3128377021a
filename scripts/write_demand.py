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
- `federated` (stage 8's federation): as `queued`, with the ledger and the shipment in
  databases of their own (on the same server); each database's backends are counted apart, and
  the main one's is the figure that compares with `queued`.
- `sharded` (stage 8): as `federated`, with the orders of two customers in two shards (the
  orders alternate between them); the main database keeps the stock and its holds. Per order
  placed anywhere, so each shard's figure is about half of what one shard's orders cost it.

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
PATHS = ("in-request", "queued", "federated", "sharded")
FUNCTIONS = {
    "in-request": ("main",),
    "queued": ("main",),
    "federated": ("main", "accounting", "delivery"),
    "sharded": ("main", "accounting", "delivery", "shard1", "shard2"),
}


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
def _databases(functions: tuple[str, ...]) -> Iterator[dict[str, tuple[str, str]]]:
    """A fresh database per function ("main", and for stage 8 "accounting" and "delivery"),
    migrated by `shop migrate`: (name, URL) by function."""
    made = {f: f"shop_demand_{uuid.uuid4().hex[:8]}" for f in functions}
    base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    urls = {f: f"{base}/{name}" for f, name in made.items()}
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        for name in made.values():
            admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {
            **os.environ,
            "SHOP_DATABASE_URL": urls["main"],
            "SHOP_ENV": "test",
            "SHOP_JWT_SECRET": SECRET,
        }
        if len(functions) > 1:
            env["SHOP_QUEUE_URL"] = "http://127.0.0.1:1/queue/unused-by-migrate"
            for function in ("accounting", "delivery"):
                env[f"SHOP_{function.upper()}_DATABASE_URL"] = urls[function]
            shards = [urls[f] for f in functions if f.startswith("shard")]
            if shards:
                env["SHOP_ORDER_SHARD_URLS"] = ",".join(shards)
        subprocess.run([SHOP, "migrate"], env=env, check=True)
        yield {f: (made[f], urls[f]) for f in functions}
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            for name in made.values():
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

    functions = FUNCTIONS[path]
    with _databases(functions) as databases:
        values: dict[str, Any] = {
            "database_url": databases["main"][1],
            "env": "test",
            "jwt_secret": SECRET,
            "password_time_cost": 1,
            "password_memory_kib": 1024,
            "metrics": False,
            "access_log": False,
            "_env_file": None,
        }
        queue_url = None
        if path != "in-request":
            assert endpoint is not None
            queue_url = _queue(endpoint)
            values |= {
                "queue_url": queue_url,
                "aws_endpoint_url": endpoint,
                "aws_region": "us-east-1",
            }
        for function in functions[1:3]:
            values[f"{function}_database_url"] = databases[function][1]
        shard_urls = [databases[f][1] for f in functions if f.startswith("shard")]
        if shard_urls:
            values["order_shard_urls"] = ",".join(shard_urls)
        settings = Settings(**values)
        app = create_app(settings)
        async with LifespanManager(app, startup_timeout=30):
            resources = app.state.resources
            # Two customers: with shards, consecutive ids live on the two shards.
            buyers = []
            for number in (1, 2):
                user = await customers.sign_up(
                    resources.db,
                    resources.passwords,
                    data=SignUp(
                        email=f"demand{number}@example.com",
                        password="correct-horse-42",
                        full_name="D",
                    ),
                    role=Role.CUSTOMER,
                )
                token, _ = resources.tokens.issue(
                    Principal(customer_id=user.id, role=Role.CUSTOMER)
                )
                buyers.append({"Authorization": f"Bearer {token}"})
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
                    databases=resources.databases,
                )
                if queue_url
                else None
            )
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:

                async def place(n: int, tag: str) -> None:
                    answer = await c.post(
                        "/orders",
                        headers={**buyers[n % 2], "Idempotency-Key": f"{tag}-{n}"},
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
                    before = {f: _backend_cpu_s(admin, n) for f, (n, _) in databases.items()}
                    app_before = time.process_time()
                    for n in range(orders):
                        await place(n, "run")
                    await drain()
                    after = {f: _backend_cpu_s(admin, n) for f, (n, _) in databases.items()}
                    app_after = time.process_time()
    return {
        "db_ms": (after["main"] - before["main"]) / orders * 1000,
        **{f"{f}_ms": (after[f] - before[f]) / orders * 1000 for f in functions[1:]},
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
    parser.add_argument(
        "--path",
        dest="paths",
        action="append",
        choices=PATHS,
        help="measure only this order path (repeatable; default: all four)",
    )
    args = parser.parse_args(argv)
    if args.orders < 1 or args.repeats < 1:
        parser.error("--orders and --repeats must be at least 1")
    args.paths = args.paths or list(PATHS)
    server, endpoint = _moto()
    try:
        print(f"CPU: {_cpu_model()}; {args.orders} one-line orders per run, {args.repeats} runs")
        for path in args.paths:
            runs = [await _measure(path, args.orders, endpoint) for _ in range(args.repeats)]
            db = [r["db_ms"] for r in runs]
            app = [r["app_and_client_ms"] for r in runs]
            line = (
                f"{path:>10}: PostgreSQL {statistics.median(db):.2f} ms CPU per order "
                f"(runs {min(db):.2f}-{max(db):.2f})"
            )
            for function in FUNCTIONS[path][1:]:
                each = [r[f"{function}_ms"] for r in runs]
                line += (
                    f"; {function} database {statistics.median(each):.2f} ms "
                    f"({min(each):.2f}-{max(each):.2f})"
                )
            if len(FUNCTIONS[path]) > 1:
                line = line.replace("PostgreSQL", "main database", 1)
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
