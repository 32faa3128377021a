"""Browser fixtures: a served shop on a fresh PostgreSQL database, and Debian's headless Chromium
driven by Playwright (its driver ships in the wheel; no browser is downloaded).

Every test leaves a screenshot of the page it ended on, and the journeys one per step, under
test-artifacts/screenshots/ (ignored by git)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
SHOP = str(Path(sys.executable).parent / "shop")
CHROMIUM = os.environ.get("SHOP_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_EMAIL = "boss@example.com"
ADMIN_PASSWORD = "chief-passphrase-1"
CUSTOMER_EMAIL = "customer1@example.com"
CUSTOMER_PASSWORD = "demo-password-1"


@dataclass(frozen=True)
class Shop:
    base: str
    env: dict[str, str]

    def url(self, path: str) -> str:
        return self.base + path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    done = subprocess.run(
        [SHOP, *args], env=env, input=stdin, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"shop {' '.join(args)}: {done.stderr}"


@pytest.fixture(scope="session")
def served_shop(fresh_database: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """`shop serve` on a fresh PostgreSQL database, migrated and seeded with the demo data, and
    an admin account; as an operator would start it (no Redis: the pages need none)."""
    workdir = tmp_path_factory.mktemp("browser-shop")
    database_url = fresh_database()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")} | {
        "SHOP_ENV": "test",
        "SHOP_DATABASE_URL": database_url,
        "SHOP_DATABASE_POOL_SIZE": "3",
        "SHOP_DATABASE_MAX_OVERFLOW": "2",
        "SHOP_JWT_SECRET": "browser-test-secret-" + "y" * 40,
        "SHOP_PASSWORD_TIME_COST": "1",
        "SHOP_PASSWORD_MEMORY_KIB": "1024",
        "SHOP_ASSETS_DIR": str(workdir / "assets"),
    }
    _run(env, "migrate")
    _run(env, "seed", "--products", "40", "--customers", "2")
    _run(env, "create-admin", "--email", ADMIN_EMAIL, "--password-stdin", stdin=ADMIN_PASSWORD)
    port = _free_port()
    log = workdir / "serve.log"  # a file, not a pipe: nobody reads a pipe while tests run
    process = subprocess.Popen(
        [SHOP, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        cwd=workdir,
        env=env,
        stdout=(out := log.open("w")),
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"the shop did not start: {log.read_text()}")
        time.sleep(0.1)
    else:
        process.kill()
        process.wait()
        raise AssertionError(f"the shop did not answer: {log.read_text()}")
    try:
        yield Shop(base=base, env=env)
    finally:
        stop(process)
        out.close()


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM, as an operator stops a server; SIGKILL if it has not exited in 30 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module. Not for the session: while Playwright's sync API is open it
    keeps an event loop running in this thread, and the async tests that follow could not run."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium "
            "(scripts/system-packages.txt); set SHOP_TEST_CHROMIUM to use another"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class Screenshots:
    """Saves numbered screenshots of one test: test-artifacts/screenshots/<test>/<n>-<step>.png."""

    def __init__(self, page: Any, test_name: str) -> None:
        self.page = page
        self.folder = SCREENSHOTS / _slug(test_name)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.count = 0

    def __call__(self, step: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{_slug(step)}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser profile (no cookies) with JavaScript off: the pages must work without it."""
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(autouse=True)
def shot(page: Any, request: pytest.FixtureRequest) -> Iterator[Screenshots]:
    """Screenshots of the test's steps; the page it ends on is saved too, pass or fail."""
    shots = Screenshots(page, request.node.name)
    yield shots
    shots("end")
