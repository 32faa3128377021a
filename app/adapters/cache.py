"""A Redis cache that is never an outage: short timeouts, single-flight refills, a circuit breaker.

Generic on purpose: the modules that use it own their keys and decide what invalidates them.
Values are bytes (the serialised answer), so a hit costs one round trip and no re-serialisation.

Guarantees:

- Every call to Redis is bounded by `timeout_s`. A call that fails or times out trips the
  breaker: for the next `backoff_s` seconds nothing goes to Redis (reads are misses, writes are
  skipped) while a background task pings it; the first answered ping closes the breaker. Nothing
  here raises because of Redis, so a caller falls back to its database and the client sees no
  error.
- `read_through` refills a missing key once per process however many requests want it at the same
  moment: the first runs the fill, the others await the same task (single flight).
- Versioned keys: a key embeds a generation number kept in Redis; a writer INCRs the generation
  after its commit, and every key of the old generation is dead at once. A reader learns the
  generation in the same round trip as the value (MGET of the generation and the key at the
  generation this process saw last), and a fill is stored under the generation read before the
  database was queried, so a fill that raced a write can never be served after that write.
- A writer may leave a position with the new generation (an opaque integer: the database's
  WAL position after its commit), and every fill is handed the highest one, so that it reads
  from a server that has the write (a replica that lags would refill the cache with the old
  answer, under the new generation).
- An optional in-process layer in front of Redis (`local_s` > 0) keeps each answer at most
  `local_s` seconds, under the same versioned key. A writer PUBLISHes every new generation in
  the same script as its INCR; every process listens, and a heard generation makes the older
  copies unreachable at once. The layer is used only while that subscription is up and the
  breaker closed, never for a request that carries a position of its own write (stage 4's
  read-your-writes token), and never for what changed while the process was not listening
  (it starts empty at each (re)subscription). A copy lives at most `local_s` and never past
  the Redis entry it was read from (the look-up returns the entry's remaining time to live with
  its value), so an answer's age stays within `ttl_s` whichever layer serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.adapters.observability import CACHE, timed
from app.adapters.replicas import current_position

log = logging.getLogger("shop.cache")

T = TypeVar("T")

_FAILURES = (RedisError, OSError, TimeoutError)
_BROKEN = Exception
"""What a call may raise besides _FAILURES: redis-py lets a connection whose transport closed
under it (a handshake cut off by a timeout, say) fail with RuntimeError or AttributeError.
Whatever it is, the cache treats it as Redis being unavailable, never as the request's error."""

# INCR the generation and raise its "not before" position to the writer's, in one round trip.
# Both are kept for GENERATION_TTL_S after the last write, far longer than any entry lives: a
# generation that expired starts again at 0, where no entry is left.
_NEW_GENERATION = """
local number = redis.call('INCR', KEYS[1])
if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[2]) or '0') then
    redis.call('SET', KEYS[2], ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. number)
return number
"""
GENERATION_TTL_S = 7 * 24 * 3600

# The generation, its position, and the value at the generation this process knows, with the
# milliseconds the value has left to live (a copy in memory must not outlive it): one round trip.
_LOOKUP = """
local found = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3])
found[4] = redis.call('PTTL', KEYS[3])
return found
"""


def _bytes(value: object) -> bytes | None:
    # The client does not decode responses: values come back as the bytes that were stored.
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


class _Unavailable(Exception):
    """Redis was not asked (breaker open) or did not answer in time."""


@dataclass(slots=True)
class CacheStats:
    """Counters of this process, for tests, logs and the load test's hit ratio."""

    hits: int = 0
    misses: int = 0
    local_hits: int = 0
    """Hits answered by the in-process layer, without a round trip (also counted in hits)."""
    refills: int = 0
    """Fills actually run (one per cold key per process, however many requests wanted it)."""
    coalesced: int = 0
    """Requests that awaited another request's fill instead of running their own."""
    failures: int = 0
    """Calls that failed or timed out (each one opens the breaker)."""
    skipped: int = 0
    """Calls not sent to Redis because the breaker was open."""


