"""Traces end to end: a real OTLP/HTTP receiver (an HTTP server in the test that decodes the
collector protocol's ExportTraceServiceRequest), moto's SQS and SES, the real PostgreSQL and
Redis, the app in this process and `shop worker` in another. One placed order is one trace, from
`POST /orders` through the relay's publish to the worker's handling; with tracing off, nothing
of OpenTelemetry runs at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import REDIS_URL, test_settings
from tests.e2e.test_worker import (  # noqa: F401  (fixtures)
    REGION,
    SENDER,
    _env,
    _free_port,
    _queue,
    _scalar,
    _wait,
    _worker,
    database,
    moto_endpoint,
)
from tests.integration.conftest import make_product, make_user

CONSUMER = 5  # opentelemetry.proto's Span.SpanKind.SPAN_KIND_CONSUMER
PRODUCER = 4
SERVER = 2
STATUS_ERROR = 2


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    status: int
    attributes: dict[str, Any] = field(hash=False)


class OtlpReceiver:
    """What a collector's OTLP/HTTP receiver does for traces: POST /v1/traces with a protobuf
    ExportTraceServiceRequest, answered by an ExportTraceServiceResponse."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                assert self.headers["Content-Type"] == "application/x-protobuf"
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.take(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", _free_port()), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._lock = threading.Lock()

    def take(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value for a in resource_spans.resource.attributes}
                service = resource["service.name"].string_value
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            ReceivedSpan(
                                service=service,
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                kind=span.kind,
                                status=span.status.code,
                                attributes={
                                    a.key: getattr(a.value, a.value.WhichOneof("value"))
                                    for a in span.attributes
                                },
                            )
                        )

    def in_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    found = OtlpReceiver()
    thread = threading.Thread(target=found.server.serve_forever, daemon=True)
    thread.start()
    yield found
    found.server.shutdown()
    found.server.server_close()


def _exporter_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("OtelBatch")]


async def _place_order(
    settings: Any, *, then_list_with: dict[str, str] | None = None
) -> tuple[int, list[str]]:
    """One order through the app with these settings (then, if asked, the product listing with
    these headers); its id and the exporter threads seen while the app ran."""
    import httpx
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30):
        resources = app.state.resources
        product = await make_product(resources, initial_stock=10)
        buyer = await make_user(resources)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            answer = await client.post(
                "/orders",
                headers=buyer.headers,
                json={"lines": [{"product_id": product.id, "quantity": 1}]},
            )
            if then_list_with is not None:
                listed = await client.get("/products", headers=then_list_with)
                assert listed.status_code == 200
        assert answer.status_code == 201, answer.text
        await resources.relay.flush()
        threads = _exporter_threads()
    return int(answer.json()["id"]), threads


def _descends_from(span: ReceivedSpan, ancestor: ReceivedSpan, spans: list[ReceivedSpan]) -> bool:
    by_id = {s.span_id: s for s in spans}
    current: ReceivedSpan | None = span
    while current is not None:
        if current.parent_id == ancestor.span_id:
            return True
        current = by_id.get(current.parent_id)
    return False


