"""The `shop` command as a new user runs it: migrate, seed, create an admin, serve, stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

SHOP = shutil.which("shop", path=str(Path(sys.executable).parent)) or "shop"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def shop(
    workdir: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHOP, *args],
        cwd=workdir,
        env={**_clean_env(workdir), **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _clean_env(workdir: Path) -> dict[str, str]:
    """No SHOP_* from the caller; the embedded file in the test's folder, not the project's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")} | {
        "SHOP_PASSWORD_TIME_COST": "1",
        "SHOP_PASSWORD_MEMORY_KIB": "1024",
        "SHOP_SQLITE_PATH": str(workdir / "shop.db"),
    }


@pytest.fixture
def server(workdir: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    assert shop(workdir, "migrate").returncode == 0
    seeded = shop(workdir, "seed", "--products", "50", "--customers", "3")
    assert seeded.returncode == 0, seeded.stderr
    admin = shop(
        workdir, "create-admin", "--email", "boss@example.com", "--password", "chief-passphrase-1"
    )
    assert admin.returncode == 0, admin.stderr
    port = _free_port()
    process = subprocess.Popen(
        [SHOP, "serve", "--port", str(port), "--no-access-log"],
        cwd=workdir,
        env=_clean_env(workdir) | {"SHOP_GRACEFUL_SHUTDOWN_S": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail(f"the server did not start: {process.stdout.read() if process.stdout else ''}")
    yield base, process
    if process.poll() is None:
        process.kill()


def test_a_new_user_can_migrate_seed_serve_and_place_an_order(
    workdir: Path, server: tuple[str, subprocess.Popen[str]]
) -> None:
    base, _ = server
    assert (workdir / "shop.db").exists()  # the embedded default: no services needed
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/docs").status_code == 200
        products = http.get("/products", params={"limit": 5}).json()["items"]
        assert len(products) == 5
        in_stock = next(p for p in http.get("/products?limit=50").json()["items"] if p["stock"] > 0)
        token = http.post(
            "/auth/token", json={"email": "customer1@example.com", "password": "demo-password-1"}
        ).json()["access_token"]
        order = http.post(
            "/orders",
            headers={"Authorization": f"Bearer {token}"},
            json={"lines": [{"product_id": in_stock["id"], "quantity": 1}]},
        )
        assert order.status_code == 201
        admin_token = http.post(
            "/auth/token", json={"email": "boss@example.com", "password": "chief-passphrase-1"}
        ).json()["access_token"]
        balance = http.get(
            "/admin/ledger/trial-balance", headers={"Authorization": f"Bearer {admin_token}"}
        ).json()
        assert balance["balanced"] is True
        assert balance["total_debit_cents"] == order.json()["total_cents"]


def test_the_server_stops_cleanly_on_sigterm(server: tuple[str, subprocess.Popen[str]]) -> None:
    _, process = server
    process.send_signal(signal.SIGTERM)
    # uvicorn drains and runs the lifespan shutdown (pools closed); a requested stop exits 0.
    assert process.wait(timeout=15) == 0
    output = process.stdout.read() if process.stdout else ""
    assert "Application shutdown complete" in output


def test_seeding_twice_adds_nothing_the_second_time(workdir: Path) -> None:
    assert shop(workdir, "migrate").returncode == 0
    first = shop(workdir, "seed", "--products", "30", "--customers", "2")
    second = shop(workdir, "seed", "--products", "30", "--customers", "2")
    assert "seeded 30 new products and 2 new customers" in first.stderr
    assert "seeded 0 new products and 0 new customers" in second.stderr


def test_bad_settings_are_reported_without_a_traceback(workdir: Path) -> None:
    result = shop(workdir, "migrate", env={"SHOP_ENV": "production"})
    assert result.returncode != 0
    assert "SHOP_JWT_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_weak_admin_password_is_refused_clearly(workdir: Path) -> None:
    assert shop(workdir, "migrate").returncode == 0
    result = shop(workdir, "create-admin", "--email", "x@example.com", "--password", "short")
    assert result.returncode != 0
    assert "password" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("count", ["-5", "ten", "99999999999"])
def test_a_bad_seed_count_is_refused_clearly(workdir: Path, count: str) -> None:
    result = shop(workdir, "seed", "--products", count)
    assert result.returncode == 2
    assert "--products: a whole number from 0 to 10000000" in result.stderr
    assert "Traceback" not in result.stderr


def own_database(workdir: Path) -> dict[str, str]:
    return {"SHOP_SQLITE_PATH": str(workdir / "shop.db")}


def test_create_admin_takes_the_password_from_stdin_or_the_environment(workdir: Path) -> None:
    db = own_database(workdir)
    assert shop(workdir, "migrate", env=db).returncode == 0
    piped = shop(
        workdir,
        "create-admin",
        "--email",
        "piped@example.com",
        "--password-stdin",
        env=db,
        stdin="through-a-pipe-1\n",
    )
    assert piped.returncode == 0, piped.stderr
    from_env = shop(
        workdir,
        "create-admin",
        "--email",
        "scripted@example.com",
        env=db | {"SHOP_ADMIN_PASSWORD": "from-the-env-22"},
        stdin="",
    )
    assert from_env.returncode == 0, from_env.stderr
    port = _free_port()
    process = subprocess.Popen(
        [SHOP, "serve", "--port", str(port), "--no-access-log"],
        cwd=workdir,
        env=_clean_env(workdir) | db,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        for email, password in [
            ("piped@example.com", "through-a-pipe-1"),  # without the newline
            ("scripted@example.com", "from-the-env-22"),
        ]:
            token = httpx.post(
                f"{base}/auth/token", json={"email": email, "password": password}
            ).json()["access_token"]
            me = httpx.get(f"{base}/customers/me", headers={"Authorization": f"Bearer {token}"})
            assert me.json()["role"] == "admin"
    finally:
        process.kill()
        process.wait(timeout=10)


def test_password_stdin_with_nothing_to_read_is_refused(workdir: Path) -> None:
    db = own_database(workdir)
    assert shop(workdir, "migrate", env=db).returncode == 0
    result = shop(
        workdir, "create-admin", "--email", "x@example.com", "--password-stdin", env=db, stdin=""
    )
    assert result.returncode != 0
    assert "standard input holds no password" in result.stderr


def test_password_and_password_stdin_exclude_each_other(workdir: Path) -> None:
    result = shop(
        workdir,
        "create-admin",
        "--email",
        "x@example.com",
        "--password",
        "a-long-passphrase",
        "--password-stdin",
        stdin="a-long-passphrase",
    )
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short", "at least 10 characters"),
        ("abababababab", "at least 4 different characters"),
        ("my-name-is-grace", "must not contain the email's name"),
        ("x" * 200, "at most 128 characters"),
    ],
)
def test_a_refused_admin_password_is_explained_with_the_rules(
    workdir: Path, password: str, problem: str
) -> None:
    db = own_database(workdir)
    assert shop(workdir, "migrate", env=db).returncode == 0
    result = shop(
        workdir,
        "create-admin",
        "--email",
        "grace@example.com",
        "--password-stdin",
        env=db,
        stdin=password,
    )
    assert result.returncode != 0
    assert problem in result.stderr
    assert "10 to 128 characters, at least 4 different ones" in result.stderr
    assert "Traceback" not in result.stderr
