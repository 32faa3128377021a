"""What the shop's calls to outside systems cost: the time each request spends in the database
and the cache, and the gauges and counters of the pools, the cache and the replicas.

Time is summed per request in a context variable: the code that talks to the database or the
cache wraps each call in `timed("db")` / `timed("cache")` (or adds it with `add_time`), and the
web layer's `Observe` middleware (app/web/observability.py), which opens the sums for each
request, turns them into the `Server-Timing` header, the log line and the histograms. Outside a
request (the worker, the CLI) nothing is summed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

POOL = Gauge(
    "shop_db_pool_connections",
    "Connections of the database pools, by pool and state (size, in_use, waiting).",
    ["pool", "state"],
    multiprocess_mode="livesum",
)
POOL_WAIT = Gauge(
    "shop_db_pool_wait_seconds_total",
    "Seconds requests have waited for a free driver-pool connection since the process started.",
    ["pool"],
    multiprocess_mode="livesum",
)
CACHE = Counter("shop_cache_requests", "Cache look-ups, by result (hit, miss, error).", ["result"])
READS = Counter(
    "shop_db_reads", "Reads by the server that answered them (primary, replica-N).", ["target"]
)
REPLICA_SKIPS = Counter(
    "shop_db_replica_skips",
    "Reads that passed the replicas over, by reason (behind, unhealthy, down, busy).",
    ["reason"],
)


@dataclass(slots=True)
class Timings:
    """Seconds a request spent in each resource."""

    spent: dict[str, float] = field(default_factory=dict)


CURRENT_TIMINGS: ContextVar[Timings | None] = ContextVar("shop_timings", default=None)
"""The timings of the request being served, set by the web layer's `Observe` middleware
(app/web/observability.py); None outside a request."""


def add_time(resource: str, seconds: float) -> None:
    """Add `seconds` to the current request's `resource`, if there is a request."""
    timings = CURRENT_TIMINGS.get()
    if timings is not None:
        timings.spent[resource] = timings.spent.get(resource, 0.0) + seconds


@contextmanager
def timed(resource: str) -> Iterator[None]:
    """Add the time spent in the block to the current request's `resource` (db, cache)."""
    timings = CURRENT_TIMINGS.get()
    if timings is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        timings.spent[resource] = timings.spent.get(resource, 0.0) + elapsed


def sample_pools(pools: Mapping[str, Any]) -> None:
    """Record size, connections in use and waiting requests of each pool (SQLAlchemy's queue
    pools and psycopg's driver pools), by name."""
    for name, pool in pools.items():
        if hasattr(pool, "get_stats"):  # psycopg_pool
            stats = pool.get_stats()
            size = stats.get("pool_size", 0)
            in_use = size - stats.get("pool_available", 0)
            waiting = stats.get("requests_waiting", 0)
            POOL_WAIT.labels(name).set(stats.get("requests_wait_ms", 0) / 1000)
        else:  # a SQLAlchemy QueuePool
            in_use = pool.checkedout()
            size = pool.size() + max(pool.overflow(), 0)
            waiting = 0
        POOL.labels(name, "size").set(size)
        POOL.labels(name, "in_use").set(in_use)
        POOL.labels(name, "waiting").set(waiting)