def test_one_order_is_one_trace_from_the_request_through_the_queue_to_the_worker(
    database: str,  # noqa: F811 (the fixtures of test_worker.py)
    moto_endpoint: str,  # noqa: F811
    receiver: OtlpReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue_url, _ = _queue(moto_endpoint)
    boto3.client("ses", region_name=REGION, endpoint_url=moto_endpoint).verify_email_identity(
        EmailAddress=SENDER
    )
    settings = test_settings(
        database_url=database,
        redis_url=REDIS_URL,
        queue_url=queue_url,
        mail_sender=SENDER,
        aws_region=REGION,
        aws_endpoint_url=moto_endpoint,
        otlp_endpoint=receiver.endpoint,
        trace_sample_ratio=1.0,
    )
    with caplog.at_level(logging.INFO, logger="shop.access"):
        order_id, threads_while_serving = asyncio.run(_place_order(settings))
    assert threads_while_serving, "an exporter thread runs while tracing is on"
    assert _exporter_threads() == [], "and stops with the app"

    # The app's spans were exported when it stopped: the request and what it caused here.
    [request] = [s for s in receiver.spans if s.name == "POST /orders"]
    assert (request.service, request.kind) == ("shop-web", SERVER)
    trace_id = request.trace_id
    web = receiver.in_trace(trace_id)
    sql = [s for s in web if s.attributes.get("db.system") == "postgresql"]
    assert any("customer_order" in str(s.attributes.get("db.statement")) for s in sql)
    assert all(_descends_from(s, request, web) for s in sql)
    [publish] = [s for s in web if s.name == "outbox.publish"]
    assert (publish.service, publish.kind) == ("shop-web", PRODUCER)
    assert _descends_from(publish, request, web)  # the relay's task, in the request's trace
    assert any(s.name == "SQS.SendMessageBatch" and _descends_from(s, publish, web) for s in web)
    # The access log line names the trace.
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "shop.access"]
    assert [line["trace_id"] for line in lines if line["route"] == "/orders"] == [trace_id]

    # A message that carries a trace and fails: its warning names that trace.
    poisoned_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    boto3.client("sqs", region_name=REGION, endpoint_url=moto_endpoint).send_message(
        QueueUrl=queue_url,
        MessageBody=json.dumps(
            {"id": "6f0c3f7e-3d39-4f0e-9a51-0c6f4bd2a3c1", "kind": "unknown", "payload": {}}
        ),
        MessageAttributes={
            "traceparent": {
                "DataType": "String",
                "StringValue": f"00-{poisoned_trace}-00f067aa0ba902b7-01",
            }
        },
    )

    env = _env(database, moto_endpoint, queue_url, 0)
    env.update(SHOP_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="200")
    worker = _worker(env)
    libpq = database.replace("postgresql+psycopg://", "postgresql://")
    try:
        _wait(
            lambda: (
                _scalar(libpq, f"SELECT fulfilled_at FROM customer_order WHERE id = {order_id}")
                is not None
            ),
            60,
            "the worker to fulfil the order",
        )
        _wait(
            lambda: any(s.service == "shop-worker" for s in receiver.in_trace(poisoned_trace)),
            30,
            "the failed message's span",
        )
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    output = worker.stdout.read() if worker.stdout else ""

    # The worker, another process, continued the request's trace.
    spans = receiver.in_trace(trace_id)
    worker_spans = [s for s in spans if s.service == "shop-worker"]
    [handle] = [s for s in worker_spans if s.name == "worker.handle"]
    assert (handle.kind, handle.parent_id) == (CONSUMER, request.span_id)
    worker_sql = [s for s in worker_spans if s.attributes.get("db.system") == "postgresql"]
    assert any("processed_event" in str(s.attributes.get("db.statement")) for s in worker_sql)
    assert any("ledger_entry" in str(s.attributes.get("db.statement")) for s in worker_sql)
    steps = {s.name: s for s in worker_spans if s.name.startswith("order.")}
    assert {"order.fulfil", "order.mail"} <= set(steps)
    assert any(
        s.name.startswith("SES.") and _descends_from(s, steps["order.mail"], spans)
        for s in worker_spans
    )
    assert all(_descends_from(s, handle, spans) for s in worker_spans if s is not handle)
    # Polling (receives, deletes, purges) makes no trace of its own.
    assert not [s for s in receiver.spans if s.name == "SQS.ReceiveMessage"]

    [failed] = [s for s in receiver.in_trace(poisoned_trace) if s.name == "worker.handle"]
    assert failed.status == STATUS_ERROR
    assert f"trace_id={poisoned_trace}" in output, output


