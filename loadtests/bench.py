"""`make bench`: requests/s of the shop's hot routes beside a bare FastAPI route, one worker.

Both servers run the same way (one uvicorn worker, uvloop + httptools, no access log, pinned to
CPU 0) and wrk drives them from CPU 1, so the figures that matter are the ratios to the bare
route measured in the same run; absolute numbers move with the machine. Each route gets a
discarded warm-up, then `--rounds` measured runs interleaved with the bare route; medians count.

Needs the local PostgreSQL (SHOP_BENCH_PG, default postgresql://postgres@127.0.0.1:5432/postgres)
and wrk (installed with apt-get when missing and running as root).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG = os.environ.get("SHOP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "shop_bench"
TARGETS = {"product by id": 0.25, "product list (20)": None, "place order": 0.05}


@dataclass
class Route:
    name: str
    script: str


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing wrk (apt-get)")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
        if not shutil.which("wrk"):
            subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False)
    found = shutil.which("wrk")
    if not found:
        sys.exit(
            "bench: wrk is needed (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_database(products: int) -> str:
    base = PG.rsplit("/", 1)[0]
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    url = f"{base}/{DATABASE}".replace("postgresql://", "postgresql+psycopg://", 1)
    env = shop_env(url)
    for args in (
        ["migrate"],
        ["seed", "--products", str(products), "--customers", "1"],
    ):
        subprocess.run([str(BIN / "shop"), *args], env=env, check=True, cwd=ROOT)
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        # Plenty of stock everywhere, so that every order in the run succeeds.
        conn.execute("UPDATE stock_level SET quantity = 100000000")
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return url


def shop_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env.update(
        SHOP_DATABASE_URL=url,
        SHOP_ENV="local",
        SHOP_JWT_SECRET="bench-only-" + secrets.token_hex(24),
        SHOP_DATABASE_POOL_SIZE="20",
        SHOP_PASSWORD_TIME_COST="1",
    )
    return env


def start(app: str, port: int, env: dict[str, str], *, factory: bool) -> subprocess.Popen[bytes]:
    command = [
        "taskset",
        "-c",
        "0",
        str(BIN / "uvicorn"),
        app,
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if factory:
        command.append("--factory")
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    sys.exit(f"bench: {app} did not start")


def wrk(binary: str, url: str, script: Path, seconds: int, connections: int) -> tuple[float, int]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            binary,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    if errors:
        say(f"  {errors.group(0)}")
    return rps, int(bad.group(1)) if bad else 0


def scripts(folder: Path, token: str, products: int) -> dict[str, Path]:
    texts = {
        "bare": 'request = function() return wrk.format("GET", "/bare") end',
        "product by id": (
            "math.randomseed(1)\n"
            "request = function()\n"
            f'  return wrk.format("GET", "/products/" .. math.random(1, {products}))\n'
            "end"
        ),
        "product list (20)": (
            "math.randomseed(2)\n"
            'request = function() return wrk.format("GET", "/products?limit=20&offset=" .. '
            "20 * math.random(0, 49)) end"
        ),
        "place order": (
            "math.randomseed(3)\n"
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {token}"\n'
            "request = function()\n"
            f"  local id = math.random(1, {products})\n"
            '  local body = \'{"lines":[{"product_id":\' .. id .. \',"quantity":1}]}\'\n'
            '  return wrk.format("POST", "/orders", nil, body)\n'
            "end"
        ),
    }
    paths = {}
    for name, text in texts.items():
        path = folder / (re.sub(r"\W+", "_", name) + ".lua")
        path.write_text(text + "\n")
        paths[name] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="length of each measured run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench.json")
    args = parser.parse_args()

    binary = ensure_wrk()
    say(f"preparing database {DATABASE} with {args.products} products")
    url = prepare_database(args.products)
    env = shop_env(url)
    shop_port, bare_port = free_port(), free_port()
    shop = start("app.main:create_app", shop_port, env, factory=True)
    bare = start("loadtests.bare:app", bare_port, env, factory=False)
    try:
        token = httpx.post(
            f"http://127.0.0.1:{shop_port}/auth/token",
            json={"email": "customer1@example.com", "password": "demo-password-1"},
        ).json()["access_token"]
        with tempfile.TemporaryDirectory() as tmp:
            paths = scripts(Path(tmp), token, args.products)
            targets = {"bare": f"http://127.0.0.1:{bare_port}"} | {
                name: f"http://127.0.0.1:{shop_port}" for name in TARGETS
            }
            results: dict[str, list[float]] = {name: [] for name in targets}
            failures: dict[str, int] = dict.fromkeys(targets, 0)
            total = len(targets) * (args.rounds + 1)
            done = 0
            for round_ in range(args.rounds + 1):
                for name, base in targets.items():
                    rps, bad = wrk(
                        binary,
                        base,
                        paths[name],
                        2 if round_ == 0 else args.seconds,
                        args.connections,
                    )
                    done += 1
                    label = "warm-up" if round_ == 0 else f"round {round_}"
                    say(
                        f"[{done}/{total}] {label:8} {name:18} {rps:9.0f} req/s"
                        + (f"  ({bad} non-2xx)" if bad else "")
                    )
                    if round_:
                        results[name].append(rps)
                        failures[name] += bad
    finally:
        shop.terminate()
        bare.terminate()
        shop.wait()
        bare.wait()

    bare_rps = statistics.median(results["bare"])
    report = {
        "command": "make bench",
        "seconds": args.seconds,
        "rounds": args.rounds,
        "connections": args.connections,
        "routes": {},
    }
    print()
    print(f"{'route':20} {'req/s (median)':>15} {'ratio to bare':>14} {'target':>8}  verdict")
    print(f"{'bare FastAPI':20} {bare_rps:15.0f} {'1.00':>14}")
    ok = True
    for name, target in TARGETS.items():
        rps = statistics.median(results[name])
        ratio = rps / bare_rps
        passed = (target is None or ratio >= target) and failures[name] == 0
        ok &= passed
        verdict = (
            "ok"
            if passed
            else "BELOW TARGET"
            if failures[name] == 0
            else f"{failures[name]} errors"
        )
        target_text = f">= {target:.2f}" if target else "-"
        print(f"{name:20} {rps:15.0f} {ratio:14.2f} {target_text:>8}  {verdict}")
        report["routes"][name] = {
            "rps": rps,
            "ratio": ratio,
            "target": target,
            "non_2xx": failures[name],
        }  # type: ignore[index]
    report["bare_rps"] = bare_rps
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nfigures written to {args.out.relative_to(ROOT)}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
