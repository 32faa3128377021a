"""The shop under the failures operators meet: a database restart, a SIGTERM from the
orchestrator, and a database that is not the one the shop needs.

The PostgreSQL tests run against a private cluster (tests/pg_cluster.py), which they stop and
restart: the shared server on 5432 is never touched. The SIGTERM tests use the embedded file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from asgi_lifespan import LifespanManager

from app.catalog import service as catalog
from app.catalog.schemas import ProductCreate
from app.customers import service as customers
from app.customers.schemas import SignUp
from app.main import close_resources, create_app, open_resources
from app.migrations import runner
from tests import pg_cluster
from tests.conftest import test_settings

SHOP = shutil.which("shop", path=str(Path(sys.executable).parent)) or "shop"
JWT_SECRET = "resilience-test-secret-" + "r" * 32
EMAIL, PASSWORD = "steady@example.com", "correct-horse-42"


# --- builders ---------------------------------------------------------------------------------


def shop_env(workdir: Path, **extra: str) -> dict[str, str]:
    """No SHOP_* from the caller; cheap password hashing; the embedded file in `workdir`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    return env | {
        "SHOP_PASSWORD_TIME_COST": "1",
        "SHOP_PASSWORD_MEMORY_KIB": "1024",
        "SHOP_SQLITE_PATH": str(workdir / "shop.db"),
        **extra,
    }


