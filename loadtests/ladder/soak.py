"""A soak (`python -m loadtests.ladder --soak`, `make soak`): the fullest local stage under a
steady load of about 60 % of its knee for 30 minutes, with every minute the memory of every
process, the sizes of the tables that grow with traffic, the queue's depth and p95. After the
first five minutes none may grow by more than 10 % (the median of the last five minutes against
that of the five after the warm-up): a leak, a table the purge does not keep bounded, or a queue
the workers do not keep up with shows here, not after a week in production.

Memory is each process's anonymous resident memory (RssAnon: heap and stacks, what a leak
grows), not its proportional or resident size: those count PostgreSQL's shared buffers, which
fill up to their fixed size as the tables grow, and files mapped in. moto, the stand-in for SQS,
SES and DynamoDB, keeps everything it is sent: it is recorded, not judged.

The worker's retention is shortened for the soak to the least its settings allow
(SHOP_WORKER_RETENTION_H=0.1, six minutes; a purge every SOAK_PURGE_EVERY_S), so that the two
outbox tables reach their bound within the run: the report says so. Their bound is the order rate
times the retention, and the share of requests that are orders drifts over a soak as carts fill,
so each is judged per order placed in the window the purge keeps (`outbox_event per order
kept`), from the first minute that window is full; their row counts are recorded. Idempotency-Keys
are kept at least 24 hours (the API's promise), so that table grows through any soak shorter than
a day: it is recorded, not judged (tests/integration/test_outbox.py shows its purge).
"""

from __future__ import annotations

import json
import math
import statistics
import time
import uuid
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import psycopg

from loadtests.ladder.components import Topology
from loadtests.ladder.faults import (
    _sqs,
    open_stage,
    percentile,
    read_jsonl,
    start_locust,
    steady_users,
    stop_locust,
)
from loadtests.ladder.provenance import provenance
from loadtests.ladder.runner import say
from loadtests.ladder.stages import Stage

LOAD_SHARE = 0.6
WARMUP_MIN = 5
WINDOW_MIN = 5
"""Growth compares the median of the last WINDOW_MIN minutes with that of the first WINDOW_MIN
after the warm-up."""
GROWTH_LIMIT = 0.10
SOAK_RETENTION_H = "0.1"
"""The least SHOP_WORKER_RETENTION_H allows (app/kernel/settings.py: six minutes)."""
SOAK_PURGE_EVERY_S = "30"
KEPT_MIN = math.ceil(float(SOAK_RETENTION_H) * 60 + float(SOAK_PURGE_EVERY_S) / 60)
"""The minutes of orders whose events the purge keeps: the retention plus one purge interval
(7). A purged table is judged per order placed in the last KEPT_MIN minutes, from the first
minute after that window is full (minute KEPT_MIN + 1)."""
PURGED = ("outbox_event", "processed_event", "idempotency_key")
"""The tables the worker's purge keeps bounded; two of them within the soak (UNJUDGED)."""
BOUNDED = ("outbox_event", "processed_event")
"""The purged tables whose bound the soak reaches, judged per order kept."""
WARMUPS = {f"{table} per order kept": KEPT_MIN + 1 for table in BOUNDED}
"""The series whose warm-up is not WARMUP_MIN: the per-order ones start when their window is
full."""
TABLES = (*PURGED, "customer_order")
"""Every table sampled; orders grow by design."""
UNJUDGED = {
    "memory moto": "the stand-in for SQS, SES and DynamoDB keeps everything it is sent",
    "rows idempotency_key": "keys are kept at least 24 hours (SHOP_IDEMPOTENCY_TTL_H), the "
    "API's promise; the purge that bounds them is tested in tests/integration/test_outbox.py",
    **{
        f"rows {table}": f"its bound is the order rate times the retention, and the order "
        f"rate drifts: judged per order kept (`{table} per order kept`)"
        for table in BOUNDED
    },
}
"""Series recorded but not held to the bar, and why."""
P95_FLOOR_MS = 20.0
DEPTH_FLOOR = 10.0
"""Small absolute allowances: p95 and queue depth near zero jitter by more than 10 %."""


def memory_kib(pid: int) -> int:
    """Anonymous resident memory (RssAnon) of one process, in KiB; 0 once it has gone."""
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def memory_per_process(topology: Topology) -> dict[str, float]:
    """MiB per process (app-0, worker-1, redis, nginx...), with each one's children; the
    primary and the replica with all their server processes."""
    from loadtests.ladder.cgroups import descendants

    found: dict[str, float] = {}
    for process in topology.processes:
        if process.popen.poll() is None:
            pids = [process.pid, *descendants(process.pid)]
            found[process.name] = round(sum(memory_kib(p) for p in pids) / 1024, 1)
    for name, cluster in (("postgres", topology.primary), ("replica", topology.replica)):
        if cluster is not None:
            with suppress(OSError, ValueError):
                pid = topology.postmaster_pid(cluster)
                pids = [pid, *descendants(pid)]
                found[name] = round(sum(memory_kib(p) for p in pids) / 1024, 1)
    return found


def table_rows(topology: Topology) -> dict[str, int]:
    assert topology.primary is not None
    url = topology.primary.libpq_url(topology.database)
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        return {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
            for table in TABLES
        }


def growth(series: list[float], *, floor: float, warmup: int) -> float | None:
    """How much the series grew over the run: the median of its last WINDOW_MIN minutes
    against the median of the WINDOW_MIN minutes right after the warm-up, over the latter (at
    least `floor`). Medians, because p95 and the queue's depth jump from minute to minute with
    no trend; a leak or an unpurged table rises in both windows' difference all the same. None
    until both windows are there."""
    after = series[warmup:]
    if len(after) < WINDOW_MIN:
        return None
    base = statistics.median(after[:WINDOW_MIN])
    end = statistics.median(after[-WINDOW_MIN:])
    return round((end - base) / max(base, floor), 3)


