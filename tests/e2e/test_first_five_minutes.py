"""The docs' "First five minutes" (docs/getting-started.md) works as written: its shell lines run
with the real curl, through bash, against a shop started as `make run` starts it, on its own
embedded database."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOP = str(Path(sys.executable).parent / "shop")
README_BASE = "http://127.0.0.1:8000"


def first_five_minutes() -> str:
    """The shell blocks of the section, in order, as one script."""
    readme = (ROOT / "docs" / "getting-started.md").read_text()
    section = readme.split("\n## First five minutes\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert blocks, "the section shows its commands in ```sh blocks"
    return "\n".join(blocks)


def outputs(stdout: str) -> list[Any]:
    """The JSON documents curl printed one after the other."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(stdout):
        if stdout[at].isspace():
            at += 1
            continue
        document, at = decoder.raw_decode(stdout, at)
        found.append(document)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def shop_as_make_run_starts_it(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("first-five-minutes")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")} | {
        "SHOP_SQLITE_PATH": str(workdir / "shop.db"),
        "SHOP_PASSWORD_TIME_COST": "1",
        "SHOP_PASSWORD_MEMORY_KIB": "1024",
    }
    for args in (["migrate"], ["seed", "--products", "1000", "--customers", "20"]):
        done = subprocess.run(
            [SHOP, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
    port = _free_port()
    process = subprocess.Popen(
        [SHOP, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the shop did not start")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_readme(base: str) -> list[Any]:
    script = first_five_minutes().replace(README_BASE, base)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{done.stderr}\n{script}"
    return outputs(done.stdout)


def test_every_call_fails_loudly_and_needs_nothing_beyond_curl_and_python() -> None:
    script = first_five_minutes()
    calls = re.findall(r"curl\s+(\S+)", script)
    assert len(calls) >= 6
    assert all(flags.startswith("-") and "f" in flags for flags in calls), calls
    assert "jq" not in script.split()
    assert README_BASE in script


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's lines need curl")
def test_the_readme_signs_in_lists_products_places_an_order_and_sees_it(
    shop_as_make_run_starts_it: str,
) -> None:
    products, order, orders, shipment = run_readme(shop_as_make_run_starts_it)
    assert products["items"], "the lamp search finds products"
    assert order["status"] == "placed"
    assert len(order["lines"]) == 1 and order["lines"][0]["quantity"] == 1
    assert [o["id"] for o in orders["items"]] == [order["id"]]
    assert shipment["order_id"] == order["id"]
    assert shipment["status"] == "pending"

    # Pasting the lines again replays the order (same Idempotency-Key): still one order.
    _, again, orders_again, _ = run_readme(shop_as_make_run_starts_it)
    assert again == order
    assert [o["id"] for o in orders_again["items"]] == [order["id"]]


def test_the_shop_make_run_starts_opens_on_the_storefront(shop_as_make_run_starts_it: str) -> None:
    home = httpx.get(shop_as_make_run_starts_it + "/", timeout=10)
    assert home.status_code == 200
    assert home.headers["content-type"].startswith("text/html")
    assert "Featured products" in home.text and 'href="/shop/products/' in home.text
    # A product page answers from the embedded database, its image from the app's static files.
    product = re.search(r'href="(/shop/products/\d+)"', home.text)
    image = re.search(r'<img src="(/static/[^"]+)"', home.text)
    assert product is not None and image is not None
    assert httpx.get(shop_as_make_run_starts_it + product.group(1), timeout=10).status_code == 200
    assert httpx.get(shop_as_make_run_starts_it + image.group(1), timeout=10).status_code == 200
    assert httpx.get(shop_as_make_run_starts_it + "/docs", timeout=10).status_code == 200
