"""Sign-in under attack: guessing is throttled per e-mail and per client address (shared through
Redis by the fleet), hashing cannot starve other work, and hashes follow the cost settings."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from asgi_lifespan import LifespanManager
from httpx import AsyncClient
from redis.asyncio import Redis
from sqlalchemy import text

from app.adapters.ratelimit import Budget, RateLimit
from app.adapters.resources import Resources
from app.kernel.security import Passwords
from app.main import create_app
from tests.conftest import REDIS_URL, test_settings
from tests.integration.conftest import User

PASSWORD = "correct-horse-42"  # make_user's


@pytest.fixture
async def limited(database_url: str) -> AsyncIterator[tuple[Any, AsyncClient]]:
    """A second app on the same database with small sign-in limits, counting in memory."""
    settings = test_settings(
        database_url=database_url,
        sign_in_failures_per_email=3,
        sign_in_failures_per_client=5,
        sign_in_window_s=60,
    )
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30):
        transport = httpx.ASGITransport(app=application, client=("203.0.113.7", 4000))
        async with AsyncClient(transport=transport, base_url="http://shop.test") as c:
            yield application, c


async def sign_in(client: AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/auth/token", json={"email": email, "password": password})


async def test_guessing_one_e_mail_is_stopped_with_429_and_retry_after(
    limited: tuple[Any, AsyncClient], alice: User
) -> None:
    _, client = limited
    for _ in range(3):
        assert (await sign_in(client, alice.email, "wrong-guess-00")).status_code == 401
    refused = await sign_in(client, alice.email, "wrong-guess-00")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Even the right password waits out the window: the guesser learns nothing more.
    assert (await sign_in(client, alice.email, PASSWORD)).status_code == 429


async def test_another_e_mail_is_not_locked_out_by_someone_elses_guesses(
    limited: tuple[Any, AsyncClient], alice: User, bob: User
) -> None:
    _, client = limited
    for _ in range(3):
        await sign_in(client, alice.email, "wrong-guess-00")
    assert (await sign_in(client, bob.email, PASSWORD)).status_code == 200


async def test_successful_sign_ins_are_not_counted(
    limited: tuple[Any, AsyncClient], alice: User
) -> None:
    _, client = limited
    for _ in range(10):
        assert (await sign_in(client, alice.email, PASSWORD)).status_code == 200


async def test_one_address_guessing_many_e_mails_is_stopped(
    limited: tuple[Any, AsyncClient],
) -> None:
    _, client = limited
    answers = [
        (await sign_in(client, f"nobody{i}@example.com", "wrong-guess-00")).status_code
        for i in range(6)
    ]
    assert answers == [401] * 5 + [429]


async def test_the_fleet_shares_one_count_through_redis() -> None:
    redis = Redis.from_url(REDIS_URL)
    try:
        name = f"test-{uuid.uuid4().hex[:8]}"
        one = RateLimit(name=name, window_s=60, redis=redis)
        other = RateLimit(name=name, window_s=60, redis=redis)  # another process's
        budget = [Budget("email:a@example.com", 2)]
        await one.record_failure(["email:a@example.com"])
        await other.record_failure(["email:a@example.com"])
        assert await one.retry_after(budget) is not None
        assert await RateLimit(name=name, window_s=60).retry_after(budget) is None  # memory
    finally:
        await redis.aclose()


async def test_without_redis_reachable_the_count_falls_back_to_the_process() -> None:
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        limit = RateLimit(name="fallback", window_s=60, redis=unreachable)
        for _ in range(2):
            await limit.record_failure(["client:198.51.100.1"])
        assert await limit.retry_after([Budget("client:198.51.100.1", 2)]) is not None
    finally:
        await unreachable.aclose()


def test_the_decoy_hash_is_made_before_the_first_unknown_e_mail() -> None:
    class NoMoreHashing(PasswordHasher):
        def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
            raise AssertionError("the decoy was hashed on demand")

    passwords = Passwords(time_cost=1, memory_kib=1024)
    passwords._hasher = NoMoreHashing(time_cost=1, memory_cost=1024)
    asyncio.run(passwords.verify_nothing("whatever-they-typed"))


async def test_a_hash_made_with_old_costs_is_replaced_at_sign_in(
    client: AsyncClient, resources: Resources, alice: User
) -> None:
    old = PasswordHasher(time_cost=2, memory_cost=2048).hash(PASSWORD)
    async with resources.db.write() as conn:
        await conn.execute(
            text("UPDATE customer SET password_hash = :h WHERE id = :id"),
            {"h": old, "id": alice.id},
        )
    assert (await sign_in(client, alice.email, PASSWORD)).status_code == 200
    async with resources.db.read() as conn:
        stored = (
            await conn.execute(
                text("SELECT password_hash FROM customer WHERE id = :id"), {"id": alice.id}
            )
        ).scalar_one()
    assert stored != old
    assert not resources.passwords.needs_rehash(stored)
    assert (await sign_in(client, alice.email, PASSWORD)).status_code == 200


async def test_a_flood_of_hashing_leaves_the_shared_threads_free() -> None:
    """Twenty slow hashes queue on the passwords' own thread; work on the event loop's default
    threads (file reads, secret look-ups) does not wait behind them."""
    passwords = Passwords(time_cost=2, memory_kib=16384, threads=1)
    flood = [asyncio.ensure_future(passwords.hash(f"pw-{i}-long-enough")) for i in range(20)]
    await asyncio.sleep(0)
    await asyncio.to_thread(lambda: None)
    hashes_done_first = sum(task.done() for task in flood)
    await asyncio.gather(*flood)
    passwords.close()
    assert hashes_done_first < len(flood) // 2
