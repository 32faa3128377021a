"""Traces (OpenTelemetry), exported over OTLP/HTTP when SHOP_OTLP_ENDPOINT is set.

The rest of the shop knows only this module's small vocabulary:

- `Tracing`, made by `tracing_for(settings, service)` (None when tracing is off), applied to the
  FastAPI app when it is made, started before any connection is opened (a connection opened
  earlier makes no SQL spans) and stopped after they are closed;
- `span(name)`, a child of the current span (the worker's steps);
- `continue_trace(name, carrier)`, a span in the trace a message carries (the worker's message,
  the relay's publish), whatever the current context;
- `carrier()`, the current trace context as W3C `traceparent`/`tracestate` strings, for a
  message's attributes; `quiet()`, no spans from the instrumentations in a block (the polling
  loops, which would otherwise start a trace every few seconds); `current_trace_id()` and the
  `TraceIds` log filter; `record_failure(error)` for a failure that is handled.

Off (the default), none of the SDK is imported, no instrumentation is applied, no exporter
thread runs, and every helper returns at its first line: `span` hands back one shared no-op
context manager, `carrier` an empty dict.

On, one process has at most one running `Tracing` (the helpers use the last one started). Its
tracer provider is its own, passed to each instrumentation, never installed as OpenTelemetry's
global one: a process (a test) may start and stop tracing more than once. Sampling is
parent-based with a trace-id ratio at the root, so a worker keeps or drops a message's spans as
the request that placed the order did.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from app.core.settings import Settings

WEB_SERVICE = "shop-web"
WORKER_SERVICE = "shop-worker"
UNTRACED_PATHS = ("healthz", "readyz", "metrics")

log = logging.getLogger("shop.tracing")

_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()
_tracer: Tracer | None = None
"""The running tracer of this process; None while tracing is off."""


class Tracing:
    """The tracing of one process (`shop-web` or `shop-worker`): a tracer provider sampling a
    ratio of new traces and following the caller's decision otherwise, a batch exporter to
    `endpoint`/v1/traces started by `start`, and the instrumentations of psycopg, redis and
    botocore applied by `start` and removed by `stop`."""

    def __init__(self, *, endpoint: str, service: str, sample_ratio: float) -> None:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        self.endpoint = endpoint.rstrip("/") + "/v1/traces"
        self.service = service
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: service}),
            sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        )
        self._instrumentors: list[Any] = []
        self._log_handlers: list[logging.Handler] = []
        self._started = False

    def instrument_app(self, app: FastAPI) -> None:
        """Give every request a server span named by its route (`POST /orders`), except the
        health checks and /metrics; before the app serves (its middleware stack is built on
        the first call)."""
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.metrics import NoOpMeterProvider

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.provider,
            meter_provider=NoOpMeterProvider(),  # the shop's metrics are Prometheus'
            exclude_spans=["receive", "send"],  # one span per ASGI message is noise
            # A load balancer's health checks and the metrics scrapes are no one's request:
            # traced, they would be most of the traces recorded.
            excluded_urls=",".join(f"/{path}$" for path in UNTRACED_PATHS),
        )

    def start(self) -> None:
        """Start the exporter thread and instrument the libraries; before any connection."""
        global _tracer
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=self.endpoint, timeout=5))
        )
        # psycopg carries every statement on PostgreSQL (SQLAlchemy's, the pipelined `run`,
        # the fast read path), so its spans are the SQL spans; the embedded SQLite has none.
        botocore = BotocoreInstrumentor()  # type: ignore[no-untyped-call]
        for instrumentor in (PsycopgInstrumentor(), RedisInstrumentor(), botocore):
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(tracer_provider=self.provider)
                self._instrumentors.append(instrumentor)
        _tracer = self.provider.get_tracer("shop")
        # Log lines written inside a recorded trace name it: the handlers of the root logger
        # (the worker's) and of the shop's own (the server's, set up by `shop serve`).
        self._log_handlers = [
            handler
            for logger in (logging.getLogger(), logging.getLogger("shop"))
            for handler in logger.handlers
        ]
        for handler in self._log_handlers:
            handler.addFilter(_TRACE_IDS)
        self._started = True
        log.info("tracing: %s exports to %s", self.service, self.endpoint)

    def stop(self) -> None:
        """Remove the instrumentations, export what is left (a few seconds at most) and stop
        the exporter thread."""
        global _tracer
        if not self._started:
            return
        _tracer = None
        for handler in self._log_handlers:
            handler.removeFilter(_TRACE_IDS)
        self._log_handlers = []
        for instrumentor in self._instrumentors:
            instrumentor.uninstrument()
        self._instrumentors = []
        self.provider.shutdown()
        self._started = False


def tracing_for(settings: Settings, *, service: str) -> Tracing | None:
    """The process's tracing, or None when no OTLP endpoint is set (tracing off)."""
    if not settings.otlp_endpoint:
        return None
    return Tracing(
        endpoint=settings.otlp_endpoint, service=service, sample_ratio=settings.trace_sample_ratio
    )


