"""The signals as a served shop gives them: /metrics sums every uvicorn worker, and each request
is one JSON log line carrying the id the client sees."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.e2e.test_shop_command import SHOP, _clean_env, _free_port, shop


def serve(workdir: Path, *args: str) -> tuple[str, subprocess.Popen[str]]:
    assert shop(workdir, "migrate").returncode == 0
    assert shop(workdir, "seed", "--products", "5", "--customers", "1").returncode == 0
    port = _free_port()
    process = subprocess.Popen(
        [SHOP, "serve", "--port", str(port), *args],
        cwd=workdir,
        env=_clean_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return base, process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the server did not start: {process.communicate()}")


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    return out, err


def test_metrics_count_the_requests_of_every_worker(tmp_path: Path) -> None:
    base, process = serve(tmp_path, "--workers", "2", "--no-access-log")
    try:
        for _ in range(30):
            # A new connection each time, so that both workers take some; a worker that only
            # reported its own figures would count about half.
            with httpx.Client(base_url=base, timeout=5) as http:
                assert http.get("/products/1").status_code == 200
        document = httpx.get(f"{base}/metrics", timeout=5).text
    finally:
        stop(process)
    counts = re.findall(
        r'^shop_request_duration_seconds_count\{[^}]*route="/products/\{product_id\}"'
        r'[^}]*status="200"[^}]*\} ([0-9.e+]+)$',
        document,
        flags=re.M,
    )
    assert sum(float(c) for c in counts) == 30


def test_each_request_is_one_json_line_with_the_id_the_client_saw(tmp_path: Path) -> None:
    base, process = serve(tmp_path)
    try:
        seen = httpx.get(f"{base}/products/2", headers={"X-Request-ID": "trace-42"}, timeout=5)
        made = httpx.get(f"{base}/products/999999", timeout=5)
    finally:
        out, _ = stop(process)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    by_id = {line["request_id"]: line for line in lines}
    assert by_id["trace-42"]["route"] == "/products/{product_id}"
    assert by_id["trace-42"]["status"] == seen.status_code == 200
    assert by_id["trace-42"]["ms"] > 0 and "db_ms" in by_id["trace-42"]
    assert by_id[made.headers["x-request-id"]]["status"] == 404


def test_behind_a_trusted_proxy_the_sign_in_limit_counts_the_real_client(tmp_path: Path) -> None:
    """Through a proxy every request comes from the proxy: the limit must count the address
    the proxy forwards, or one guesser would lock everybody out."""
    assert shop(tmp_path, "migrate").returncode == 0
    port = _free_port()
    process = subprocess.Popen(
        [SHOP, "serve", "--port", str(port), "--no-access-log"],
        cwd=tmp_path,
        env=_clean_env(tmp_path)
        | {"SHOP_SIGN_IN_FAILURES_PER_CLIENT": "2", "SHOP_FORWARDED_ALLOW_IPS": "127.0.0.0/8"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)

        def guess(client: str, number: int) -> int:
            return httpx.post(
                f"{base}/auth/token",
                json={"email": f"nobody{number}@example.com", "password": "wrong-guess-0"},
                headers={"X-Forwarded-For": client},
                timeout=10,
            ).status_code

        assert [guess("198.51.100.7", n) for n in range(3)] == [401, 401, 429]
        # Another client behind the same proxy is not locked out...
        assert guess("203.0.113.20", 9) == 401
        # ...and a forged entry before the real one does not move the count elsewhere.
        assert guess("203.0.113.99, 198.51.100.7", 10) == 429
    finally:
        stop(process)
