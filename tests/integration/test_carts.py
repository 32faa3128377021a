"""Carts against both stores: the shop's PostgreSQL, and DynamoDB on moto's server.

The same contract tests and HTTP tests run once per store (the `store` fixture is parametrized),
with a DynamoDB table made exactly as infra/shop_infra/constructs/edge.py defines it: partition
key `cart_id` (string), time to live on `expires_at`.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import boto3
import pytest
from httpx import AsyncClient
from sqlalchemy import text

from app.adapters.dynamodb import VersionedTable
from app.adapters.resources import Resources
from app.carts import store_dynamodb
from app.carts.domain import Cart, CartBusy, CartTooLarge, set_quantity
from app.carts.router import cart_store
from app.carts.store import CartStore
from app.carts.store_dynamodb import KEY, DynamoCartStore
from app.carts.store_sql import SqlCartStore
from app.catalog import service as catalog
from tests.integration.conftest import User, make_product, make_user

TTL = timedelta(days=30)


@pytest.fixture(scope="module")
def dynamodb() -> Iterator[Any]:
    """A boto3 DynamoDB client of a moto server on a free port, for this module."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield boto3.client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    server.stop()


def make_carts_table(client: Any) -> str:
    """A new table with the key schema and time to live of the stage 5 stack's."""
    name = f"carts-{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "cart_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "cart_id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.update_time_to_live(
        TableName=name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
    )
    return name


def make_store(kind: str, resources: Resources, dynamodb: Any, ttl: timedelta = TTL) -> CartStore:
    if kind == "postgresql":
        return SqlCartStore(resources.db, ttl=ttl)
    # Customer ids start again at 1 in every test: a table per test keeps carts apart.
    return DynamoCartStore(
        VersionedTable(dynamodb, table=make_carts_table(dynamodb), key=KEY), ttl=ttl
    )