def span(name: str, **attributes: str | int | float | bool) -> AbstractContextManager[Any]:
    """A span named `name`, child of the current one: `with span("worker.fulfil"): ...`.
    With tracing off, a shared no-op context manager."""
    if _tracer is None:
        return _NOTHING
    return _tracer.start_as_current_span(name, attributes=attributes or None)


@contextmanager
def continue_trace(
    name: str, carrier: Mapping[str, str], *, kind: str = "internal", **attributes: str | int
) -> Iterator[None]:
    """A span in the trace that `carrier` (W3C trace context) names, or the root of a new one
    when it names none; whatever the current context is, `quiet()` included. `kind` is
    "consumer" or "producer" for the two ends of a queue."""
    if _tracer is None:
        yield
        return
    from opentelemetry import context, trace
    from opentelemetry.propagate import extract

    token = context.attach(extract(carrier, context=context.Context()))
    try:
        with _tracer.start_as_current_span(
            name, kind=trace.SpanKind[kind.upper()], attributes=attributes or None
        ):
            yield
    finally:
        context.detach(token)


def record_failure(error: BaseException) -> None:
    """Mark the current span failed with `error` (for a failure that is handled, so that it
    does not leave the span by itself)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    current.record_exception(error)
    current.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def carrier() -> dict[str, str]:
    """The current trace context as message attributes (`traceparent`, `tracestate`); empty
    with tracing off or outside any span."""
    if _tracer is None:
        return {}
    from opentelemetry.propagate import inject

    found: dict[str, str] = {}
    inject(found)
    return found


def quiet() -> AbstractContextManager[Any]:
    """No spans from the instrumentations in this block, nor in the tasks it starts (they
    inherit its context): background polling that would start a trace every few seconds.
    `continue_trace` and `span` still record."""
    if _tracer is None:
        return _NOTHING
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


def current_trace_id() -> str | None:
    """The hex trace id of the current span when its trace is recorded (sampled), or None:
    tracing off, not sampled, no span. The span may have ended already (a request's span
    ends with the response's last byte, before the access log line is written)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    found = trace.get_current_span().get_span_context()
    if not (found.is_valid and found.trace_flags.sampled):
        return None
    return format(found.trace_id, "032x")


class TraceIds(logging.Filter):
    """Appends ` trace_id=<hex>` to each record logged inside a span of a recorded trace (set
    on a handler, it sees every logger's records); changes nothing with tracing off, nor the
    access log's JSON lines, which carry the trace id as a field of their own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "shop.access":
            return True
        trace_id = current_trace_id()
        if trace_id is not None and not getattr(record, "trace_id", None):
            record.msg = f"{record.getMessage()} trace_id={trace_id}"
            record.args = None
            record.trace_id = trace_id
        return True


_TRACE_IDS = TraceIds()
