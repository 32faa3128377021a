"""Which server answers a read (stage 4): replica health and lag, and read-your-writes.

Positions. A position is a point in the primary's write-ahead log (an LSN, as an integer). After a
write transaction commits, `Database.write` reads the primary's WAL insert position: it is at or
past the end of the commit record, so a replica that has replayed up to it sees the write. (A
position read inside the transaction would come before the commit record, which is what makes
the write visible: too early.) A replica's position is `pg_last_wal_replay_lsn()`.

Read-your-writes across the fleet. The position travels with the client, never in one process's
memory: `ReadYourWrites` (an ASGI middleware in app/web/replicas.py) answers a request that wrote
with a signed token (`PositionTokens`: HMAC-SHA256 with the JWT key) in the `X-Shop-Read-After`
header and the `shop_read_after` cookie. A request that brings it back (either one, on any
instance) reads only from a replica whose position has reached it, else from the primary. When the
last poll found every replica behind it, they are asked again on the spot (`choose_caught_up`, one
ask at a time per process, waited for at most 50 ms): replay takes milliseconds, the poll's period
half a second, and without the ask most of a customer's reads after a write went to the primary.
The token holds nothing secret and cannot be forged, so a client can only ask for reads at least as
fresh as its own writes. Keeping it per customer in Redis instead would cost a cache round trip on
every authenticated read, and would not cover a sign-up followed by a sign-in, where no customer is
known yet. Stage 8's order shards are servers of their own, each with its own log and replicas: a
position is kept per write database (main's, then each shard's by number), and the token carries
them all, `<main>-<shard 1>-<shard 2>.<mac>` (empty for none), so that a read of a customer's
orders on their shard's replica waits for that shard's writes only.

How the position reaches the reads: a context variable (`ClientPosition`), set by the middleware
for each request and read only by `Database`. Passing it explicitly would add a parameter to every
service of every module (orders, delivery, accounting, the account check behind every token) and a
return value to every write, for a concern none of them has: "not before" is a property of the
request, like its deadline. Code outside a request (the CLI, tests) sees no position and reads as
an anonymous visitor does.

Health. `ReplicaSet.start` (from `Database.open`, so in the app's lifespan) checks once, then a
background task polls the primary's position and each replica's every `check_s` seconds. A
replica's lag is how long ago the primary was at the position the replica has now replayed (from
the history of the primary's positions, so an idle primary shows no lag, unlike
`now() - pg_last_xact_replay_timestamp()`). A replica that lags more than `max_lag_s`, fails a
poll, or fails a read with a lost connection is skipped until a poll finds it healthy again.
Reads without a position (anonymous visitors, the catalog) go to any healthy replica, so what
they see is at most about `max_lag_s + check_s` old. The metrics count reads by the server that
answered (`shop_db_reads`) and reads that passed the replicas over (`shop_db_replica_skips`:
`behind` the client's position, `unhealthy`, `down` for a lost connection, `busy` for a replica
pool with no free connection in time).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import hashlib
import hmac
import itertools
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("shop.replicas")

HEADER = "X-Shop-Read-After"
COOKIE = "shop_read_after"
_HEADER_KEY = HEADER.lower().encode()

CATCH_UP_WAIT_S = 0.05
"""How long a read that is ahead of every replica's last known position waits for them to be
asked again, before it goes to the primary."""
CATCH_UP_EVERY_S = 0.01
"""At most one such ask per process this often: a replica that truly lags is not asked on every
read."""

# Integer positions: pg_lsn minus '0/0' is the LSN as a number (numeric).
PRIMARY_POSITION_SQL = "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"
_REPLICA_POSITION_SQL = (
    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
    "ELSE pg_current_wal_insert_lsn() END - '0/0'::pg_lsn"
)


# --- the request's position -------------------------------------------------------------------


@dataclass(slots=True)
class ClientPosition:
    """What one request's reads must include: the client's own writes, as far as it told us
    (its token), and those of this request. Positions are per write database: `not_before`
    is the main primary's, `shards` stage 8's order shards' by number (each shard is a
    server of its own, its positions another write-ahead log's)."""

    not_before: int = 0
    shards: dict[int, int] = field(default_factory=dict)
    wrote: bool = False

    def advance(self, position: int, *, shard: int = 0) -> None:
        """A write of this request committed; the primary (`shard` 0: main's, else that
        shard's) was at `position` just after."""
        if shard:
            self.shards[shard] = max(self.shards.get(shard, 0), position)
        else:
            self.not_before = max(self.not_before, position)
        self.wrote = True

    def at(self, shard: int = 0) -> int:
        """The position reads of `shard` (0: main) must have replayed."""
        return self.shards.get(shard, 0) if shard else self.not_before

    def vector(self) -> list[int]:
        """Main's position, then each shard's in number order (0 where none), as a token
        carries them."""
        return [
            self.not_before,
            *(self.shards.get(n, 0) for n in range(1, max(self.shards, default=0) + 1)),
        ]