def bounded_client(url: str, *, timeout_s: float) -> Redis:
    """A Redis client whose commands give up after about `timeout_s`, without retries: a
    stalled server costs a caller that long, not redis-py's default of seconds per try."""
    return Redis.from_url(
        url,
        socket_timeout=max(timeout_s, 0.001),
        # Connecting happens in the cache's background reconnect as well; a TLS handshake may
        # need longer than a command. A cache request still waits at most timeout_s (_call).
        socket_connect_timeout=max(timeout_s, 1.0),
        retry=Retry(NoBackoff(), 0),
    )


def namespace_for(address: str) -> str:
    """A short, stable key prefix for the data set at `address` (a database URL without its
    password): two shops on different databases can share one Redis without reading each
    other's answers, while every process of one fleet shares its entries."""
    return hashlib.sha256(address.encode()).hexdigest()[:12]


class Cache:
    """Bytes in Redis under `shop:<namespace>:...` keys, each with a time to live."""

    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str,
        ttl_s: float,
        timeout_s: float = 0.05,
        backoff_s: float = 2.0,
        local_s: float = 0.0,
        local_entries: int = 10_000,
        subscriber: Redis | None = None,
    ) -> None:
        if ttl_s >= GENERATION_TTL_S:
            raise ValueError(f"entries must live less than a generation ({GENERATION_TTL_S} s)")
        if local_s and (subscriber is None or local_s > ttl_s):
            raise ValueError("an in-process layer needs a subscriber and local_s <= ttl_s")
        self._redis = redis
        self._lookup_script = redis.register_script(_LOOKUP)
        self.local_s = local_s
        self._local_entries = local_entries
        self._local: dict[str, tuple[float, bytes]] = {}
        self._subscriber = subscriber
        self._listener: asyncio.Task[None] | None = None
        self._listening = False
        self._heard = 0
        """Generations heard (and resubscriptions): a look-up that saw it change meanwhile
        may have read an older generation, and leaves the in-process layer alone."""
        self._prefix = f"shop:{namespace}:"
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.stats = CacheStats()
        self._open = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[Any]] = {}
        self._generations: dict[str, int] = {}
        self._unannounced: dict[str, int] = {}
        """Generations (and positions) whose INCR failed: sent as soon as Redis answers."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str,
        ttl_s: float,
        timeout_s: float,
        backoff_s: float,
        local_s: float = 0.0,
        local_entries: int = 10_000,
    ) -> Cache:
        """A cache with a client of its own (see `bounded_client`): the breaker, not the
        client, decides when to try again. With `local_s`, a second connection listens for
        new generations (it waits on the server without a timeout: idle is its normal state)."""
        subscriber = (
            Redis.from_url(url, socket_connect_timeout=max(timeout_s, 1.0), socket_keepalive=True)
            if local_s
            else None
        )
        return cls(
            bounded_client(url, timeout_s=timeout_s),
            namespace=namespace,
            ttl_s=ttl_s,
            timeout_s=timeout_s,
            backoff_s=backoff_s,
            local_s=local_s,
            local_entries=local_entries,
            subscriber=subscriber,
        )

    def key(self, *parts: object) -> str:
        return self._prefix + ":".join(str(p) for p in parts)

    @property
    def available(self) -> bool:
        """False while the breaker is open (Redis failed recently and is being retried)."""
        return not self._open

    # --- the one way to Redis ------------------------------------------------------------------

    async def _call(self, command: Callable[[], Awaitable[T]]) -> T:
        if self._open:
            self.stats.skipped += 1
            raise _Unavailable
        try:
            with timed("cache"):
                async with asyncio.timeout(self.timeout_s):
                    return await command()
        except _BROKEN as exc:
            self._trip(exc)
            raise _Unavailable from exc

    def _trip(self, exc: BaseException) -> None:
        self.stats.failures += 1
        # What this process holds may be invalidated while it cannot hear about it.
        self._local.clear()
        if self._open:
            return
        self._open = True
        log.warning(
            "cache unavailable (%s); serving from the database, retrying every %.1f s",
            type(exc).__name__,
            self.backoff_s,
        )
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        # Connections opened before the failure are dead if the server restarted: drop them
        # all, or each would fail one request (and trip the breaker again) after it closes.
        with contextlib.suppress(*_FAILURES):
            await self._redis.connection_pool.disconnect()
        while True:
            await asyncio.sleep(self.backoff_s)
            try:
                async with asyncio.timeout(max(self.timeout_s, 1.0)):
                    await self._redis.ping()
                async with asyncio.timeout(max(self.timeout_s, 1.0)):
                    for generation, not_before in sorted(self._unannounced.items()):
                        await self._announce(generation, not_before)
                        del self._unannounced[generation]
            except _FAILURES:
                continue
            self._open = False
            log.warning("cache reachable again")
            return

    # --- plain operations: none of them raises because of Redis ---------------------------------

    async def get(self, key: str) -> bytes | None:
        """The value, or None on a miss or when Redis is unavailable."""
        try:
            return _bytes(await self._call(lambda: self._redis.get(key)))
        except _Unavailable:
            return None

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        """Store `value` for `ttl_s` (default: the cache's); False when Redis is unavailable."""
        ttl_ms = max(1, int((ttl_s if ttl_s is not None else self.ttl_s) * 1000))
        try:
            await self._call(lambda: self._redis.set(key, value, px=ttl_ms))
        except _Unavailable:
            return False
        return True

    async def delete(self, *keys: str) -> bool:
        try:
            await self._call(lambda: self._redis.delete(*keys))
        except _Unavailable:
            return False
        return True

    async def check(self) -> str:
        """'ok', or 'degraded: <why>' (for /readyz: the shop works without its cache)."""
        if self._open:
            return "degraded: unavailable, retrying in the background"
        try:
            await self._call(self._redis.ping)
        except _Unavailable as exc:
            return f"degraded: {type(exc.__cause__).__name__}"
        return "ok"

    async def close(self) -> None:
        for background in (self._reconnecting, self._listener):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        for task in list(self._inflight.values()):
            task.cancel()
        await self._redis.aclose()
        if self._subscriber is not None:
            await self._subscriber.aclose()

    # --- generations and read-through ---------------------------------------------------------

    async def new_generation(self, generation: str, *, not_before: int = 0) -> bool:
        """Make every key of `generation` dead (call it after the commit that changed them).

        `not_before` is handed to every later fill of the generation (the highest any writer
        left): where the fill must read from for the write to be in its answer.
        False when Redis is unavailable: the INCR is then sent by the background reconnect as
        soon as Redis answers again, and until then the old entries live at most their time
        to live (other processes may still reach Redis and serve them).
        """
        try:
            number = await self._call(lambda: self._announce(generation, not_before))
        except _Unavailable:
            self._unannounced[generation] = max(not_before, self._unannounced.get(generation, 0))
            return False
        self._generations[generation] = number
        return True

    async def _announce(self, generation: str, not_before: int) -> int:
        keys = (self.key(generation), self.key(generation, "not-before"))
        self._heard += 1
        self._local.clear()  # this process's own write: at once, whatever the subscription does
        number = await self._redis.eval(
            _NEW_GENERATION,
            2,
            *keys,
            str(not_before),
            str(GENERATION_TTL_S),
            self._channel,
            generation,
        )
        # Until its own message comes back, nothing read before the INCR may be kept.
        self._heard += 1
        self._local.clear()
        return int(number)

    # --- the in-process layer -------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """True while this process hears new generations (the in-process layer may serve)."""
        return self._listening

    @property
    def _channel(self) -> str:
        return self.key("generations")

    def _local_usable(self) -> bool:
        """Whether this request may be answered from (and fill) the in-process layer."""
        if not self.local_s:
            return False
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        if not self._listening or self._open:
            return False
        position = current_position()
        return position is None or position.not_before <= 0

    def _remember(self, name: str, value: bytes, heard: int, expires: float) -> None:
        """Keep a copy until `expires` (monotonic), at most local_s from now."""
        if heard != self._heard:
            return  # a generation was announced meanwhile: `name` may be an old one
        now = time.monotonic()
        expires = min(expires, now + self.local_s)
        if expires <= now:
            return
        # The oldest copies go first, past the bound or expired, without scanning the rest
        # (re-inserting a key moves it to the end); a copy that expired behind a younger one
        # waits its turn, and a look-up never serves it.
        self._local.pop(name, None)
        while self._local:
            oldest = next(iter(self._local))
            if self._local[oldest][0] > now and len(self._local) < self._local_entries:
                break
            del self._local[oldest]
        self._local[name] = (expires, value)

    async def _listen(self) -> None:
        """Hear every new generation of the fleet; resubscribe after a failure."""
        assert self._subscriber is not None
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        # What changed while nobody listened is unknown: start empty.
                        self._local.clear()
                        self._generations.clear()
                        self._heard += 1
                        self._listening = True
                    elif message["type"] == "message":
                        text = (_bytes(message["data"]) or b"").decode()
                        generation, _, number = text.rpartition(" ")
                        self._heard += 1
                        self._generations[generation] = int(number)
                        self._local.clear()
            except _BROKEN:
                pass
            finally:
                self._listening = False
                self._local.clear()
                # Typed through a variable: redis 8.2 types PubSub.aclose, earlier releases do not,
                # and the lock file and `make test-lowest` run both.
                close: Callable[[], Awaitable[object]] = pubsub.aclose
                with contextlib.suppress(*_FAILURES):
                    await close()
            await asyncio.sleep(self.backoff_s)

    async def _lookup(
        self, generation: str, key: Callable[[int], str]
    ) -> tuple[int, int, bytes | None, float]:
        """The current generation, its position, the value at it and when that value expires
        (monotonic): one round trip when this process already knows the generation (the usual
        case), two right after a write."""
        known = self._generations.get(generation, -1)
        heard = self._heard
        names = [self.key(generation), self.key(generation, "not-before"), key(known)]
        asked = time.monotonic()
        raw, position, value, ttl_ms = await self._call(lambda: self._lookup_script(keys=names))
        current = int(raw or 0)
        if current != known:
            names[2] = key(current)
            _, _, value, ttl_ms = await self._call(lambda: self._lookup_script(keys=names))
        if heard == self._heard:  # else a newer one was heard while this one travelled
            self._generations[generation] = current
        # An entry without a time to live (-1) is not one this cache stored: no copy of it.
        expires = asked + int(ttl_ms) / 1000 if int(ttl_ms) > 0 else asked
        return current, int(position or 0), _bytes(value), expires

    async def read_through(
        self,
        *,
        generation: str,
        key: Callable[[int], Sequence[object]],
        fill: Callable[[int], Awaitable[bytes]],
        ttl_s: float | None = None,
    ) -> bytes:
        """The cached value of `key(generation number)`, or `fill(not_before)`'s, stored for
        next time (`not_before`: the highest position writers left, see `new_generation`).

        `fill` runs once per process for concurrent misses of the same key; its exception
        (a NotFound, say) reaches every request that waited for it, and nothing is stored.
        When Redis is unavailable `fill(0)` runs for each request, as if there were no cache.
        """
        local = self._local_usable()
        if local:
            known = self._generations.get(generation)
            if known is not None:
                entry = self._local.get(self.key(*key(known)))
                if entry is not None and entry[0] > time.monotonic():
                    self.stats.hits += 1
                    self.stats.local_hits += 1
                    CACHE.labels("hit").inc()
                    return entry[1]
        heard = self._heard
        try:
            number, not_before, value, expires = await self._lookup(
                generation, lambda n: self.key(*key(n))
            )
        except _Unavailable:
            CACHE.labels("error").inc()  # failed now, or skipped while the breaker is open
            return await fill(0)
        name = self.key(*key(number))
        if value is not None:
            self.stats.hits += 1
            CACHE.labels("hit").inc()
            if local:
                self._remember(name, value, heard, expires)
            return value
        self.stats.misses += 1
        CACHE.labels("miss").inc()

        lives = ttl_s if ttl_s is not None else self.ttl_s

        async def refill() -> tuple[bytes, float]:
            self.stats.refills += 1
            read_at = time.monotonic()  # the answer is younger than this
            body = await fill(not_before)
            await self.set(name, body, ttl_s=lives)
            return body, read_at

        body, read_at = await self.single_flight(name, refill)
        if local:
            self._remember(name, body, heard, read_at + lives)
        return body

    async def single_flight(self, name: str, fill: Callable[[], Awaitable[T]]) -> T:
        """`fill()`, run once for every caller asking for `name` while it runs.

        The fill is a task of its own: a caller that is cancelled (its client went away) does
        not cancel it for the others.
        """
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.ensure_future(fill())
            self._inflight[name] = task
            task.add_done_callback(lambda done: self._finished(name, done))
        else:
            self.stats.coalesced += 1
        result: T = await asyncio.shield(task)
        return result

    def _finished(self, name: str, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(name) is task:
            del self._inflight[name]
        if not task.cancelled():
            task.exception()  # retrieved: a fill that failed with nobody waiting is not logged