OFF_PROBE = """
import asyncio, json, sys, threading
import httpx
from asgi_lifespan import LifespanManager
from app.main import create_app

async def main():
    app = create_app()
    async with LifespanManager(app, startup_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:
            statuses = [(await c.get(path)).status_code for path in ("/products", "/readyz")]
        print(json.dumps({
            "statuses": statuses,
            "threads": [t.name for t in threading.enumerate()],
            # redis and FastAPI import parts of OpenTelemetry themselves when it is installed;
            # the tracer provider, the exporter and the instrumentations are the shop's.
            "loaded": sorted(m for m in sys.modules if m.startswith((
                "opentelemetry.sdk.trace",
                "opentelemetry.exporter",
                "opentelemetry.instrumentation",
            ))),
            "middleware": [type(m).__name__ for m in [app.middleware_stack]],
        }))

asyncio.run(main())
"""


def test_with_tracing_off_no_span_is_made_and_no_exporter_thread_runs(
    database: str,  # noqa: F811 (the fixtures of test_worker.py)
    moto_endpoint: str,  # noqa: F811
    receiver: OtlpReceiver,
) -> None:
    queue_url, _ = _queue(moto_endpoint)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOP_", "OTEL_"))}
    env.update(
        SHOP_ENV="test",
        SHOP_JWT_SECRET="test-secret-" + "x" * 40,
        SHOP_DATABASE_URL=database,
        SHOP_REDIS_URL=REDIS_URL,
        SHOP_QUEUE_URL=queue_url,
        SHOP_AWS_REGION=REGION,
        SHOP_AWS_ENDPOINT_URL=moto_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    ran = subprocess.run(
        [sys.executable, "-c", OFF_PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    probe = json.loads(ran.stdout.strip().splitlines()[-1])
    assert probe["statuses"] == [200, 200]
    assert not [t for t in probe["threads"] if t.startswith("OtelBatch")]
    assert probe["loaded"] == []
    assert probe["middleware"] == ["ServerErrorMiddleware"]  # no tracing middleware outside it
    assert receiver.requests == 0

    # The same settings with the receiver's address: the probe's requests arrive as spans.
    env["SHOP_OTLP_ENDPOINT"] = receiver.endpoint
    ran = subprocess.run(
        [sys.executable, "-c", OFF_PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    probe = json.loads(ran.stdout.strip().splitlines()[-1])
    assert [t for t in probe["threads"] if t.startswith("OtelBatch")]
    names = {s.name for s in receiver.spans}
    assert "GET /products" in names
    assert "GET /readyz" not in names  # health checks are not traced


async def _sweep_then_reconcile(settings: Any, endpoint: str, aws_endpoint: str) -> None:
    """Two orders whose events the relay left behind (both swept, neither handled), then a
    worker's reconciliation, traced as `shop-worker`."""
    from datetime import timedelta

    import httpx
    from asgi_lifespan import LifespanManager
    from sqlalchemy import text

    from app.adapters.mail import mailer_for
    from app.adapters.queue import Queue
    from app.adapters.tracing import WORKER_SERVICE, Tracing
    from app.main import create_app
    from app.worker import Retention, Worker, open_database

    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30):
        resources = app.state.resources
        product = await make_product(resources, initial_stock=10)
        buyer = await make_user(resources)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            for _ in range(2):
                answer = await client.post(
                    "/orders",
                    headers=buyer.headers,
                    json={"lines": [{"product_id": product.id, "quantity": 1}]},
                )
                assert answer.status_code == 201, answer.text
        await resources.relay.flush()
        async with resources.db.write() as conn:  # as if the relay had died before sending
            await conn.execute(
                text(
                    "UPDATE outbox_event SET published_at = NULL, "
                    "created_at = created_at - interval '1 hour'"
                )
            )
        assert await resources.relay.sweep() == 2

    tracing = Tracing(endpoint=endpoint, service=WORKER_SERVICE, sample_ratio=1.0)
    tracing.start()
    db = await open_database(settings)
    try:
        worker = Worker(
            db,
            Queue(settings.queue_url, region=REGION, endpoint_url=aws_endpoint),
            mailer_for(settings),
            retention=Retention(
                keep_events=timedelta(days=15),
                keep_keys=timedelta(hours=24),
                redrive_after=timedelta(minutes=15),
            ),
        )
        assert await worker.reconcile() == 2
    finally:
        await db.dispose()
        tracing.stop()


def _traced(
    db_url: str, aws_endpoint: str, receiver: OtlpReceiver, *, ratio: float
) -> tuple[str, Any]:
    """A fresh queue, and the settings of an app that uses it and traces `ratio` of requests."""
    queue_url, _ = _queue(aws_endpoint)
    return queue_url, test_settings(
        database_url=db_url,
        redis_url=REDIS_URL,
        queue_url=queue_url,
        aws_region=REGION,
        aws_endpoint_url=aws_endpoint,
        otlp_endpoint=receiver.endpoint,
        trace_sample_ratio=ratio,
    )


def test_a_sweep_and_a_reconciliation_are_traces_of_their_own(
    database: str,  # noqa: F811 (the fixtures of test_worker.py)
    moto_endpoint: str,  # noqa: F811
    receiver: OtlpReceiver,
) -> None:
    queue_url, settings = _traced(database, moto_endpoint, receiver, ratio=1.0)
    asyncio.run(_sweep_then_reconcile(settings, receiver.endpoint, moto_endpoint))

    # The sweep's messages carry the sweep's trace: the requests' are not kept in the table.
    [sweep] = [s for s in receiver.spans if s.name == "outbox.sweep"]
    assert (sweep.service, sweep.kind, sweep.parent_id) == ("shop-web", PRODUCER, "")
    swept = receiver.in_trace(sweep.trace_id)
    assert any(s.name == "SQS.SendMessageBatch" and _descends_from(s, sweep, swept) for s in swept)
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto_endpoint)
    carried = []
    while batch := sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages", []):
        carried += [m["MessageAttributes"]["traceparent"]["StringValue"] for m in batch]
    assert len(carried) == 4  # each order twice: published by the relay, then by the sweep
    assert sum(sweep.trace_id in traceparent for traceparent in carried) == 2

    # Reconciliation: one trace in shop-worker, a redrive per event, each with the order's steps.
    [reconcile] = [s for s in receiver.spans if s.name == "worker.reconcile"]
    assert (reconcile.service, reconcile.parent_id) == ("shop-worker", "")
    spans = receiver.in_trace(reconcile.trace_id)
    redrives = [s for s in spans if s.name == "worker.redrive"]
    assert len(redrives) == 2
    for redrive in redrives:
        assert redrive.parent_id == reconcile.span_id
        assert any(s.name == "order.fulfil" and _descends_from(s, redrive, spans) for s in spans)


def test_an_unsampled_request_records_nothing_and_its_message_says_so_while_a_caller_decides(
    database: str,  # noqa: F811 (the fixtures of test_worker.py)
    moto_endpoint: str,  # noqa: F811
    receiver: OtlpReceiver,
) -> None:
    """Sampling is decided at the door: at a ratio of 0 an order makes no span at all (no
    request span, no SQL span, no publish span), and the message it sends carries its trace
    context with the not-sampled flag, so a worker drops it too; a caller that sends a sampled
    `traceparent` is traced whatever the ratio, as its child."""
    queue_url, settings = _traced(database, moto_endpoint, receiver, ratio=0.0)
    caller_trace, caller_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    caller = {"traceparent": f"00-{caller_trace}-{caller_span}-01"}
    asyncio.run(_place_order(settings, then_list_with=caller))

    assert {s.trace_id for s in receiver.spans} == {caller_trace}, [s.name for s in receiver.spans]
    [listing] = [s for s in receiver.spans if s.name == "GET /products"]
    assert (listing.parent_id, listing.kind) == (caller_span, SERVER)
    assert any(s.attributes.get("db.system") == "postgresql" for s in receiver.spans)

    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto_endpoint)
    [message] = sqs.receive_message(
        QueueUrl=queue_url, MessageAttributeNames=["All"], WaitTimeSeconds=1
    )["Messages"]
    traceparent = message["MessageAttributes"]["traceparent"]["StringValue"]
    version, trace_id, _, flags = traceparent.split("-")
    assert (version, flags) == ("00", "00") and trace_id != caller_trace
