"""Fixed-window counters that throttle repeated failures (sign-in guessing), shared by the fleet
through Redis when it is configured, kept per process otherwise.

Only failures are counted, so a load test that signs thousands of users in from one address is
never throttled, while a guesser is stopped after a handful of tries.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("shop.ratelimit")


@dataclass(frozen=True, slots=True)
class Budget:
    """At most `limit` failures counted under `key` per window."""

    key: str
    limit: int


class RateLimit:
    """Counts failures per key in windows of `window_s` seconds.

    With Redis the counts are shared by every process of the fleet; when Redis cannot be
    reached the counts fall back to this process (with a warning) rather than refusing every
    sign-in.
    """

    max_local_keys = 100_000

    def __init__(self, *, name: str, window_s: int, redis: Redis | None = None) -> None:
        self._name = name
        self._window_s = window_s
        self._redis = redis
        self._local: dict[str, tuple[int, int]] = {}

    def _window(self) -> tuple[int, int]:
        """The current window's number, and the seconds until the next one starts."""
        now = time.time()
        number = int(now // self._window_s)
        return number, max(1, int((number + 1) * self._window_s - now + 0.999))

    def _redis_key(self, key: str, window: int) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return f"shop:{self._name}:{window}:{digest}"

    async def retry_after(self, budgets: Sequence[Budget]) -> int | None:
        """Seconds to wait when a budget is spent, else None."""
        window, remaining = self._window()
        counts = await self._counts([b.key for b in budgets], window)
        if any(count >= b.limit for count, b in zip(counts, budgets, strict=True)):
            return remaining
        return None

    async def record_failure(self, keys: Sequence[str]) -> None:
        """Count one failure under each key in the current window."""
        window, _ = self._window()
        if self._redis is not None:
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        name = self._redis_key(key, window)
                        pipe.incr(name)
                        pipe.expire(name, self._window_s + 1)
                    await pipe.execute()
                return
            except Exception as exc:  # any failure of Redis: count locally
                await self._unavailable(exc)
        if len(self._local) >= self.max_local_keys:
            self._local = {k: v for k, v in self._local.items() if v[0] == window}
        for key in keys:
            seen_window, count = self._local.get(key, (window, 0))
            self._local[key] = (window, count + 1 if seen_window == window else 1)

    async def _unavailable(self, exc: Exception) -> None:
        log.warning(
            "rate limit %s: Redis unavailable, counting locally: %s: %s",
            self._name,
            type(exc).__name__,
            exc,
        )
        if not isinstance(exc, RedisError):
            # A connection broken under redis-py (its transport closed) would fail every
            # later call: drop the pooled connections, the next call makes a new one.
            assert self._redis is not None
            with contextlib.suppress(Exception):
                await self._redis.connection_pool.disconnect()

    async def _counts(self, keys: Sequence[str], window: int) -> list[int]:
        if self._redis is not None:
            try:
                values = await self._redis.mget([self._redis_key(k, window) for k in keys])
                return [int(v) if v is not None else 0 for v in values]
            except Exception as exc:  # any failure of Redis: count locally
                await self._unavailable(exc)
        counts = []
        for key in keys:
            seen_window, count = self._local.get(key, (window, 0))
            counts.append(count if seen_window == window else 0)
        return counts
