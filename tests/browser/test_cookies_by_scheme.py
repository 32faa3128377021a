"""Sign-in works on a production shop over plain HTTP, and its cookies are Secure over HTTPS.

A stage deployed without a domain serves plain HTTP: a `Secure` cookie would be dropped by the
browser, and nobody could sign in. Behind a TLS proxy the same shop must set `Secure`. The browser
reaches the shop by a public-looking host name (`shop.test`, mapped to 127.0.0.1 inside Chromium):
`localhost` and 127.0.0.1 are secure contexts, where Chromium keeps a Secure cookie even over
plain HTTP, and would hide the fault.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    CUSTOMER_EMAIL,
    CUSTOMER_PASSWORD,
    SHOP,
    _free_port,
    _run,
    stop,
)

HOST = "shop.test"


@dataclass(frozen=True)
class Entrances:
    plain: str
    https: str


def _wait_for(url: str, process: subprocess.Popen[str], log: Path) -> None:
    for _ in range(300):
        try:
            if httpx.get(url, timeout=1, verify=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"{process.args[0]} did not start: {log.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer: {log.read_text()}")


@pytest.fixture(scope="module")
def production_shop(
    fresh_database: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Entrances]:
    """`shop serve` with SHOP_ENV=production, reached directly over plain HTTP and through nginx
    terminating TLS (a self-signed certificate for shop.test) that says so in X-Forwarded-Proto."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("no nginx: `make test` installs Debian's nginx (scripts/system-packages.txt)")
    work = tmp_path_factory.mktemp("production-shop")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")} | {
        "SHOP_ENV": "production",
        "SHOP_DATABASE_URL": fresh_database(),
        "SHOP_DATABASE_POOL_SIZE": "2",
        "SHOP_JWT_SECRET": "production-cookie-test-" + "z" * 40,
        "SHOP_PASSWORD_TIME_COST": "1",
        "SHOP_PASSWORD_MEMORY_KIB": "1024",
        "SHOP_ASSETS_DIR": str(work / "assets"),
        "SHOP_FORWARDED_ALLOW_IPS": "127.0.0.1",
    }
    _run(env, "migrate")
    _run(env, "seed", "--products", "5", "--customers", "1")
    app_port, tls_port = _free_port(), _free_port()
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}"),
            *("-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")),
        ],
        check=True,
        capture_output=True,
    )
    (work / "nginx.conf").write_text(
        f"""daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        server_name {HOST};
        ssl_certificate {work}/cert.pem;
        ssl_certificate_key {work}/key.pem;
        location / {{
            proxy_pass http://127.0.0.1:{app_port};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
        }}
    }}
}}
"""
    )
    app_log, proxy_log = work / "serve.log", work / "nginx.log"
    with app_log.open("w") as app_out, proxy_log.open("w") as proxy_out:
        app = subprocess.Popen(
            [SHOP, "serve", "--host", "127.0.0.1", "--port", str(app_port), "--no-access-log"],
            cwd=work,
            env=env,
            stdout=app_out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        proxy = subprocess.Popen(
            [nginx, "-c", str(work / "nginx.conf"), "-p", str(work), "-e", str(proxy_log)],
            stdout=proxy_out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait_for(f"http://127.0.0.1:{app_port}/readyz", app, app_log)
            _wait_for(f"https://127.0.0.1:{tls_port}/readyz", proxy, proxy_log)
            yield Entrances(plain=f"http://{HOST}:{app_port}", https=f"https://{HOST}:{tls_port}")
        finally:
            stop(proxy)
            stop(app)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium that resolves shop.test to this machine (this module's own, in place of the
    conftest's: one Playwright at a time can run in a thread)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_FLAGS, f"--host-resolver-rules=MAP {HOST} 127.0.0.1"],
        )
        yield launched
        launched.close()


def _sign_in(browser: Any, base: str) -> tuple[Any, dict[str, Any]]:
    context = browser.new_context(ignore_https_errors=True, java_script_enabled=False)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(f"{base}/shop/sign-in")
    page.locator("#sign-in-email").fill(CUSTOMER_EMAIL)
    page.locator("#sign-in-password").fill(CUSTOMER_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    page.goto(f"{base}/shop/orders")
    expect(page).to_have_url(re.compile(r"/shop/orders$"))
    cookies = {cookie["name"]: cookie for cookie in context.cookies()}
    context.close()
    return page, cookies


def test_over_plain_http_a_production_shop_signs_in_with_cookies_the_browser_keeps(
    production_shop: Entrances, browser: Any
) -> None:
    _, cookies = _sign_in(browser, production_shop.plain)
    assert {"shop_session", "shop_csrf"} <= set(cookies)
    assert not any(cookie["secure"] for cookie in cookies.values())
    assert all(cookie["httpOnly"] and cookie["sameSite"] == "Lax" for cookie in cookies.values())


def test_over_https_behind_a_proxy_the_same_shop_sets_secure_cookies(
    production_shop: Entrances, browser: Any
) -> None:
    _, cookies = _sign_in(browser, production_shop.https)
    assert {"shop_session", "shop_csrf"} <= set(cookies)
    assert all(cookie["secure"] for cookie in cookies.values())
