"""The measurement docs/stage-8.md rests on, run as its page says (a few orders, not 400): it
prints PostgreSQL's CPU per order for every order path, and the queued one costs more."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "write_demand.py"


def test_the_write_primarys_demand_is_measured_for_every_order_path() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--orders", "60", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = dict(
        re.findall(r"(in-request|queued): PostgreSQL ([\d.]+) ms CPU per order", done.stdout)
    )
    assert set(found) == {"in-request", "queued"}, done.stdout
    assert 0 < float(found["in-request"]) < float(found["queued"]), done.stdout
    # Stage 8's federation: each of its three databases measured apart.
    [federated] = re.findall(
        r"federated: main database ([\d.]+) ms CPU per order .*; accounting database ([\d.]+) ms"
        r" .*; delivery database ([\d.]+) ms",
        done.stdout,
    )
    assert all(float(figure) > 0 for figure in federated), done.stdout
    # And with two order shards, each counted apart too.
    [sharded] = re.findall(
        r"sharded: main database ([\d.]+) ms .*; shard1 database ([\d.]+) ms"
        r" .*; shard2 database ([\d.]+) ms",
        done.stdout,
    )
    assert all(float(figure) > 0 for figure in sharded), done.stdout


def test_a_bad_count_is_one_clear_line() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--orders", "0"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "--orders and --repeats must be at least 1" in done.stderr