@pytest.fixture(params=["postgresql", "dynamodb"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, resources: Resources, dynamodb: Any) -> CartStore:
    return make_store(kind, resources, dynamodb)


@pytest.fixture
async def http(app: Any, client: AsyncClient, store: CartStore) -> AsyncIterator[AsyncClient]:
    """The HTTP client, with the app's carts in the test's store."""

    async def the_store() -> CartStore:
        return store

    app.dependency_overrides[cart_store] = the_store
    try:
        yield client
    finally:
        app.dependency_overrides.pop(cart_store, None)


# --- the stores' contract ------------------------------------------------------------------


async def test_a_customer_without_a_cart_has_an_empty_one_at_version_0(
    store: CartStore, alice: User
) -> None:
    cart = await store.get(alice.id)
    assert (cart.cart_id, cart.customer_id, cart.version, dict(cart.items)) == (
        f"customer-{alice.id}",
        alice.id,
        0,
        {},
    )


async def test_a_change_is_stored_at_the_next_version_and_read_back(
    store: CartStore, alice: User
) -> None:
    first = await store.change(alice.id, lambda c: set_quantity(c, product_id=7, quantity=2))
    second = await store.change(alice.id, lambda c: set_quantity(c, product_id=8, quantity=1))
    assert (first.version, second.version) == (1, 2)
    for consistent in (False, True):
        read = await store.get(alice.id, consistent=consistent)
        assert (read.version, dict(read.items)) == (2, {7: 2, 8: 1})
        assert read.expires_at is not None


async def test_a_change_that_changes_nothing_writes_nothing(store: CartStore, alice: User) -> None:
    await store.change(alice.id, lambda c: set_quantity(c, product_id=7, quantity=2))
    same = await store.change(alice.id, lambda c: set_quantity(c, product_id=7, quantity=2))
    assert same.version == 1
    assert (await store.get(alice.id)).version == 1


async def test_a_refused_change_writes_nothing(store: CartStore, alice: User) -> None:
    await store.change(alice.id, lambda c: set_quantity(c, product_id=7, quantity=2))

    def refuse(cart: Cart) -> Cart:
        raise CartTooLarge()

    with pytest.raises(CartTooLarge):
        await store.change(alice.id, refuse)
    read = await store.get(alice.id)
    assert (read.version, dict(read.items)) == (1, {7: 2})


async def test_carts_of_two_customers_are_apart(store: CartStore, alice: User, bob: User) -> None:
    await store.change(alice.id, lambda c: set_quantity(c, product_id=7, quantity=2))
    assert dict((await store.get(bob.id)).items) == {}


@pytest.mark.parametrize("changes", [2, 8])
async def test_concurrent_changes_to_one_cart_are_all_kept(
    kind: str,
    store: CartStore,
    alice: User,
    changes: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lost = 0
    if isinstance(store, DynamoCartStore):
        put = store._put

        def counting_put(stored: Cart, *, exists: bool, expected_version: int) -> bool:
            nonlocal lost
            written = put(stored, exists=exists, expected_version=expected_version)
            lost += not written
            return written

        monkeypatch.setattr(store, "_put", counting_put)

    await asyncio.gather(
        *(
            store.change(alice.id, lambda c, pid=pid: set_quantity(c, product_id=pid, quantity=pid))
            for pid in range(1, changes + 1)
        )
    )

    cart = await store.get(alice.id, consistent=True)
    assert dict(cart.items) == {pid: pid for pid in range(1, changes + 1)}
    assert cart.version == changes
    if kind == "dynamodb" and changes == 8:
        assert lost >= 1  # the race happened, and its losers applied themselves again


async def test_a_cart_that_keeps_losing_the_race_gives_up_after_bounded_retries(
    resources: Resources, dynamodb: Any, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store("dynamodb", resources, dynamodb)
    assert isinstance(store, DynamoCartStore)
    attempts = 0

    def always_lose(stored: Cart, *, exists: bool, expected_version: int) -> bool:
        nonlocal attempts
        attempts += 1
        return False

    monkeypatch.setattr(store, "_put", always_lose)
    monkeypatch.setattr(store_dynamodb, "MAX_ATTEMPTS", 3)
    with pytest.raises(CartBusy):
        await store.change(alice.id, lambda c: set_quantity(c, product_id=7, quantity=1))
    assert attempts == 3


async def test_an_expired_cart_reads_empty_and_its_version_goes_on(
    kind: str, resources: Resources, dynamodb: Any, alice: User
) -> None:
    store = make_store(kind, resources, dynamodb, ttl=timedelta(seconds=-5))
    await store.change(alice.id, lambda c: set_quantity(c, product_id=7, quantity=2))

    expired = await store.get(alice.id)
    assert (expired.version, dict(expired.items)) == (1, {})
    again = await store.change(alice.id, lambda c: set_quantity(c, product_id=8, quantity=1))
    assert (again.version, dict(again.items)) == (2, {8: 1})


# --- HTTP ------------------------------------------------------------------------------------


async def put_item(http: AsyncClient, user: User, product_id: int, quantity: object) -> Any:
    return await http.put(
        f"/cart/items/{product_id}", json={"quantity": quantity}, headers=user.headers
    )


async def read_cart(http: AsyncClient, user: User) -> dict[str, Any]:
    response = await http.get("/cart", headers=user.headers)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


async def orders_of(http: AsyncClient, user: User) -> list[dict[str, Any]]:
    return (await http.get("/orders", headers=user.headers)).json()["items"]  # type: ignore[no-any-return]


async def test_a_cart_shows_todays_prices_and_the_totals_an_order_would_have(
    http: AsyncClient, resources: Resources, alice: User
) -> None:
    mug = await make_product(resources, price_cents=1250, initial_stock=5)
    lamp = await make_product(resources, price_cents=4000, initial_stock=2)
    assert (await put_item(http, alice, mug.id, 2)).status_code == 200
    assert (await put_item(http, alice, lamp.id, 1)).status_code == 200
    await catalog.change_price(resources.db, product_id=mug.id, price_cents=1000)

    cart = await read_cart(http, alice)

    assert [
        (line["product_id"], line["quantity"], line["unit_price_cents"]) for line in cart["lines"]
    ] == [
        (mug.id, 2, 1000),
        (lamp.id, 1, 4000),
    ]
    assert (cart["subtotal_cents"], cart["tax_cents"], cart["total_cents"]) == (6000, 1200, 7200)
    assert cart["version"] == 2


async def test_changing_and_removing_items(
    http: AsyncClient, resources: Resources, alice: User
) -> None:
    mug = await make_product(resources)
    await put_item(http, alice, mug.id, 2)
    changed = (await put_item(http, alice, mug.id, 5)).json()
    assert [(line["product_id"], line["quantity"]) for line in changed["lines"]] == [(mug.id, 5)]

    removed = await http.delete(f"/cart/items/{mug.id}", headers=alice.headers)
    assert removed.status_code == 200
    assert removed.json()["lines"] == []
    again = await http.delete(f"/cart/items/{mug.id}", headers=alice.headers)
    assert again.status_code == 404


async def test_an_unknown_product_cannot_go_in_a_cart(http: AsyncClient, alice: User) -> None:
    response = await put_item(http, alice, 4242, 1)
    assert response.status_code == 404
    assert response.json()["resource"] == "product"


@pytest.mark.parametrize("quantity", [0, -1, True, "2", 2.0, None, 10_001])
async def test_a_bad_quantity_answers_422_and_changes_nothing(
    http: AsyncClient, resources: Resources, alice: User, quantity: object
) -> None:
    mug = await make_product(resources)
    response = await put_item(http, alice, mug.id, quantity)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "quantity"]
    assert (await read_cart(http, alice))["version"] == 0


async def test_another_customers_cart_is_out_of_reach(
    http: AsyncClient, resources: Resources, alice: User, bob: User
) -> None:
    mug = await make_product(resources)
    await put_item(http, alice, mug.id, 2)
    alices = await read_cart(http, alice)

    bobs = await read_cart(http, bob)
    assert bobs["lines"] == []
    assert bobs["cart_id"] != alices["cart_id"]
    # Alice's item is, to Bob, an item that does not exist: 404, exactly as an unknown one.
    assert (await http.delete(f"/cart/items/{mug.id}", headers=bob.headers)).status_code == 404
    refused = await http.post(
        "/cart/checkout", json={"version": alices["version"]}, headers=bob.headers
    )
    assert refused.status_code == 409
    assert await read_cart(http, alice) == alices
    assert await orders_of(http, alice) == await orders_of(http, bob) == []


async def test_checkout_places_the_order_and_empties_the_cart(
    http: AsyncClient, resources: Resources, alice: User
) -> None:
    mug = await make_product(resources, price_cents=1250, initial_stock=5)
    await put_item(http, alice, mug.id, 2)
    cart = await read_cart(http, alice)

    response = await http.post(
        "/cart/checkout", json={"version": cart["version"]}, headers=alice.headers
    )

    assert response.status_code == 201
    order = response.json()
    assert order["total_cents"] == cart["total_cents"] == 3000
    assert [(line["product_id"], line["quantity"]) for line in order["lines"]] == [(mug.id, 2)]
    assert "Idempotent-Replayed" not in response.headers
    assert (await http.get(f"/products/{mug.id}")).json()["stock"] == 3
    after = await read_cart(http, alice)
    assert after["lines"] == []
    assert after["version"] > cart["version"]
    assert [o["id"] for o in await orders_of(http, alice)] == [order["id"]]


async def test_a_retried_checkout_never_orders_twice(
    http: AsyncClient, resources: Resources, alice: User
) -> None:
    mug = await make_product(resources, initial_stock=5)
    await put_item(http, alice, mug.id, 2)
    version = (await read_cart(http, alice))["version"]

    first = await http.post("/cart/checkout", json={"version": version}, headers=alice.headers)
    retry = await http.post("/cart/checkout", json={"version": version}, headers=alice.headers)

    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry.json()["id"] == first.json()["id"]
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert len(await orders_of(http, alice)) == 1
    assert (await http.get(f"/products/{mug.id}")).json()["stock"] == 3


async def test_a_double_clicked_checkout_orders_once(
    http: AsyncClient, resources: Resources, alice: User
) -> None:
    mug = await make_product(resources, initial_stock=5)
    await put_item(http, alice, mug.id, 2)
    version = (await read_cart(http, alice))["version"]

    answers = await asyncio.gather(
        *(
            http.post("/cart/checkout", json={"version": version}, headers=alice.headers)
            for _ in range(2)
        )
    )

    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(await orders_of(http, alice)) == 1
    assert (await read_cart(http, alice))["lines"] == []


def fail_next_change(store: CartStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's next change fails as an unreachable store would; the ones after work."""
    change = store.change
    failures = iter([ConnectionError("the cart store went away")])

    async def flaky_change(customer_id: int, mutate: Any) -> Cart:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await change(customer_id, mutate)

    monkeypatch.setattr(store, "change", flaky_change)


async def test_a_checkout_whose_order_failed_to_empty_the_cart_is_replayed_by_its_retry(
    http: AsyncClient,
    resources: Resources,
    alice: User,
    store: CartStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mug = await make_product(resources, initial_stock=5)
    await put_item(http, alice, mug.id, 2)
    version = (await read_cart(http, alice))["version"]
    fail_next_change(store, monkeypatch)
    first = await http.post("/cart/checkout", json={"version": version}, headers=alice.headers)
    # The order was committed: the answer names it, though the cart could not record it.
    assert first.status_code == 201, first.text
    assert (await read_cart(http, alice))["version"] == version

    retry = await http.post("/cart/checkout", json={"version": version}, headers=alice.headers)

    assert retry.status_code == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["id"] == first.json()["id"]
    assert len(await orders_of(http, alice)) == 1
    assert (await read_cart(http, alice))["lines"] == []


async def test_a_checkout_the_cart_failed_to_record_is_never_ordered_again_after_a_change(
    http: AsyncClient,
    resources: Resources,
    alice: User,
    store: CartStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cart store fails just after the order's commit (found by `make faults`, queue and
    carts endpoint unreachable); the customer then adds to the cart before checking out again.
    The ordered units are not ordered a second time, and a retry of the first checkout still
    names its order."""
    mug, tea = await make_product(resources, initial_stock=10), await make_product(resources)
    await put_item(http, alice, mug.id, 2)
    version = (await read_cart(http, alice))["version"]
    fail_next_change(store, monkeypatch)
    first = await http.post("/cart/checkout", json={"version": version}, headers=alice.headers)
    assert first.status_code == 201, first.text
    await put_item(http, alice, tea.id, 1)
    moved = (await read_cart(http, alice))["version"]

    again = await http.post("/cart/checkout", json={"version": moved}, headers=alice.headers)

    # The lost checkout is recorded first: the cart changed under the client, which re-reads it.
    assert again.status_code == 409, again.text
    cart = await read_cart(http, alice)
    assert [(line["product_id"], line["quantity"]) for line in cart["lines"]] == [(tea.id, 1)]
    retry = await http.post("/cart/checkout", json={"version": version}, headers=alice.headers)
    assert retry.status_code == 201 and retry.json()["id"] == first.json()["id"]
    final = await http.post(
        "/cart/checkout", json={"version": cart["version"]}, headers=alice.headers
    )
    assert final.status_code == 201, final.text
    ordered = []
    for order in await orders_of(http, alice):
        seen = (await http.get(f"/orders/{order['id']}", headers=alice.headers)).json()
        ordered += [(line["product_id"], line["quantity"]) for line in seen["lines"]]
    assert sorted(ordered) == sorted([(mug.id, 2), (tea.id, 1)])


async def test_out_of_stock_at_checkout_answers_409_naming_it_and_keeps_the_cart(
    http: AsyncClient, resources: Resources, alice: User
) -> None:
    mug = await make_product(resources, initial_stock=5)
    lamp = await make_product(resources, initial_stock=1)
    await put_item(http, alice, mug.id, 2)
    await put_item(http, alice, lamp.id, 3)
    cart = await read_cart(http, alice)
    assert [line["problem"] for line in cart["lines"]] == [None, "only 1 in stock"]

    response = await http.post(
        "/cart/checkout", json={"version": cart["version"]}, headers=alice.headers
    )

    assert response.status_code == 409
    body = response.json()
    assert (body["product_id"], body["requested"], body["available"]) == (lamp.id, 3, 1)
    assert await read_cart(http, alice) == cart
    assert await orders_of(http, alice) == []
    assert (await http.get(f"/products/{mug.id}")).json()["stock"] == 5
    # Once restocked, the same version checks out.
    await catalog.restock(resources.db, product_id=lamp.id, quantity=5, cache=resources.cache)
    placed = await http.post(
        "/cart/checkout", json={"version": cart["version"]}, headers=alice.headers
    )
    assert placed.status_code == 201


async def test_a_product_gone_at_checkout_answers_409_naming_it_and_keeps_the_cart(
    http: AsyncClient, resources: Resources, alice: User
) -> None:
    mug = await make_product(resources)
    gone = await make_product(resources)
    await put_item(http, alice, mug.id, 1)
    await put_item(http, alice, gone.id, 1)
    async with resources.db.write() as conn:
        await conn.execute(text("DELETE FROM stock_level WHERE product_id = :id"), {"id": gone.id})
        await conn.execute(text("DELETE FROM product WHERE id = :id"), {"id": gone.id})
    await catalog.catalog_changed(resources.cache)
    cart = await read_cart(http, alice)
    assert cart["lines"][1]["problem"] == "no longer sold; remove it from the cart"

    response = await http.post(
        "/cart/checkout", json={"version": cart["version"]}, headers=alice.headers
    )

    assert response.status_code == 409
    assert response.json()["product_id"] == gone.id
    assert f"product {gone.id} is no longer sold" in response.json()["detail"]
    assert await read_cart(http, alice) == cart
    assert await orders_of(http, alice) == []


async def test_a_checkout_of_a_version_the_cart_has_left_is_refused(
    http: AsyncClient, resources: Resources, alice: User
) -> None:
    mug = await make_product(resources)
    await put_item(http, alice, mug.id, 1)
    seen = (await read_cart(http, alice))["version"]
    await put_item(http, alice, mug.id, 3)
    cart = await read_cart(http, alice)

    response = await http.post("/cart/checkout", json={"version": seen}, headers=alice.headers)

    assert response.status_code == 409
    assert response.json()["current_version"] == cart["version"]
    assert await read_cart(http, alice) == cart
    assert await orders_of(http, alice) == []


async def test_an_empty_cart_cannot_be_checked_out(http: AsyncClient, alice: User) -> None:
    response = await http.post("/cart/checkout", json={"version": 0}, headers=alice.headers)
    assert response.status_code == 409
    assert "empty" in response.json()["detail"]


@pytest.mark.parametrize("body", [{}, {"version": "1"}, {"version": -1}, {"version": True}])
async def test_a_checkout_needs_the_version_as_an_integer(
    http: AsyncClient, alice: User, body: dict[str, object]
) -> None:
    response = await http.post("/cart/checkout", json=body, headers=alice.headers)
    assert response.status_code == 422


async def test_a_cart_needs_a_token(http: AsyncClient) -> None:
    assert (await http.get("/cart")).status_code == 401


async def test_the_next_cart_after_a_checkout_checks_out_as_a_new_order(
    http: AsyncClient, resources: Resources, alice: User
) -> None:
    mug = await make_product(resources, initial_stock=5)
    for _ in range(2):
        await put_item(http, alice, mug.id, 1)
        version = (await read_cart(http, alice))["version"]
        placed = await http.post("/cart/checkout", json={"version": version}, headers=alice.headers)
        assert placed.status_code == 201
    assert len(await orders_of(http, alice)) == 2
    assert (await http.get(f"/products/{mug.id}")).json()["stock"] == 3


async def test_a_deleted_account_takes_its_cart_with_it(resources: Resources) -> None:
    user = await make_user(resources)
    store = SqlCartStore(resources.db, ttl=TTL)
    await store.change(user.id, lambda c: set_quantity(c, product_id=7, quantity=1))
    async with resources.db.write() as conn:
        await conn.execute(text("DELETE FROM customer WHERE id = :id"), {"id": user.id})
        left = await conn.scalar(text("SELECT count(*) FROM cart_item"))
    assert left == 0
    assert replace(await store.get(user.id), expires_at=None).version == 0


async def test_an_unreachable_dynamodb_answers_503_with_retry_after(
    app: Any, client: AsyncClient, alice: User
) -> None:
    from botocore.config import Config

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    nowhere = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{closed_port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(connect_timeout=1, retries={"max_attempts": 1}),
    )
    unreachable = DynamoCartStore(VersionedTable(nowhere, table="carts", key=KEY), ttl=TTL)

    async def the_store() -> CartStore:
        return unreachable

    app.dependency_overrides[cart_store] = the_store
    try:
        response = await client.get("/cart", headers=alice.headers)
    finally:
        app.dependency_overrides.pop(cart_store, None)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"


async def test_a_hung_dynamodb_answers_every_waiting_cart_read_503_instead_of_queueing_them(
    alice: User,
) -> None:
    """An endpoint that accepts connections and never answers (a partition, a frozen host):
    botocore would keep each call for up to 3 attempts of its 5 s read timeout. A hundred
    readers at once, three times the carts' threads, all get a 503 within the read deadline's
    reach, not after each other's timeouts (found by `make faults`: requests went unanswered)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from botocore.config import Config

    from app.adapters.dynamodb import CONNECTIONS as DYNAMODB_CONNECTIONS
    from app.carts.domain import CartStoreUnavailable

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    hung = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(
            max_pool_connections=DYNAMODB_CONNECTIONS,
            connect_timeout=2,
            read_timeout=5,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )
    threads = ThreadPoolExecutor(DYNAMODB_CONNECTIONS)
    store = DynamoCartStore(VersionedTable(hung, table="carts", key=KEY, threads=threads), ttl=TTL)

    async def read() -> BaseException | None:
        try:
            await store.get(alice.id)
        except CartStoreUnavailable as exc:
            return exc
        return None

    try:
        # A liveness bound, not a speed target: queued behind each other's botocore timeouts
        # (about 11 s a call here, 32 at a time) the hundred would need about 45 s.
        outcomes = await asyncio.wait_for(asyncio.gather(*(read() for _ in range(100))), 25)
    finally:
        stop.set()
        holder.join()
        for connection in held:
            connection.close()
        listener.close()
        threads.shutdown(wait=False, cancel_futures=True)
    assert all(isinstance(o, CartStoreUnavailable) for o in outcomes)


async def test_with_shop_carts_table_set_the_shop_keeps_carts_in_dynamodb(
    settings: Any, resources: Resources, dynamodb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asgi_lifespan import LifespanManager
    from httpx import ASGITransport

    from app.main import create_app
    from tests.conftest import test_settings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    table = make_carts_table(dynamodb)
    shop = create_app(
        test_settings(
            database_url=settings.database_url,
            carts_table=table,
            aws_region="us-east-1",
            aws_endpoint_url=dynamodb.meta.endpoint_url,
        )
    )
    user = await make_user(resources)
    product = await make_product(resources)
    async with LifespanManager(shop, startup_timeout=30):
        transport = ASGITransport(app=shop)
        async with AsyncClient(transport=transport, base_url="http://shop.test") as http:
            response = await put_item(http, user, product.id, 2)
    assert response.status_code == 200
    item = dynamodb.get_item(TableName=table, Key={"cart_id": {"S": f"customer-{user.id}"}})
    assert item["Item"]["items"]["M"] == {str(product.id): {"N": "2"}}
    assert int(item["Item"]["expires_at"]["N"]) > 0
    async with resources.db.read() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM cart_item")) == 0
