"""What a load test reads from the shop: Prometheus metrics, a Server-Timing header and one JSON
log line per request, all keyed by the route template and a request id (and, when the request's
trace is recorded, its trace id: app/adapters/tracing.py).

Time spent in the database and in the cache is summed per request in a context variable: the
code that talks to them wraps each call in `timed("db")` / `timed("cache")` (in
app/adapters/observability.py, beside the gauges and counters of the pools, the cache and the
replicas), and the middleware turns the sums into the `Server-Timing` header (`app`, `db`,
`cache`), the log line and the histograms. With several uvicorn workers, Prometheus'
multiprocess mode aggregates every worker's figures (`shop serve` sets PROMETHEUS_MULTIPROC_DIR
to a fresh folder).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
import uuid

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.adapters.observability import CURRENT_TIMINGS, Timings
from app.adapters.tracing import current_trace_id

log = logging.getLogger("shop.access")

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Histogram(
    "shop_request_duration_seconds",
    "Time to answer a request, by route template, method and status.",
    ["route", "method", "status"],
    buckets=_BUCKETS,
)
IN_FLIGHT = Gauge(
    "shop_requests_in_flight",
    "Requests being answered now.",
    multiprocess_mode="livesum",
)
DB_TIME = Histogram(
    "shop_request_db_seconds",
    "Time a request spent waiting on the database, by route template.",
    ["route"],
    buckets=_BUCKETS,
)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class _RequestIds:
    """New request ids: 32 hex digits, a random half for the process and a counter, unique
    across processes (forked ones draw a new half) without a uuid4 per request, whose random
    bytes and UUID object cost more than a product read's own Python in `make bench`."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = uuid.uuid4().hex[:16]
        self.count = itertools.count()

    def new(self) -> str:
        return f"{self.prefix}{next(self.count) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


_REQUEST_IDS = _RequestIds()


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-ID when it is a sane token, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
            break
    return _REQUEST_IDS.new()


class Observe:
    """ASGI middleware: request id, Server-Timing, one JSON log line, request metrics."""

    def __init__(self, app: ASGIApp, *, metrics: bool = True, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        timings = Timings()
        token = CURRENT_TIMINGS.set(timings)
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                total_ms = (time.perf_counter() - started) * 1000
                parts = [f"app;dur={total_ms:.1f}"]
                parts += [f"{name};dur={s * 1000:.1f}" for name, s in timings.spent.items()]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                    (b"server-timing", ", ".join(parts).encode()),
                ]
            await send(message)

        if self.metrics:
            IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            CURRENT_TIMINGS.reset(token)
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            if self.metrics:
                IN_FLIGHT.dec()
                REQUESTS.labels(route, scope["method"], str(status)).observe(elapsed)
                DB_TIME.labels(route).observe(timings.spent.get("db", 0.0))
            if self.access_log and log.isEnabledFor(logging.INFO):
                line: dict[str, object] = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    **{f"{k}_ms": round(v * 1000, 2) for k, v in timings.spent.items()},
                }
                # Inside the request's span (the tracing middleware is outermost): the line
                # names the trace that shows this request, when it is recorded.
                trace_id = current_trace_id()
                if trace_id is not None:
                    line["trace_id"] = trace_id
                log.info(json.dumps(line))


def _route_template(scope: Scope) -> str:
    """`/products/{product_id}`, not `/products/42`: one series per route, not per id."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def metrics_document() -> tuple[bytes, str]:
    """The Prometheus exposition of this process, or of every worker in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
