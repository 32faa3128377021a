"""The Locust suite against a shop served on a fresh PostgreSQL database, run as a user runs it
(`locust --headless -f loadtests/locustfile.py`): no failures, the invariants hold, and the
step and invariant files have the shape the ladder and the report read."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_shop_command import _free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ADMIN_EMAIL = "restocker@example.com"
ADMIN_PASSWORD = "restock-the-shelves-7"
STEP_KEYS = {
    "step", "users", "started_at", "ended_at", "requests", "failures",
    "rps", "p50_ms", "p95_ms", "p99_ms", "by_name",
}  # fmt: skip


def _shop_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOP_", "LOCUST_"))}
    return env | {
        "SHOP_DATABASE_URL": database_url,
        "SHOP_JWT_SECRET": secrets.token_urlsafe(48),
        "SHOP_PASSWORD_TIME_COST": "1",
        "SHOP_PASSWORD_MEMORY_KIB": "1024",
        "SHOP_DATABASE_POOL_SIZE": "3",
        "SHOP_DATABASE_MAX_OVERFLOW": "2",
    }


@pytest.fixture(scope="module")
def served_shop(fresh_database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    env = _shop_env(fresh_database())
    tmp_path = tmp_path_factory.mktemp("served-shop")

    def shop(*args: str, stdin: str | None = None) -> None:
        done = subprocess.run(
            [str(BIN / "shop"), *args],
            cwd=tmp_path, env=env, input=stdin, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    shop("migrate")
    shop("seed", "--products", "60", "--customers", "1")
    shop("create-admin", "--email", ADMIN_EMAIL, "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    port = _free_port()
    server = subprocess.Popen(
        [str(BIN / "shop"), "serve", "--port", str(port), "--no-access-log"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("the shop did not start")
        yield base
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)


def locust(
    host: str, out: Path, *args: str, **knobs: str
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """Run the suite headless against `host` as a user would; its return, steps and invariants."""
    steps_out, invariants_out = out / "steps.jsonl", out / "invariants.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOP_", "LOCUST_"))} | {
        "SHOP_LOAD_ADMIN_EMAIL": ADMIN_EMAIL,
        "SHOP_LOAD_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "SHOP_LOAD_STEPS_OUT": str(steps_out),
        "SHOP_LOAD_INVARIANTS_OUT": str(invariants_out),
        "SHOP_LOAD_THINK_S": "0.2",
        **knobs,
    }
    run = subprocess.run(
        [str(BIN / "locust"), "--headless", "-f", "loadtests/locustfile.py",
         "--host", host, "--only-summary", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    return run, steps_out, invariants_out


def test_a_short_headless_run_fails_nothing_and_keeps_the_invariants(
    served_shop: str, tmp_path: Path
) -> None:
    run, steps_out, invariants_out = locust(served_shop, tmp_path, "-u", "5", "-r", "5", "-t", "8s")
    assert run.returncode == 0, run.stderr[-3000:]

    report = json.loads(invariants_out.read_text())
    assert report["ok"] is True, report
    assert set(report["checks"]) == {
        "stock_never_negative",
        "units_sold_equal_units_ordered",
        "trial_balance_balances",
        "no_order_without_lines",
    }
    assert all(set(check) == {"ok", "detail"} for check in report["checks"].values())

    lines = [json.loads(line) for line in steps_out.read_text().splitlines()]
    assert len(lines) == 1  # no shape: the whole run after its ramp is one step
    step = lines[0]
    assert set(step) == STEP_KEYS
    assert step["users"] == 5
    assert step["requests"] > 20 and step["failures"] == 0
    assert step["ended_at"] > step["started_at"]
    assert 0 < step["p50_ms"] <= step["p95_ms"] <= step["p99_ms"]
    assert "GET /products/[id]" in step["by_name"]  # grouped by route, not one row per id
    assert not any(
        name.startswith("GET /products/") and name[14:].isdigit() for name in step["by_name"]
    )
    assert all(set(v) == {"requests", "failures", "p95_ms"} for v in step["by_name"].values())


def test_a_distributed_step_run_measures_each_step_and_counts_every_workers_orders(
    served_shop: str, tmp_path: Path
) -> None:
    run, steps_out, invariants_out = locust(
        served_shop, tmp_path, "--processes", "2",
        SHOP_LOAD_SHAPE="step", SHOP_LOAD_STEP_USERS="3", SHOP_LOAD_STEP_S="7", SHOP_LOAD_STEPS="2",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(invariants_out.read_text())
    assert report["ok"] is True, report
    # The workers' orders reached the master: the units check had orders to count.
    assert "units ordered 0 " not in report["checks"]["units_sold_equal_units_ordered"]["detail"]
    lines = [json.loads(line) for line in steps_out.read_text().splitlines()]
    assert [(line["step"], line["users"]) for line in lines] == [(0, 3), (1, 6)]
    # Workers report to the master every 3 s: a window of 4 s measured holds at least one report.
    assert all(line["requests"] > 0 and line["failures"] == 0 for line in lines), lines


def test_the_invariants_can_be_checked_alone_against_a_served_shop(served_shop: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")} | {
        "SHOP_LOAD_ADMIN_EMAIL": ADMIN_EMAIL,
        "SHOP_LOAD_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loadtests.invariants", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    held = check("--host", served_shop)
    assert held.returncode == 0, held.stderr
    assert "ok   trial_balance_balances" in held.stdout
    assert "ok   stock_never_negative" in held.stdout
    assert held.stdout.strip().endswith("invariants hold")
    unreachable = check("--host", "http://127.0.0.1:9")
    assert unreachable.returncode == 2 and "cannot check the invariants" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_the_orders_mix_only_places_orders_and_keeps_the_invariants(
    served_shop: str, tmp_path: Path
) -> None:
    # Stage 7's write-heavy probe: buyers who only place orders, picking products uniformly;
    # the admin still restocks. No browsing, no carts.
    run, steps_out, invariants_out = locust(
        served_shop, tmp_path, "-u", "4", "-r", "4", "-t", "6s",
        SHOP_LOAD_MIX="orders", SHOP_LOAD_POPULARITY="uniform",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(invariants_out.read_text())["ok"] is True
    [step] = [json.loads(line) for line in steps_out.read_text().splitlines()]
    names = set(step["by_name"])
    assert "POST /orders" in names and step["by_name"]["POST /orders"]["requests"] > 5
    customer_only = {"GET /cart", "POST /cart/checkout", "GET /orders", "GET /products/[id]"}
    assert not names & customer_only, names
    assert all(name.startswith(("POST /orders", "POST /auth/", "GET /products")) for name in names)


def test_a_zipf_popularity_is_accepted_by_the_suite(served_shop: str, tmp_path: Path) -> None:
    run, steps_out, _ = locust(
        served_shop, tmp_path, "-u", "3", "-r", "3", "-t", "6s", SHOP_LOAD_POPULARITY="zipf:1.2"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    [step] = [json.loads(line) for line in steps_out.read_text().splitlines()]
    assert step["by_name"]["GET /products/[id]"]["requests"] > 0 and step["failures"] == 0


def test_a_bad_popularity_or_mix_stops_the_suite_with_one_line(
    served_shop: str, tmp_path: Path
) -> None:
    for knob, value in (("SHOP_LOAD_POPULARITY", "zipf:x"), ("SHOP_LOAD_MIX", "writes")):
        run, _, _ = locust(served_shop, tmp_path, "-u", "1", "-t", "2s", **{knob: value})
        assert run.returncode != 0
        assert f"{knob}={value!r}" in run.stderr and "Traceback" not in run.stderr