def shop(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHOP, *args],
        cwd=workdir,
        env=shop_env(workdir, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@dataclass
class Server:
    """`shop serve` as a process; its output goes to a file (a full pipe would block it)."""

    base: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(workdir: Path, **env: str) -> Server:
    port = pg_cluster.free_port()
    log = workdir / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [SHOP, "serve", "--port", str(port), "--no-access-log"],
            cwd=workdir,
            env=shop_env(workdir, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{server.base}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    process.wait(timeout=10)
    pytest.fail(f"`shop serve` did not start:\n{server.output()}")


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Every server a test starts is killed at its end, whatever happened."""
    started: list[Server] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=10)


async def seed_for_traffic(database_url: str) -> None:
    """One customer who can sign in, and one product with stock for a long steady loop."""
    resources = await open_resources(test_settings(database_url=database_url))
    try:
        await customers.sign_up(
            resources.db,
            resources.passwords,
            data=SignUp(email=EMAIL, password=PASSWORD, full_name="Steady Customer"),
        )
        await catalog.create_product(
            resources.db,
            data=ProductCreate(
                sku="STEADY-1", name="Steady Product", price_cents=500, initial_stock=1_000_000
            ),
        )
    finally:
        await close_resources(resources)


@asynccontextmanager
async def in_process(database_url: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, in this process; an unhandled error is a 500, as in uvicorn."""
    app = create_app(test_settings(database_url=database_url, **settings))
    async with LifespanManager(app, startup_timeout=30):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            yield client


async def sign_in(client: httpx.AsyncClient) -> dict[str, str]:
    answer = await client.post("/auth/token", json={"email": EMAIL, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


# --- 1. a database restart costs no request once the server is back ---------------------------


@dataclass(frozen=True)
class Outcome:
    sent: float  # time.monotonic() when the request left
    answered: float  # and when its answer (or failure) came
    route: str
    status: int | None  # None: no HTTP answer at all
    detail: str = ""

    def seen_from(self, moment: float) -> str:
        when = self.sent - moment
        return f"{self.route} sent at {when:+.2f} s: {self.status} {self.detail[:200]}"


async def steady_traffic(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    product_id: int,
    stop: asyncio.Event,
    outcomes: list[Outcome],
) -> None:
    """The three paths in turn: the driver fast path, a SQLAlchemy read, a write."""
    calls: list[tuple[str, str, str, dict[str, Any]]] = [
        ("GET /products/{id}", "GET", f"/products/{product_id}", {}),
        ("GET /orders", "GET", "/orders", {"headers": headers}),
        (
            "POST /orders",
            "POST",
            "/orders",
            {
                "headers": headers,
                "json": {"lines": [{"product_id": product_id, "quantity": 1}]},
            },
        ),
    ]
    while not stop.is_set():
        for route, method, path, options in calls:
            sent = time.monotonic()
            try:
                answer = await client.request(method, path, **options)
            except httpx.TransportError as exc:
                outcomes.append(Outcome(sent, time.monotonic(), route, None, repr(exc)))
                continue
            detail = "" if answer.is_success else answer.text
            outcomes.append(Outcome(sent, time.monotonic(), route, answer.status_code, detail))


@asynccontextmanager
async def traffic(
    client: httpx.AsyncClient, headers: dict[str, str], product_id: int, outcomes: list[Outcome]
) -> AsyncIterator[None]:
    """Three clients in a steady loop for as long as the block lasts."""
    stop = asyncio.Event()
    loops = [
        asyncio.create_task(steady_traffic(client, headers, product_id, stop, outcomes))
        for _ in range(3)
    ]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*loops)


@dataclass
class RestartRun:
    outcomes: list[Outcome]
    down: float  # when the first restart began
    back: float  # when pg_isready first answered again


async def restart_under_traffic(
    client: httpx.AsyncClient, cluster: pg_cluster.Cluster
) -> RestartRun:
    """PostgreSQL restarted (fast) twice: once under steady traffic, then once while the shop
    is idle, so that every pooled connection is dead when the next request comes.

    No request is sent during the second restart: every request sent after the first one
    was over met a server that was up.
    """
    headers = await sign_in(client)
    product_id = (await client.get("/products", params={"limit": 1})).json()["items"][0]["id"]
    outcomes: list[Outcome] = []
    async with traffic(client, headers, product_id, outcomes):
        await asyncio.sleep(0.7)  # every pool now holds connections the restart will kill
        down = time.monotonic()
        await asyncio.to_thread(cluster.restart)
        back = await asyncio.to_thread(cluster.wait_ready)
        await asyncio.sleep(1.0)
    await asyncio.to_thread(cluster.restart)
    await asyncio.to_thread(cluster.wait_ready)
    async with traffic(client, headers, product_id, outcomes):
        await asyncio.sleep(1.0)
    return RestartRun(outcomes, down, back)


def assert_no_request_lost_once_back(run: RestartRun, log: str = "") -> None:
    def listed(outcomes: list[Outcome]) -> str:
        lines = [o.seen_from(run.back) for o in outcomes[:20]]
        return "\n".join(lines) + (f"\n--- server log ---\n{log[-4000:]}" if log else "")

    def ok(o: Outcome) -> bool:
        return o.status is not None and 200 <= o.status < 300

    before = [o for o in run.outcomes if o.answered < run.down]
    during = [o for o in run.outcomes if o.answered >= run.down and o.sent < run.back]
    after = [o for o in run.outcomes if o.sent >= run.back]
    for route in {o.route for o in run.outcomes}:
        count = sum(o.route == route for o in after)
        assert count >= 3, f"{count} {route} requests after the restart prove nothing"
    failed_before = [o for o in before if not ok(o)]
    assert not failed_before, "before the restart:\n" + listed(failed_before)
    # While it was down: 503 "retry shortly" at worst, never a 500 nor a dropped connection.
    wrong = [o for o in during if not (ok(o) or o.status == 503)]
    assert not wrong, "while PostgreSQL restarted:\n" + listed(wrong)
    failed = [o for o in after if not ok(o)]
    assert not failed, "sent after PostgreSQL was back (times from then):\n" + listed(failed)


@pytest.fixture(scope="module")
def cluster() -> Iterator[pg_cluster.Cluster]:
    reason = pg_cluster.why_unavailable()
    if reason:
        pytest.skip(f"no private PostgreSQL cluster: {reason}")
    with pg_cluster.private_cluster() as made:
        yield made


@pytest.fixture
async def restartable_database(cluster: pg_cluster.Cluster) -> str:
    """A migrated, seeded database of its own on the private cluster."""
    url = cluster.create_database(f"shop_{uuid.uuid4().hex[:8]}")
    await asyncio.to_thread(runner.upgrade, url)
    await seed_for_traffic(url)
    return url


async def test_a_database_restart_costs_the_server_no_request_once_postgres_is_back(
    cluster: pg_cluster.Cluster, restartable_database: str, tmp_path: Path, servers: list[Server]
) -> None:
    server = start_server(
        tmp_path, SHOP_DATABASE_URL=restartable_database, SHOP_JWT_SECRET=JWT_SECRET
    )
    servers.append(server)
    async with httpx.AsyncClient(base_url=server.base, timeout=20) as client:
        run = await restart_under_traffic(client, cluster)
    assert_no_request_lost_once_back(run, server.output())


async def test_a_database_restart_costs_the_in_process_app_no_request_once_postgres_is_back(
    cluster: pg_cluster.Cluster, restartable_database: str
) -> None:
    async with in_process(restartable_database) as client:
        run = await restart_under_traffic(client, cluster)
    assert_no_request_lost_once_back(run)


async def test_a_database_down_at_start_is_tolerated_and_the_shop_is_ready_once_it_answers(
    cluster: pg_cluster.Cluster, restartable_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(cluster.stop)
    try:
        with caplog.at_level(logging.WARNING):
            async with in_process(restartable_database, database_pool_timeout_s=1) as client:
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/readyz")).status_code == 503
                assert (await client.get("/products/1")).status_code == 503

                await asyncio.to_thread(cluster.start)
                back = await asyncio.to_thread(cluster.wait_ready)
                while (await client.get("/readyz")).status_code != 200:
                    assert time.monotonic() - back < 5, "not ready 5 s after PostgreSQL was"
                    await asyncio.sleep(0.05)
                headers = await sign_in(client)
                product = await client.get("/products", params={"limit": 1})
                assert product.status_code == 200, product.text
                product_id = product.json()["items"][0]["id"]
                assert (await client.get(f"/products/{product_id}")).status_code == 200
                line = {"product_id": product_id, "quantity": 1}
                order = await client.post("/orders", headers=headers, json={"lines": [line]})
                assert order.status_code == 201, order.text
    finally:
        if not cluster.is_ready():
            await asyncio.to_thread(cluster.start)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("unreachable at start" in message for message in warned), warned


# --- 2. SIGTERM drains ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded shop, migrated and seeded by the real command (the tests only read it)."""
    folder = tmp_path_factory.mktemp("embedded")
    assert shop(folder, "migrate").returncode == 0
    seeded = shop(folder, "seed", "--products", "20", "--customers", "2")
    assert seeded.returncode == 0, seeded.stderr
    return folder


def fresh_get(url: str) -> int | str:
    """A GET on a new connection: the status, or the kind of transport failure."""
    try:
        return httpx.get(url, timeout=5, headers={"Connection": "close"}).status_code
    except httpx.ConnectError:
        return "refused"
    except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
        if isinstance(exc, httpx.ReadError) or "without sending a response" in str(exc):
            # Accepted by the kernel into the listener's queue, then reset when the server
            # closed its listener: no byte of an answer was sent (a client retries it).
            return "reset"
        return f"broken: {exc!r}"  # cut mid-response
    except httpx.TransportError as exc:
        return f"broken: {exc!r}"


def test_sigterm_turns_readyz_503_at_once_serves_through_the_drain_then_refuses_connections(
    seeded_folder: Path, servers: list[Server]
) -> None:
    drain, grace = 3.0, 2
    server = start_server(
        seeded_folder, SHOP_DRAIN_S=str(drain), SHOP_GRACEFUL_SHUTDOWN_S=str(grace)
    )
    servers.append(server)
    assert fresh_get(f"{server.base}/readyz") == 200

    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert fresh_get(f"{server.base}/readyz") == 503
    assert fresh_get(f"{server.base}/products?limit=5") == 200

    seen: list[tuple[float, int | str, int | str]] = []
    deadline = signalled + drain + grace + 5
    while server.process.poll() is None and time.monotonic() < deadline:
        at = time.monotonic() - signalled
        seen.append((at, fresh_get(f"{server.base}/products?limit=5"), "-"))
        seen.append((at, "-", fresh_get(f"{server.base}/readyz")))
        time.sleep(0.05)
    code = server.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    after_exit = fresh_get(f"{server.base}/products")
    history = "\n".join(f"{at:5.2f}s products={p} readyz={r}" for at, p, r in seen)

    assert after_exit == "refused"
    products = [(at, p) for at, p, _ in seen if p != "-"]
    # Served all through the drain, on new connections, and never cut mid-response.
    assert all(p == 200 for at, p in products if at < drain - 0.5), history
    assert any(p == 200 for at, p in products if at >= drain - 1.0), history
    assert all(p in (200, "refused", "reset") for _, p in products), history
    # A connection reset before any answer only at the instant the listener closes (the
    # kernel's queue of accepted connections goes with it), never during the drain.
    assert all(at >= drain - 0.5 for at, p, r in seen if "reset" in (p, r)), history
    # Once the listening socket is closed it stays closed.
    statuses = [p for _, p in products]
    if "refused" in statuses:
        assert 200 not in statuses[statuses.index("refused") :], history
    assert all(r in (503, "refused", "reset") for _, _, r in seen if r != "-"), history
    assert "Application shutdown complete" in server.output()
    # Stopped by itself, in time, and says it went well (a supervisor counts -15/143 a crash).
    assert time.monotonic() - signalled < drain + grace + 5
    assert code == 0, f"exit code {code}\n{server.output()}"


def test_sigterm_without_a_drain_stops_the_server_cleanly_and_promptly(
    seeded_folder: Path, servers: list[Server]
) -> None:
    grace = 2
    server = start_server(seeded_folder, SHOP_GRACEFUL_SHUTDOWN_S=str(grace))
    servers.append(server)
    assert fresh_get(f"{server.base}/products?limit=5") == 200

    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = server.process.wait(timeout=grace + 5)

    assert time.monotonic() - signalled < grace + 3
    assert fresh_get(f"{server.base}/products") == "refused"
    assert "Application shutdown complete" in server.output()
    assert "Traceback" not in server.output()
    assert code == 0, f"exit code {code}\n{server.output()}"


# --- 3. the wrong database, said clearly -------------------------------------------------


def refused_serves(workdir: Path, *envs: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    """`shop serve` once per environment, all at once; each must exit by itself, quickly."""
    processes = [
        subprocess.Popen(
            [SHOP, "serve", "--port", str(pg_cluster.free_port()), "--no-access-log"],
            cwd=workdir,
            env=shop_env(workdir, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in envs
    ]
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=20)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def test_serve_without_the_embedded_file_names_shop_migrate_and_the_path_and_creates_nothing(
    tmp_path: Path,
) -> None:
    [result] = refused_serves(tmp_path, {"SHOP_SQLITE_PATH": "data/shop.db"})  # relative

    assert result.returncode != 0
    assert "shop migrate" in result.stderr
    assert str((tmp_path / "data" / "shop.db").resolve()) in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []  # no file, no folder


@pytest.fixture
def empty_database(request: pytest.FixtureRequest) -> Callable[[], str]:
    """A factory of empty databases: on the private cluster (no fsync, so creating and
    dropping them is quick) when there is one, else on the shared server."""
    if pg_cluster.why_unavailable():
        return request.getfixturevalue("fresh_database")  # type: ignore[no-any-return]
    cluster: pg_cluster.Cluster = request.getfixturevalue("cluster")
    return lambda: cluster.create_database(f"shop_{uuid.uuid4().hex[:8]}")


def test_serve_on_a_database_not_at_the_latest_migration_refuses_and_names_shop_migrate(
    empty_database: Callable[[], str], tmp_path: Path
) -> None:
    empty, behind = empty_database(), empty_database()
    runner.upgrade(behind, "0001")  # one migration short of head

    results = refused_serves(
        tmp_path,
        *({"SHOP_DATABASE_URL": url, "SHOP_JWT_SECRET": JWT_SECRET} for url in (empty, behind)),
    )

    for result in results:
        assert result.returncode != 0, result.stderr
        assert "shop migrate" in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no shop schema" in results[0].stderr


def test_serve_on_a_configured_database_without_a_real_jwt_secret_refuses_naming_it(
    tmp_path: Path,
) -> None:
    # The published default secret is for a local shop on its embedded file only.
    url = f"postgresql://postgres@127.0.0.1:{pg_cluster.free_port()}/nowhere"
    [result] = refused_serves(tmp_path, {"SHOP_DATABASE_URL": url})

    assert result.returncode != 0
    assert "SHOP_JWT_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_table_dropped_after_start_answers_500_with_a_log_line_naming_it_not_503(
    empty_database: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    url = empty_database()
    await asyncio.to_thread(runner.upgrade, url)
    await seed_for_traffic(url)
    async with in_process(url) as client:
        headers = await sign_in(client)
        product_id = (await client.get("/products")).json()["items"][0]["id"]
        line = {"product_id": product_id, "quantity": 1}
        order = await client.post("/orders", headers=headers, json={"lines": [line]})
        assert order.status_code == 201, order.text
        tracked = f"/orders/{order.json()['id']}/shipment"
        assert (await client.get(tracked, headers=headers)).status_code == 200

        libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
        async with await psycopg.AsyncConnection.connect(libpq, autocommit=True) as admin:
            await admin.execute("DROP TABLE shipment_event CASCADE")

        with caplog.at_level(logging.INFO):
            answer = await client.get(tracked, headers=headers)

    assert answer.status_code == 500, answer.text
    assert "retry" not in answer.text
    assert "Retry-After" not in answer.headers
    named = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and "shipment_event" in r.getMessage()
    ]
    assert named, "no error log line names the missing table:\n" + "\n".join(
        f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records
    )
