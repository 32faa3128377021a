"""The shop's Locust suite: visitors, customers and an admin, in the talk's mix of about 70 %
reads and 30 % writes, with the shop's invariants checked at the end of every run.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000              # web UI
    locust -f loadtests/locustfile.py --headless --host URL -u 50 -r 10 -t 2m
    SHOP_LOAD_SHAPE=step locust -f loadtests/locustfile.py --headless --host URL --processes 2

Knobs (environment): `SHOP_LOAD_SHAPE` (step, daily, spike; unset: -u/-r/-t), the shapes' own
knobs (loadtests/shapes.py), `SHOP_LOAD_THINK_S` (mean think time, default 1.0),
`SHOP_LOAD_POPULARITY` (which products are picked: the default skew, `uniform` or `zipf:S`),
`SHOP_LOAD_MIX` (unset: the talk's mix; `orders`: buyers who only place orders),
`SHOP_LOAD_ADMIN_EMAIL`/`SHOP_LOAD_ADMIN_PASSWORD` (the admin who restocks and checks the
invariants), `SHOP_LOAD_P95_MS` (the latency objective, default 500), `SHOP_LOAD_SETTLE_S` (how
long the closing stock check waits for work the run left in flight, default 12), and the outputs
`SHOP_LOAD_STEPS_OUT` (one JSON line per measured step) and `SHOP_LOAD_INVARIANTS_OUT`; for the
fault runs (loadtests/ladder/faults.py), `SHOP_LOAD_REQUESTS_OUT` (one JSON line per request:
start, name, status, milliseconds, error kind, Retry-After) and `SHOP_LOAD_ACKED_OUT` (one JSON
line per order answered 201: its id and Idempotency-Key).
A violated invariant makes Locust exit with code 1. The catalog must be seeded beforehand.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import locust  # noqa: F401 - before requests: importing Locust monkey-patches ssl, first
import requests
from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests import analysis, invariants, shapes

log = logging.getLogger("shop.load")

try:
    THINK_S = shapes._env_number("SHOP_LOAD_THINK_S", 1.0, minimum=0.0)
    P95_OBJECTIVE_MS = shapes._env_number("SHOP_LOAD_P95_MS", 500.0, minimum=1.0)
    SETTLE_S = shapes._env_number("SHOP_LOAD_SETTLE_S", 12.0, minimum=0.0)
    POPULARITY = shapes.popularity(os.environ.get("SHOP_LOAD_POPULARITY"))
    MIX = shapes.mix(os.environ.get("SHOP_LOAD_MIX"))
    _shape_class = shapes.chosen(os.environ.get("SHOP_LOAD_SHAPE"))
    if _shape_class is not None:
        _shape_class()  # its knobs checked now, with this message, not in Locust's loader
except ValueError as exc:
    raise SystemExit(f"loadtests/locustfile.py: {exc}") from None
ADMIN_EMAIL = os.environ.get("SHOP_LOAD_ADMIN_EMAIL") or None
ADMIN_PASSWORD = os.environ.get("SHOP_LOAD_ADMIN_PASSWORD") or None
STEPS_OUT = os.environ.get("SHOP_LOAD_STEPS_OUT") or None
INVARIANTS_OUT = os.environ.get("SHOP_LOAD_INVARIANTS_OUT") or None
REQUESTS_OUT = os.environ.get("SHOP_LOAD_REQUESTS_OUT") or None
ACKED_OUT = os.environ.get("SHOP_LOAD_ACKED_OUT") or None
CUSTOMER_PASSWORD = "load-test-customer-1"  # accounts made by the run itself, on a test shop
SEARCH_WORDS = ("lamp", "oak", "steel", "desk", "mug", "chair", "blue", "linen", "lite", "pro")
LOW_STOCK = 10
RESTOCK_UNITS = 500
RESTOCKS_PER_VISIT = 5
"""At most this many restocks per look at a page: each one retires the catalog cache (stage 5)."""
ASSET_LINK = re.compile(r"""(?:href|src)=["']([^"']*/static/[^"'?#]+)""")

if _shape_class is not None:
    # The one LoadTestShape subclass Locust finds here: the one SHOP_LOAD_SHAPE names.
    ChosenShape = shapes.locust_shape(_shape_class)


class Catalog:
    """What this process knows of the catalog: product ids, hot ones first, and whether the
    server-rendered storefront answers. Read once per test at its start."""

    product_ids: list[int] = []  # noqa: RUF012 - process-wide, filled at test start
    zipf_weights: list[float] = []  # noqa: RUF012 - cumulative, filled at test start
    storefront = False

    @classmethod
    def load(cls, host: str) -> None:
        ids: list[int] = []
        offset: int | None = 0
        with requests.Session() as http:
            while offset is not None and len(ids) < 5000:
                page = http.get(f"{host}/products?limit=100&offset={offset}", timeout=15).json()
                ids.extend(int(p["id"]) for p in page["items"])
                offset = page.get("next_offset")
            try:
                home = http.get(f"{host}/", timeout=15)
                cls.storefront = home.status_code == 200 and home.headers.get(
                    "content-type", ""
                ).startswith("text/html")
            except requests.RequestException:
                cls.storefront = False
        if not ids:
            raise RuntimeError(f"{host} has no products: seed it first (shop seed --products N)")
        cls.product_ids = ids
        if POPULARITY.kind == "zipf":
            cls.zipf_weights = POPULARITY.cumulative_weights(len(ids))

    @classmethod
    def pick(cls) -> int:
        """A product id, by `SHOP_LOAD_POPULARITY`. The default, a shop's skew: half the picks
        among the 20 best sellers, 30 % among the rest of the hottest fifth of the catalog,
        20 % anywhere (hot, repeated reads are what a cache is for); `uniform`: any product
        alike; `zipf:S`: the product of rank k with a weight of 1/k^S (the catalog's order is
        its rank)."""
        ids = cls.product_ids
        if POPULARITY.kind == "uniform":
            return random.choice(ids)
        if POPULARITY.kind == "zipf":
            return random.choices(ids, cum_weights=cls.zipf_weights)[0]
        draw = random.random()
        if draw < 0.5:
            return random.choice(ids[: min(20, len(ids))])
        if draw < 0.8:
            return random.choice(ids[: max(1, len(ids) // 5)])
        return random.choice(ids)


TALLY = invariants.Tally()
"""The orders this process placed and the units it restocked, for the invariant checks."""


@dataclass(frozen=True)
class Replay:
    """An order request sent but not answered yet: what sends it again, retry-safely."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]


RESTOCKING: set[gevent.Greenlet] = set()
"""Restocks in flight, each in its own greenlet; test stop waits for them before the tally."""

PENDING: dict[str, Replay] = {}
"""Order requests in flight. A user stopped at the end of a run can leave one that the shop
completes after the user has gone: at test stop it is sent again (the same Idempotency-Key or
cart version), which answers the order the first one made, or makes it now, so that the tally
knows every order of the run."""


def replay_pending(host: str, *, deadline_s: float = 15.0) -> None:
    """Send every pending order request again until it has a final answer; tally the orders."""
    deadline = time.monotonic() + deadline_s
    with requests.Session() as http:
        for key, replay in list(PENDING.items()):
            while True:
                try:
                    answer = http.post(
                        host + replay.path, json=replay.body, headers=replay.headers, timeout=15
                    )
                except requests.RequestException as exc:
                    log.error("replaying %s failed: %s", replay.path, exc)
                    break
                if answer.status_code == 201:
                    TALLY.orders.add(int(answer.json()["id"]))
                    _acknowledged(int(answer.json()["id"]), replay.headers)
                in_progress = answer.status_code == 409 and "in progress" in answer.text
                if not in_progress or time.monotonic() > deadline:
                    break
                gevent.sleep(0.2)
            PENDING.pop(key, None)


class Journal:
    """The fault runs' record (off unless SHOP_LOAD_REQUESTS_OUT or SHOP_LOAD_ACKED_OUT is
    set): every request, and every order the suite saw acknowledged, one JSON line each."""

    request_log = Path(REQUESTS_OUT).open("a", encoding="utf-8") if REQUESTS_OUT else None  # noqa: SIM115
    acked_log = Path(ACKED_OUT).open("a", encoding="utf-8") if ACKED_OUT else None  # noqa: SIM115


def _acknowledged(order_id: int, headers: dict[str, str]) -> None:
    if Journal.acked_log is not None:
        key = headers.get("Idempotency-Key")
        Journal.acked_log.write(json.dumps({"order": order_id, "key": key}) + "\n")
        Journal.acked_log.flush()


if Journal.request_log is not None:

    @events.request.add_listener
    def _journal_request(
        name: str,
        response_time: float,
        response: Any,
        exception: BaseException | None,
        start_time: float | None = None,
        **_: Any,
    ) -> None:
        status = int(getattr(response, "status_code", 0) or 0)
        kind = ""
        if exception is not None and not status:
            # A failure marked by the suite ("no answer: ConnectionRefusedError") says its cause.
            kind = str(exception) if str(exception).startswith("no answer") else ""
            kind = kind or type(exception).__name__
        headers = getattr(response, "headers", None) or {}
        retry_after = bool(status and headers.get("Retry-After"))
        line = [round(start_time or time.time(), 3), name, status, round(response_time, 1)]
        line += [exception is not None, kind, retry_after]
        assert Journal.request_log is not None
        Journal.request_log.write(json.dumps(line) + "\n")


def _think() -> Any:
    return between(0.5 * THINK_S, 1.5 * THINK_S)


def _expect(response: Any, ok: tuple[int, ...], expected: tuple[int, ...] = ()) -> bool:
    """Mark a catch_response answer: `ok` and `expected` statuses are successes (expected
    ones, such as 409 out of stock, are documented answers of a busy shop), anything else a
    failure. True when the status is one of `ok`."""
    if response.status_code in ok:
        response.success()
        return True
    if response.status_code in expected:
        response.success()
        return False
    response.failure(_reason(response))
    return False


_TITLE = re.compile(r"<title>\s*([^<]{0,80})", re.I)


def _reason(response: Any) -> str:
    """A failure's status and a short reason, so that Locust groups alike failures in one row
    of its error report (an nginx 502 page or a JSON `detail`, not a whole body)."""
    if not response.status_code and getattr(response, "error", None) is not None:
        return f"no answer: {type(response.error).__name__}"  # refused, reset, timed out
    text = response.text or ""
    reason = ""
    try:
        detail = json.loads(text).get("detail") if text.lstrip().startswith("{") else None
    except ValueError:
        detail = None
    if isinstance(detail, str):
        reason = detail
    elif (title := _TITLE.search(text)) is not None:
        reason = title.group(1)
    else:
        reason = " ".join(text.split())
    return f"{response.status_code}: {reason[:80]}" if reason else str(response.status_code)


class Visitor(FastHttpUser):
    """Browses, searches and opens products without signing in; loads the storefront's pages
    and their static files when the shop has a storefront."""

    weight = 2
    abstract = MIX == "orders"
    wait_time = _think()

    def on_start(self) -> None:
        self.assets_seen: set[str] = set()

    @task(3)
    def browse(self) -> None:
        # Most visitors look at the first page; some page on.
        pages = max(1, len(Catalog.product_ids) // 20)
        offset = 0 if random.random() < 0.6 else 20 * random.randrange(pages)
        self.client.get(f"/products?limit=20&offset={offset}", name="/products")

    @task(2)
    def search(self) -> None:
        self.client.get(f"/products?q={random.choice(SEARCH_WORDS)}&limit=20", name="/products?q")

    @task(4)
    def open_product(self) -> None:
        self.client.get(f"/products/{Catalog.pick()}", name="/products/[id]")

    @task(3)
    def storefront(self) -> None:
        if not Catalog.storefront:
            self.open_product()
            return
        page = random.choice(("home", "catalog", "product"))
        if page == "home":
            path, name = "/", "/ (storefront)"
        elif page == "catalog":
            path, name = f"/shop/products?q={random.choice(SEARCH_WORDS)}", "/shop/products?q"
        else:
            path, name = f"/shop/products/{Catalog.pick()}", "/shop/products/[id]"
        with self.client.get(path, name=name, catch_response=True) as response:
            if not _expect(response, (200,)):
                return
            html = response.text or ""
        for link in ASSET_LINK.findall(html):
            if link in self.assets_seen:
                continue  # a browser keeps it in its cache
            self.assets_seen.add(link)
            if link.startswith(("http://", "https://")):
                # On the assets host (a CDN): outside this host's figures, but still loaded.
                self.client.get(link, name="static (assets host)")
            else:
                self.client.get(link, name="/static/[file]")


class Shopper(FastHttpUser):
    """What a customer and a buyer share: an account of its own, signed in, and placing an
    order (counted for the invariants, sent again at test stop if unanswered)."""

    abstract = True
    wait_time = _think()

    def on_start(self) -> None:
        self.orders: list[int] = []
        self.email = f"load-{uuid.uuid4().hex}@example.com"
        self.registered = self.signed_in = False
        self._sign_in()

    def _sign_in(self) -> bool:
        """Sign up (once) and in; True when signed in. A customer whose sign-in failed tries
        again at its next task instead of sending requests bound to answer 401."""
        if self.signed_in:
            return True
        if not self.registered:
            with self.client.post(
                "/auth/sign-up",
                json={"email": self.email, "password": CUSTOMER_PASSWORD, "full_name": "Load Test"},
                catch_response=True,
            ) as response:
                # 409: an earlier attempt whose answer was lost made the account after all.
                _expect(response, (201,), (409,))
                self.registered = response.status_code in (201, 409)
            if not self.registered:
                return False
        with self.client.post(
            "/auth/token",
            json={"email": self.email, "password": CUSTOMER_PASSWORD},
            catch_response=True,
        ) as response:
            if _expect(response, (200,)):
                # FastHttpSession sends it with every request of this user.
                self.client.auth_header = f"Bearer {response.json()['access_token']}"
                self.signed_in = True
        return self.signed_in

    def _lines(self) -> list[dict[str, int]]:
        products = {Catalog.pick() for _ in range(random.choice((1, 1, 2, 3)))}
        return [{"product_id": pid, "quantity": random.choice((1, 1, 2))} for pid in products]

    def _order(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        """Place an order (POST /orders or a cart checkout); 409 (out of stock, or the cart
        changed since it was read) is an expected answer. Pending until answered."""
        key = uuid.uuid4().hex
        auth = {"Authorization": self.client.auth_header or ""}
        PENDING[key] = Replay(path, body, {**headers, **auth})
        with self.client.post(path, json=body, headers=headers, catch_response=True) as response:
            placed = _expect(response, (201,), (409,))
        # Not reached when the user is stopped mid-request: the request stays pending. It stays
        # pending too when its answer was lost (an app process stopped by a scale-in under the
        # balancer): the order may exist all the same.
        if invariants.outcome_known(response.status_code):
            del PENDING[key]
        if placed:
            order_id = int(response.json()["id"])
            TALLY.orders.add(order_id)
            _acknowledged(order_id, headers)
            self.orders.append(order_id)

    def _place_order(self) -> None:
        if not self._sign_in():
            return
        self._order("/orders", {"lines": self._lines()}, {"Idempotency-Key": uuid.uuid4().hex})


class Customer(Shopper):
    """Signs up and in, fills a cart and checks it out, places orders directly, reads its
    orders and their tracking, and sometimes cancels one."""

    weight = 3  # with the visitors: about 70 % reads, 30 % writes
    abstract = MIX == "orders"

    @task(3)
    def open_product(self) -> None:
        self.client.get(f"/products/{Catalog.pick()}", name="/products/[id]")

    @task(4)
    def add_to_cart(self) -> None:
        if not self._sign_in():
            return
        with self.client.put(
            f"/cart/items/{Catalog.pick()}",
            json={"quantity": random.choice((1, 1, 2))},
            name="/cart/items/[id]",
            catch_response=True,
        ) as response:
            # 409: the cart is full (50 products) or busy; a documented answer.
            _expect(response, (200,), (409,))

    @task(2)
    def checkout_cart(self) -> None:
        if not self._sign_in():
            return
        with self.client.get("/cart", catch_response=True) as response:
            if not _expect(response, (200,)):
                return
            cart = response.json()
        if not cart["lines"]:
            return
        self._order("/cart/checkout", {"version": cart["version"]}, {})

    @task(3)
    def place_order(self) -> None:
        self._place_order()

    @task(2)
    def my_orders(self) -> None:
        if not self._sign_in():
            return
        self.client.get("/orders?limit=10", name="/orders")

    @task(2)
    def track_order(self) -> None:
        if not self._sign_in():
            return
        if not self.orders:
            return
        order_id = random.choice(self.orders)
        self.client.get(f"/orders/{order_id}", name="/orders/[id]")
        with self.client.get(
            f"/orders/{order_id}/shipment",
            name="/orders/[id]/shipment",
            catch_response=True,
        ) as response:
            # 202 while a worker has yet to open the shipment (stage 7, orders through a queue),
            # as the API documents; 404 from an older shop.
            _expect(response, (200,), (202, 404))

    @task(1)
    def cancel_order(self) -> None:
        if not self._sign_in():
            return
        if not self.orders or random.random() < 0.5:
            return
        order_id = self.orders.pop(random.randrange(len(self.orders)))
        with self.client.post(
            f"/orders/{order_id}/cancel",
            name="/orders/[id]/cancel",
            catch_response=True,
        ) as response:
            # 409: already shipped (or cancelled), as the API documents.
            _expect(response, (200,), (409,))


class Buyer(Shopper):
    """Only places orders, one after another with the same think time: the write-heavy mix
    (`SHOP_LOAD_MIX=orders`, with the admin who restocks), which loads the write primary
    with the talk's last bottleneck. Absent from the default mix."""

    abstract = MIX != "orders"

    @task
    def place_order(self) -> None:
        self._place_order()


class Admin(FastHttpUser):
    """One admin who restocks what runs low, so that a long run does not sell out, and moves
    a few shipments on (so that some cancellations meet a shipped order)."""

    fixed_count = 1
    # Each restock retires the whole catalog cache (stage 5): a look every 10-20 s, not more.
    wait_time = between(10.0, 20.0)

    def on_start(self) -> None:
        self.offset = 0
        self.signed_in = False
        if not (ADMIN_EMAIL and ADMIN_PASSWORD):
            return
        with self.client.post(
            "/auth/token",
            json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
            name="/auth/token (admin)",
            catch_response=True,
        ) as response:
            if _expect(response, (200,)):
                self.client.auth_header = f"Bearer {response.json()['access_token']}"
                self.signed_in = True

    @task(3)
    def restock_low(self) -> None:
        if not self.signed_in:
            return
        with self.client.get(
            f"/products?limit=100&offset={self.offset}",
            name="/products (admin)",
            catch_response=True,
        ) as response:
            if not _expect(response, (200,)):
                return
            page = response.json()
        self.offset = page.get("next_offset") or 0
        low = [product for product in page["items"] if product["stock"] < LOW_STOCK]
        for product in low[:RESTOCKS_PER_VISIT]:
            # In a greenlet of its own, which the end of the run does not kill: a restock cut
            # off half-way would leave the tally unsure whether the shop made it.
            job = gevent.spawn(self._restock, int(product["id"]))
            RESTOCKING.add(job)
            job.link(RESTOCKING.discard)
            job.join()

    def _restock(self, product_id: int) -> None:
        with self.client.post(
            f"/admin/products/{product_id}/restock",
            json={"quantity": RESTOCK_UNITS},
            name="/admin/products/[id]/restock",
            catch_response=True,
        ) as answer:
            # 409: the stock would pass its maximum; nothing was added.
            if _expect(answer, (200,), (409,)):
                TALLY.restocked[product_id] += RESTOCK_UNITS

    @task(1)
    def advance_shipments(self) -> None:
        if not self.signed_in:
            return
        for status, target in (("packed", "shipped"), ("pending", "packed")):
            with self.client.get(
                f"/admin/shipments?status={status}&limit=5",
                name="/admin/shipments",
                catch_response=True,
            ) as response:
                if not _expect(response, (200,)):
                    return
                shipments = response.json()["items"]
            for shipment in shipments:
                with self.client.post(
                    f"/admin/shipments/{shipment['id']}/advance",
                    json={"to": target},
                    name="/admin/shipments/[id]/advance",
                    catch_response=True,
                ) as answer:
                    # 409: the customer cancelled it meanwhile.
                    _expect(answer, (200,), (409,))


# --- Measuring: per-step figures and the invariants, on the master (or the only process) ---


class StepRecorder:
    """Writes one JSON line per measured window, from the run's cumulative statistics: a
    snapshot when the window's measurement starts and one when it ends."""

    def __init__(self, environment: Environment, out: Path | None) -> None:
        self.environment = environment
        self.out = out
        self.lines: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.window: shapes.Window | None = None
        self.opened: tuple[float, dict[str, Any]] | None = None
        self.most_users = 0
        self.greenlet: gevent.Greenlet | None = None
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("")

    def shape(self) -> shapes.MeasuredShape | None:
        shape = self.environment.shape_class
        return shape if isinstance(shape, shapes.MeasuredShape) else None

    def run_time(self) -> float:
        shape = self.shape()
        if shape is None:
            return time.perf_counter() - self.started
        run_time: float = shape.get_run_time()  # type: ignore[attr-defined]  # Locust's side
        return run_time

    def window_now(self) -> shapes.Window | None:
        shape = self.shape()
        if shape is not None:
            return shape.window_at(self.run_time())
        return shapes.Window(0, 0, shapes.RAMP_DISCARD_S, float("inf"))

    def snapshot(self) -> dict[str, Any]:
        stats = self.environment.stats
        entries = {
            f"{method} {name}": (entry.num_requests, entry.num_failures, dict(entry.response_times))
            for (name, method), entry in stats.entries.items()
        }
        total = stats.total
        return {
            "total": (total.num_requests, total.num_failures, dict(total.response_times)),
            "entries": entries,
        }

    def close(self, window: shapes.Window) -> None:
        if self.opened is None:
            return
        started_at, first = self.opened
        self.opened = None
        ended_at, last = time.time(), self.snapshot()
        requests_, failures, histogram = _delta(last["total"], first["total"])
        by_name = {}
        for name, entry in last["entries"].items():
            n, f, h = _delta(entry, first["entries"].get(name, (0, 0, {})))
            if n:
                by_name[name] = {
                    "requests": n,
                    "failures": f,
                    "p95_ms": analysis.percentile(h, 0.95),
                }
        users = window.users if self.shape() is not None else self.most_users
        line = {
            "step": window.step,
            "users": users,
            "started_at": started_at,
            "ended_at": ended_at,
            "requests": requests_,
            "failures": failures,
            "rps": requests_ / max(ended_at - started_at, 1e-9),
            "p50_ms": analysis.percentile(histogram, 0.50),
            "p95_ms": analysis.percentile(histogram, 0.95),
            "p99_ms": analysis.percentile(histogram, 0.99),
            "by_name": by_name,
        }
        self.lines.append(line)
        met = analysis.meets_objective(line, p95_ms=P95_OBJECTIVE_MS, max_error_ratio=0.01)
        shape = self.shape()
        if shape is not None:
            shape.measured(met)
        log.info(
            "step %s: %s users, %.1f requests/s, p95 %.0f ms, %s failures (objective %s)",
            line["step"],
            line["users"],
            line["rps"],
            line["p95_ms"],
            failures,
            f"p95 < {P95_OBJECTIVE_MS:g} ms, under 1 % errors: {'met' if met else 'missed'}",
        )
        if self.out is not None:
            with self.out.open("a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")

    def poll(self) -> None:
        now = self.run_time()
        window = self.window_now()
        if self.window is not None and (window is None or window.step != self.window.step):
            self.close(self.window)
        self.window = window
        if window is not None and self.opened is None and now >= window.measure_from_s:
            self.opened = (time.time(), self.snapshot())
            self.most_users = 0
        if self.opened is not None and self.environment.runner is not None:
            self.most_users = max(self.most_users, self.environment.runner.user_count)

    def run(self) -> None:
        while True:
            self.poll()
            gevent.sleep(0.2)

    def start(self) -> None:
        self.greenlet = gevent.spawn(self.run)

    def stop(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=True)
        window = self.window
        if window is not None and (
            self.shape() is None or self.run_time() >= window.ends_at_s - 1.0
        ):
            self.close(window)  # the last step ended with the run


def _delta(
    later: tuple[int, int, dict[int, int]], earlier: tuple[int, int, dict[int, int]]
) -> tuple[int, int, dict[int, int]]:
    return (
        max(0, later[0] - earlier[0]),
        max(0, later[1] - earlier[1]),
        analysis.histogram_delta(later[2], earlier[2]),
    )


class RunState:
    """The measuring side of one test: where it is, what it found before it started."""

    recorder: StepRecorder | None = None
    stock_before: dict[int, int] | None = None
    admin: invariants.AdminClient | None = None
    tally = invariants.Tally()
    tallies = 0
    """Tallies received from workers in this test."""


def _measuring(environment: Environment) -> bool:
    return not isinstance(environment.runner, WorkerRunner)


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    host = environment.host or ""  # unset until the web UI's form gives it
    if host and not host.startswith(("http://", "https://")):
        raise SystemExit(
            f"loadtests/locustfile.py: --host must be an http:// or https:// URL, not {host!r}"
        )
    if isinstance(environment.runner, MasterRunner):

        def take_tally(environment: Environment, msg: Any, **_: Any) -> None:
            RunState.tally.merge(msg.data)
            RunState.tallies += 1

        environment.runner.register_message("shop_tally", take_tally)
    elif isinstance(environment.runner, WorkerRunner):

        def stop_now(environment: Environment, msg: Any, **_: Any) -> None:
            # Fires this worker's test_stop (which sends its tally) unless it already stopped.
            if environment.runner is not None:
                environment.runner.stop()

        environment.runner.register_message("shop_stop", stop_now)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    host = (environment.host or "").rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise RuntimeError(f"--host must be an http:// or https:// URL, not {host!r}")
    TALLY.orders.clear()
    TALLY.restocked.clear()
    PENDING.clear()
    if not isinstance(environment.runner, MasterRunner):
        try:
            Catalog.load(host)
        except (requests.RequestException, RuntimeError, ValueError, KeyError) as exc:
            log.error("cannot load the shop's catalog from %s: %s", host, exc)
            environment.process_exit_code = 2
            if environment.runner is not None:
                gevent.spawn(environment.runner.quit)
            return
    if not _measuring(environment):
        return
    RunState.tally, RunState.tallies = invariants.Tally(), 0
    try:
        RunState.admin = invariants.AdminClient(host, email=ADMIN_EMAIL, password=ADMIN_PASSWORD)
        RunState.stock_before = RunState.admin.stock()
    except invariants.ShopUnreachable as exc:
        log.error("the invariants cannot be checked: %s", exc)
        RunState.admin, RunState.stock_before = None, None
    RunState.recorder = StepRecorder(environment, Path(STEPS_OUT) if STEPS_OUT else None)
    RunState.recorder.start()


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    if not isinstance(environment.runner, MasterRunner):
        gevent.joinall(list(RESTOCKING), timeout=30)
        replay_pending((environment.host or "").rstrip("/"))
    if isinstance(environment.runner, WorkerRunner):
        # Sent before the worker tells the master it stopped, so the master has every tally
        # before its own test_stop.
        environment.runner.send_message("shop_tally", TALLY.as_data())
        return
    if RunState.recorder is not None:
        RunState.recorder.stop()
        RunState.recorder = None
    if isinstance(environment.runner, MasterRunner):
        _stop_workers(environment.runner)
    else:
        RunState.tally.merge(TALLY.as_data())
    report = _check_invariants()
    log.info("invariants:\n%s", invariants.render(report))
    for journal in (Journal.request_log, Journal.acked_log):
        if journal is not None:
            journal.flush()
    if INVARIANTS_OUT:
        Path(INVARIANTS_OUT).parent.mkdir(parents=True, exist_ok=True)
        Path(INVARIANTS_OUT).write_text(json.dumps(report, indent=2))
    if not report["ok"]:
        environment.process_exit_code = 1


def _stop_workers(runner: MasterRunner, timeout_s: float = 30.0) -> None:
    """Have every worker stop its users and send its tally, and wait for them: a master can
    reach test_stop before its workers have (a shape's end), and the invariants must be read
    from a shop no one is still ordering from."""
    expected = len(runner.clients)
    runner.send_message("shop_stop")
    deadline = time.monotonic() + timeout_s
    while RunState.tallies < expected and time.monotonic() < deadline:
        gevent.sleep(0.1)
    if RunState.tallies < expected:
        log.error("only %s of %s workers sent their tally", RunState.tallies, expected)


def _check_invariants() -> dict[str, Any]:
    if RunState.admin is None:
        return {
            "ok": False,
            "checks": {"readable": {"ok": False, "detail": "the shop could not be read at start"}},
        }
    try:
        return invariants.check_run(
            RunState.admin,
            stock_before=RunState.stock_before,
            tally=RunState.tally,
            settle_s=SETTLE_S,
        )
    except invariants.ShopUnreachable as exc:
        return {"ok": False, "checks": {"readable": {"ok": False, "detail": str(exc)}}}
