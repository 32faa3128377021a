"""Schemathesis throws generated requests at every route of a real server on PostgreSQL:
whatever a client sends, no answer is a 500."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(
    fresh_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")} | {
        "SHOP_DATABASE_URL": fresh_database(),
        "SHOP_ASSETS_DIR": str(tmp_path_factory.mktemp("assets")),
        "SHOP_JWT_SECRET": "fuzz-" + "k" * 40,
        "SHOP_PASSWORD_TIME_COST": "1",
        "SHOP_PASSWORD_MEMORY_KIB": "1024",
    }
    cwd = tmp_path_factory.mktemp("fuzz")
    for args in (
        ["migrate"],
        ["seed", "--products", "50", "--customers", "2"],
        ["create-admin", "--email", "root@example.com", "--password", "fuzz-admin-pass-1"],
    ):
        subprocess.run(
            [str(BIN / "shop"), *args], env=env, cwd=cwd, check=True, capture_output=True
        )
    port = _free_port()
    process = subprocess.Popen(
        [str(BIN / "shop"), "serve", "--port", str(port), "--no-access-log"],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{base}/healthz", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    yield base
    process.terminate()
    process.wait(timeout=30)


def _token(base: str, email: str, password: str) -> str:
    response = httpx.post(f"{base}/auth/token", json={"email": email, "password": password})
    return str(response.json()["access_token"])


@pytest.mark.parametrize(
    ("email", "password"),
    [("root@example.com", "fuzz-admin-pass-1"), ("customer1@example.com", "demo-password-1")],
    ids=["as an admin", "as a customer"],
)
def test_no_generated_request_makes_the_server_answer_500(
    server: str, email: str, password: str, tmp_path: Path
) -> None:
    schemathesis = shutil.which("schemathesis", path=str(BIN))
    assert schemathesis, "schemathesis is a dev dependency (make install)"
    result = subprocess.run(
        [
            schemathesis,
            "run",
            f"{server}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--header",
            f"Authorization: Bearer {_token(server, email, password)}",
            "--seed",
            "20261127",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # schemathesis keeps a cache folder in its working directory
    )
    assert result.returncode == 0, result.stdout[-4000:]