def per_order_kept(minutes: list[dict[str, Any]], table: str) -> list[float]:
    """Rows of `table` per order placed in the last KEPT_MIN minutes, minute by minute; 0 until
    that window is full (the warm-up of these series)."""
    orders = [int(m["rows"].get("customer_order", 0)) for m in minutes]
    found = []
    for i, m in enumerate(minutes):
        placed = orders[i] - orders[i - KEPT_MIN] if i >= KEPT_MIN else 0
        found.append(round(int(m["rows"].get(table, 0)) / placed, 3) if placed > 0 else 0.0)
    return found


def verdict(minutes: list[dict[str, Any]]) -> tuple[dict[str, float | None], list[str]]:
    """Growth after the warm-up per series, and the series that grew past the limit."""
    series: dict[str, tuple[list[float], float]] = {}
    names = sorted({name for m in minutes for name in m["memory_mib"]})
    for name in names:
        series[f"memory {name}"] = ([m["memory_mib"].get(name, 0.0) for m in minutes], 1.0)
    for table in PURGED:
        series[f"rows {table}"] = ([float(m["rows"].get(table, 0)) for m in minutes], 100.0)
    for table in BOUNDED:
        series[f"{table} per order kept"] = (per_order_kept(minutes, table), 0.1)
    series["queue depth"] = ([float(m["queue_depth"] or 0) for m in minutes], DEPTH_FLOOR)
    series["p95"] = ([float(m["p95_ms"]) for m in minutes], P95_FLOOR_MS)
    grown = {
        name: growth(values, floor=floor, warmup=WARMUPS.get(name, WARMUP_MIN))
        for name, (values, floor) in series.items()
    }
    fails = [
        f"{name} grew {100 * g:.0f} %"
        for name, g in grown.items()
        if g is not None and g > GROWTH_LIMIT and name not in UNJUDGED
    ]
    return grown, fails


def run_soak(
    stage: Stage,
    out: Path,
    *,
    users: int | None = None,
    minutes: float = 30,
    enforce: bool = True,
    products: int = 1000,
) -> dict[str, Any]:
    count, load_from = steady_users(stage, users, LOAD_SHARE)
    run_id = f"soak-{stage.number}-{uuid.uuid4().hex[:8]}"
    samples: list[dict[str, Any]] = []
    source = provenance()
    with ExitStack() as stack:
        settings = {
            "SHOP_WORKER_RETENTION_H": SOAK_RETENTION_H,
            "SHOP_WORKER_PURGE_EVERY_S": SOAK_PURGE_EVERY_S,
        }
        h = open_stage(stage, stack, run_id, enforce=enforce, products=products, settings=settings)
        say(f"  soak: {load_from}, {minutes:.0f} min")
        process, journals = start_locust(h.topology, count, h.topology.folder / "soak")
        sqs = _sqs(h.topology) if h.topology.queue_url else None
        started = time.time()
        seen = 0
        try:
            for minute in range(1, int(minutes) + 1):
                time.sleep(max(0.0, started + 60 * minute - time.time()))
                lines = [x for x in read_jsonl(journals.requests) if isinstance(x, list)]
                recent = [x for x in lines[seen:] if x[0] >= started + 60 * (minute - 1)]
                seen = len(lines)
                depth = None
                if sqs is not None:
                    with suppress(Exception):
                        depth = int(
                            sqs.get_queue_attributes(
                                QueueUrl=h.topology.queue_url,
                                AttributeNames=["ApproximateNumberOfMessages"],
                            )["Attributes"]["ApproximateNumberOfMessages"]
                        )
                sample = {
                    "minute": minute,
                    "requests": len(recent),
                    "rps": round(len(recent) / 60, 1),
                    "failures": sum(1 for x in recent if x[4]),
                    "p95_ms": round(percentile([float(x[3]) for x in recent], 0.95), 1),
                    "memory_mib": memory_per_process(h.topology),
                    "rows": table_rows(h.topology),
                    "queue_depth": depth,
                }
                samples.append(sample)
                rows = " ".join(f"{k} {v}" for k, v in sample["rows"].items())
                mem = sum(sample["memory_mib"].values())
                say(
                    f"  soak minute {minute}: {sample['rps']} req/s p95 {sample['p95_ms']:.0f} ms"
                    f" {sample['failures']} failed; memory {mem:.0f} MiB; rows {rows};"
                    f" queue {depth}"
                )
        finally:
            stop_locust(process)
        invariants: dict[str, Any] = {"ok": False, "checks": {}}
        if journals.invariants.is_file():
            with suppress(json.JSONDecodeError):
                invariants = json.loads(journals.invariants.read_text())
        budgets_enforced = h.budgets.enforced
    grown, fails = verdict(samples)
    if not invariants.get("ok"):
        fails.append("invariants broken")
    result = {
        "kind": "soak",
        "stage": stage.number,
        "name": stage.name,
        "users": count,
        "load_from": load_from,
        "minutes": samples,
        "warmup_min": WARMUP_MIN,
        "warmups": WARMUPS,
        "window_min": WINDOW_MIN,
        "kept_min": KEPT_MIN,
        "per_order_kept": {table: per_order_kept(samples, table) for table in BOUNDED},
        "growth_limit": GROWTH_LIMIT,
        "growth": grown,
        "unjudged": UNJUDGED,
        "settings": settings,
        "invariants": invariants,
        "budgets_enforced": budgets_enforced,
        "fails": fails,
        "provenance": source,
    }
    say("  soak: " + ("PASS" if not fails else "FAIL: " + "; ".join(fails)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    return result