_CURRENT: ContextVar[ClientPosition | None] = ContextVar("shop_client_position", default=None)


def current_position() -> ClientPosition | None:
    """The position of the request being served; None outside a request."""
    return _CURRENT.get()


@contextmanager
def client_position(not_before: int | Sequence[int] = 0) -> Iterator[ClientPosition]:
    """Reads in the block see every write committed before `not_before` (main's position, or
    a token's vector: main's, then each shard's), and the block's own."""
    vector = [not_before] if isinstance(not_before, int) else list(not_before) or [0]
    position = ClientPosition(vector[0], {n: p for n, p in enumerate(vector[1:], 1) if p})
    token = _CURRENT.set(position)
    try:
        yield position
    finally:
        _CURRENT.reset(token)


def position_now() -> int:
    """The position the request being served must read at: past its own writes and those its
    client's token names; 0 (anything will do) outside a request or without replicas."""
    position = _CURRENT.get()
    return position.not_before if position is not None else 0


@contextmanager
def reading_after(not_before: int) -> Iterator[None]:
    """Reads in the block come from a server that has replayed up to `not_before` (and the
    request's own position, whichever is further); a block whose reads need no such server
    (`not_before` 0) is left as it is."""
    if not_before <= 0:
        yield
        return
    with client_position(max(not_before, position_now())):
        yield


