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
global one: a process (a test) may start and stop tracing more than once.

It sits with the adapters, the exporter and the instrumentations of psycopg, redis and botocore
being what it is mostly about, though `instrument_app` and `SampleAtTheDoor` wrap the web app:
they share this module's sampling state (the running tracer, its ratio, the key of an admitted
root) with `continue_trace`, and FastAPI is imported for type checking only.

Sampling is decided once, at the door, before any instrumentation runs: a request by
`SampleAtTheDoor` (the caller's `traceparent` flag when it sends one, else the ratio), a message
or a sweep by `continue_trace` (its carrier's flag, else the ratio). What is not sampled runs
with every instrumentation suppressed under a non-recording span whose context still travels
(`traceparent` flag 00), so a worker drops a message's spans as the request that placed the
order did, and an unsampled request costs a context switch, not a span per SQL statement. What
is admitted carries a context value the tracer provider's sampler records at the root; any
other root (a statement at start-up, say) is sampled by the ratio as before, and a child
follows its parent.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from app.kernel.settings import Settings

WEB_SERVICE = "shop-web"
WORKER_SERVICE = "shop-worker"
UNTRACED_PATHS = ("healthz", "readyz", "metrics")

log = logging.getLogger("shop.tracing")

_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()
_tracer: Tracer | None = None
"""The running tracer of this process; None while tracing is off."""
_ratio = 1.0
"""The running tracing's share of new traces recorded."""
_admitted: Any = None
"""The context key of a root admitted at the door (made with the first Tracing)."""


class Tracing:
    """The tracing of one process (`shop-web` or `shop-worker`): a tracer provider sampling a
    ratio of new traces and following the caller's decision otherwise, a batch exporter to
    `endpoint`/v1/traces started by `start`, and the instrumentations of psycopg, redis and
    botocore applied by `start` and removed by `stop`."""

    def __init__(self, *, endpoint: str, service: str, sample_ratio: float) -> None:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased

        self.endpoint = endpoint.rstrip("/") + "/v1/traces"
        self.service = service
        self.sample_ratio = sample_ratio
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: service}),
            sampler=ParentBased(_door_sampler(sample_ratio)),
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
        # Outside the instrumentation's own middleware, so that an unsampled request never
        # reaches it (FastAPIInstrumentor wraps the stack the same way, on the first call).
        instrumented = app.build_middleware_stack

        def build_middleware_stack() -> Any:
            return SampleAtTheDoor(instrumented())

        app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]

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
        global _ratio
        _tracer = self.provider.get_tracer("shop")
        _ratio = self.sample_ratio
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
        global _tracer, _ratio
        if not self._started:
            return
        _tracer, _ratio = None, 1.0
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
    With tracing off, or inside a trace that is not sampled, a shared no-op context manager."""
    if _tracer is None or _unsampled_here():
        return _NOTHING
    return _tracer.start_as_current_span(name, attributes=attributes or None)


def _door_sampler(ratio: float) -> Any:
    """The root sampler: a root admitted at the door is recorded; any other root is sampled by
    `ratio` on its trace id."""
    global _admitted
    from opentelemetry import context
    from opentelemetry.sdk.trace.sampling import (
        Decision,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )

    if _admitted is None:
        _admitted = context.create_key("shop-admitted-at-the-door")
    by_ratio = TraceIdRatioBased(ratio)

    class AtTheDoor(Sampler):
        def should_sample(self, parent_context: Any, *args: Any, **kwargs: Any) -> Any:
            if parent_context is not None and context.get_value(_admitted, parent_context):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, kwargs.get("attributes"))
            return by_ratio.should_sample(parent_context, *args, **kwargs)

        def get_description(self) -> str:
            return f"AtTheDoor{{{by_ratio.get_description()}}}"

    return AtTheDoor()


@contextmanager
def _admit() -> Iterator[None]:
    """Run a block whose root span the sampler records (the door said yes)."""
    from opentelemetry import context

    token = context.attach(context.set_value(_admitted, True))
    try:
        yield
    finally:
        context.detach(token)


def _unsampled_here() -> bool:
    from opentelemetry import trace

    found = trace.get_current_span().get_span_context()
    return found.is_valid and not found.trace_flags.sampled


def _sampled(traceparent: str | None) -> bool:
    """The caller's decision when `traceparent` is a W3C trace context, else the ratio's."""
    if traceparent:
        parts = traceparent.strip().split("-")
        if len(parts) >= 4 and len(parts[3]) == 2:
            try:
                return bool(int(parts[3], 16) & 1)
            except ValueError:
                pass
    return _ratio >= 1.0 or random.random() < _ratio


@contextmanager
def _not_sampled(carrier: Mapping[str, str] | None = None) -> Iterator[None]:
    """Run a block that is not sampled: every instrumentation suppressed, under a
    non-recording span of the caller's trace (`carrier`) or of a new one, whose context is
    what `carrier()` sends on (flag 00)."""
    from opentelemetry import context, trace
    from opentelemetry.instrumentation.utils import (
        suppress_http_instrumentation,
        suppress_instrumentation,
    )
    from opentelemetry.propagate import extract

    parent = extract(carrier, context=context.Context()) if carrier else context.Context()
    found = trace.get_current_span(parent).get_span_context()
    if not found.is_valid:
        generator = random.getrandbits
        found = trace.SpanContext(
            trace_id=generator(128) or 1,
            span_id=generator(64) or 1,
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
        )
    token = context.attach(trace.set_span_in_context(trace.NonRecordingSpan(found)))
    try:
        with suppress_instrumentation(), suppress_http_instrumentation():
            yield
    finally:
        context.detach(token)


class SampleAtTheDoor:
    """ASGI middleware, outside OpenTelemetry's: decides whether a request is traced before
    any instrumentation sees it. A request that is not runs with them all suppressed."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or _tracer is None:
            await self.app(scope, receive, send)
            return
        parent = next((v for k, v in scope.get("headers", ()) if k == b"traceparent"), None)
        if _sampled(parent.decode("latin-1") if parent else None):
            with _admit():
                await self.app(scope, receive, send)
            return
        with _not_sampled({"traceparent": parent.decode("latin-1")} if parent else None):
            await self.app(scope, receive, send)


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
    if not _sampled(carrier.get("traceparent")):
        with _not_sampled(carrier):
            yield
        return
    from opentelemetry import context, trace
    from opentelemetry.propagate import extract

    found = extract(carrier, context=context.Context())
    if not carrier.get("traceparent"):  # a root, admitted by the draw above
        found = context.set_value(_admitted, True, found)
    token = context.attach(found)
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