class PositionTokens:
    """Signs and checks the read-after token: `<positions>.<HMAC-SHA256, 128 bits>`, the
    positions in hex separated by `-` (a cookie may not hold commas): main's first, then each
    order shard's in number order (empty for none), so that without shards a token is
    `<main's position>.<mac>`."""

    def __init__(self, key: str, *, max_age_s: int = 60) -> None:
        self._key = key.encode()
        self.max_age_s = max_age_s
        """How long the cookie lives: a position older than the lag bound is reached by every
        healthy replica anyway."""

    def sign(self, positions: int | Sequence[int]) -> str:
        vector = [positions] if isinstance(positions, int) else list(positions) or [0]
        parts = [format(vector[0], "x"), *(format(p, "x") if p else "" for p in vector[1:])]
        text = "-".join(parts).rstrip("-").encode()
        return (text + b"." + self._mac(text)).decode()

    def read(self, token: bytes) -> list[int]:
        """The positions in a token (main's first); [0] (no constraint) for anything not
        signed by us."""
        text, _, mac = token.strip().partition(b".")
        if not 0 < len(text) <= _TOKEN_TEXT_MAX or not hmac.compare_digest(mac, self._mac(text)):
            return [0]
        parts = text.split(b"-")
        if len(parts) > 1 + TOKEN_SHARDS or any(len(part) > 16 for part in parts):
            return [0]
        try:
            return [int(part, 16) if part else 0 for part in parts]
        except ValueError:
            return [0]

    def _mac(self, text: bytes) -> bytes:
        digest = hmac.new(self._key, b"shop-read-after:" + text, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=")

    def from_headers(self, headers: Sequence[tuple[bytes, bytes]]) -> list[int]:
        """The newest position per database in the request's header and cookie ([0] without
        one)."""
        seen = [0]
        for name, value in headers:
            if name == _HEADER_KEY:
                seen = _newest(seen, self.read(value))
            elif name == b"cookie" and COOKIE.encode() in value:
                for part in value.split(b";"):
                    key, _, token = part.strip().partition(b"=")
                    if key == COOKIE.encode():
                        seen = _newest(seen, self.read(token))
        return seen


TOKEN_SHARDS = 64
"""The most order shards a token carries positions for."""
_TOKEN_TEXT_MAX = 17 * (1 + TOKEN_SHARDS)
"""Main's position and each shard's, 16 hex digits and a separator each."""


def _newest(one: Sequence[int], other: Sequence[int]) -> list[int]:
    longest = max(len(one), len(other))
    padded = [list(one) + [0] * (longest - len(one)), list(other) + [0] * (longest - len(other))]
    return [max(a, b) for a, b in zip(*padded, strict=True)]


# --- replicas and their health ----------------------------------------------------------------


@dataclass(eq=False)
class Replica:
    """One read replica: its engines and what the last poll found."""

    name: str
    """Its address without a password, for logs and metrics."""
    url: str
    """libpq URL of the health poll's own connection."""
    engine: AsyncEngine
    pool: AsyncConnectionPool[Any] | None
    healthy: bool = False
    position: int = 0
    lag_s: float | None = None
    problem: str | None = "not checked yet"
    _probe: psycopg.AsyncConnection[Any] | None = field(default=None, repr=False)
    _polling: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    """One poll of this replica at a time: the watch and a catch-up share its connection."""


class ReplicaSet:
    """The replicas of a process, which of them may take a read, and the poll that decides it."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        primary_url: str,
        max_lag_s: float = 5.0,
        check_s: float = 0.5,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self.replicas = list(replicas)
        self.max_lag_s = max_lag_s
        self.check_s = check_s
        self._primary_url = primary_url
        self._primary: psycopg.AsyncConnection[Any] | None = None
        self._options = {**(connect_options or {}), "connect_timeout": 2}
        self._options.pop("prepare_threshold", None)
        # The primary's positions of the last max_lag_s and a bit: (monotonic time, position).
        self._history: deque[tuple[float, int]] = deque()
        self._catching_up: asyncio.Task[None] | None = None
        self._caught_up_at = 0.0
        self._turn = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def __bool__(self) -> bool:
        return bool(self.replicas)

    def choose(self, not_before: int = 0) -> Replica | None:
        """The next healthy replica that has replayed `not_before`, round robin; None: use the
        primary. Cheap: no I/O, only what the last poll found."""
        count = len(self.replicas)
        if not count:
            return None
        start = next(self._turn)
        for step in range(count):
            replica = self.replicas[(start + step) % count]
            if replica.healthy and replica.position >= not_before:
                return replica
        return None

    async def choose_caught_up(self, not_before: int) -> Replica | None:
        """`choose`, but when every healthy replica was behind `not_before` at the last poll,
        ask them again first: a customer's read a moment after their write would otherwise go
        to the primary until the next poll, though the replica replayed the write within
        milliseconds. One ask per process at a time (the others wait for it), at most one
        per CATCH_UP_EVERY_S, and a read waits for it at most CATCH_UP_WAIT_S before it goes
        to the primary."""
        replica = self.choose(not_before)
        if replica is not None or not not_before:
            return replica
        if not any(r.healthy for r in self.replicas):
            return None
        task = self._catching_up
        if task is None or task.done():
            if time.monotonic() - self._caught_up_at < CATCH_UP_EVERY_S:
                return None
            task = self._catching_up = asyncio.create_task(self._catch_up())
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), CATCH_UP_WAIT_S)
        return self.choose(not_before)

    async def wait_for(self, position: int, *, timeout_s: float) -> bool:
        """Poll until every healthy replica has replayed `position`; False if one had not
        after `timeout_s` (a replica found unhealthy meanwhile takes no reads, so it is not
        waited for)."""
        deadline = time.monotonic() + timeout_s
        while True:
            await self._catch_up()
            if all(r.position >= position for r in self.replicas if r.healthy):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(min(self.check_s, 0.1))

    async def _catch_up(self) -> None:
        try:
            await asyncio.gather(*(self._check_replica(r) for r in self.replicas if r.healthy))
        finally:
            self._caught_up_at = time.monotonic()

    def report_failure(self, replica: Replica, exc: BaseException) -> None:
        """A read lost its connection to `replica`: skip it until a poll finds it healthy."""
        if replica.healthy:
            log.warning("replica %s skipped after a failed read: %s", replica.name, exc)
        replica.healthy = False
        replica.problem = f"read failed: {type(exc).__name__}"

    def status(self) -> list[dict[str, Any]]:
        """What the last poll found, per replica (for operators and tests)."""
        return [
            {
                "name": r.name,
                "healthy": r.healthy,
                "position": r.position,
                "lag_s": r.lag_s,
                "problem": r.problem,
            }
            for r in self.replicas
        ]

    async def start(self) -> None:
        """Poll once (so that the first reads already know the replicas), then every check_s."""
        if not self.replicas or self._task is not None:
            return
        await self.check()
        self._task = asyncio.create_task(self._watch(), name="shop-replica-health")

    async def stop(self) -> None:
        if self._catching_up is not None:
            self._catching_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._catching_up
            self._catching_up = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for conn in [self._primary, *(r._probe for r in self.replicas)]:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._primary = None
        for replica in self.replicas:
            replica._probe = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                await self.check()
            except Exception:  # the watch must outlive any surprise
                log.exception("replica health check failed")

    async def check(self) -> None:
        """One poll: the primary's position, then every replica's, concurrently."""
        timeout = self._poll_timeout_s
        try:
            self._primary, position = await asyncio.wait_for(
                self._position(self._primary, self._primary_url, PRIMARY_POSITION_SQL), timeout
            )
            now = time.monotonic()
            self._history.append((now, position))
            while len(self._history) > 1 and self._history[0][0] < now - self.max_lag_s - 2 * (
                self.check_s + 1
            ):
                self._history.popleft()
        except Exception as exc:
            # Without a new sample lags are measured against the last ones: a replica that
            # has everything the primary last had still counts as caught up.
            await _discard(self._primary)
            self._primary = None
            log.debug("primary position unavailable: %s", exc)
        await asyncio.gather(*(self._check_replica(r) for r in self.replicas))

    @property
    def _poll_timeout_s(self) -> float:
        return max(2.0, 2 * self.check_s)

    async def _check_replica(self, replica: Replica) -> None:
        async with replica._polling:
            await self._poll_replica(replica)

    async def _poll_replica(self, replica: Replica) -> None:
        try:
            replica._probe, position = await asyncio.wait_for(
                self._position(replica._probe, replica.url, _REPLICA_POSITION_SQL),
                self._poll_timeout_s,
            )
        except Exception as exc:
            await _discard(replica._probe)
            replica._probe = None
            self._mark(replica, healthy=False, problem=f"poll failed: {type(exc).__name__}")
            return
        replica.position = position
        replica.lag_s = self.lag_of(position)
        if replica.lag_s > self.max_lag_s:
            problem = f"lag {replica.lag_s:.1f} s over {self.max_lag_s:g} s"
            self._mark(replica, healthy=False, problem=problem)
            return
        if not replica.healthy and replica.pool is not None:
            # Its pooled connections may predate a restart: drop the dead ones before reads
            # come back, or the first reads would fail it again.
            with contextlib.suppress(Exception):
                await replica.pool.check()
        self._mark(replica, healthy=True, problem=None)

    def lag_of(self, position: int) -> float:
        """Seconds since the primary was last seen at or before `position` (0 when `position`
        is at or past the primary's last known position; infinite when older than the
        history kept)."""
        if not self._history or position >= self._history[-1][1]:
            return 0.0
        positions = [p for _, p in self._history]
        index = bisect.bisect_right(positions, position) - 1
        if index < 0:
            return float("inf")
        return time.monotonic() - self._history[index][0]

    def _mark(self, replica: Replica, *, healthy: bool, problem: str | None) -> None:
        if healthy and not replica.healthy:
            log.info("replica %s takes reads (lag %.2f s)", replica.name, replica.lag_s or 0.0)
        elif not healthy and replica.healthy:
            log.warning("replica %s skipped: %s", replica.name, problem)
        replica.healthy = healthy
        replica.problem = problem

    async def _position(
        self, conn: psycopg.AsyncConnection[Any] | None, url: str, sql: str
    ) -> tuple[psycopg.AsyncConnection[Any], int]:
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True, **self._options)
        try:
            row = await (await conn.execute(sql)).fetchone()
        except BaseException:
            await _discard(conn)
            raise
        return conn, int(row[0]) if row is not None and row[0] is not None else 0


async def _discard(conn: psycopg.AsyncConnection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()
