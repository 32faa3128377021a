"""Database engines and connections, made in the app's lifespan and handed to services.

`Database.write()` is a transaction on the primary; `Database.read()` is a read-only connection on
a replica when replicas are configured (stage 4) and one of them may answer this request, on the
primary otherwise. Services choose which one they need; the domains never know whether replicas
exist. Which replica may answer (health, lag, the client's own writes) is app/adapters/replicas.py.

SQLAlchemy builds every statement and the schema. On the hottest paths (a product read, placing
an order) `fetch_all` and `run` hand SQLAlchemy-compiled constants straight to psycopg, as prepared
statements, on a psycopg pool of the driver's own, and, for an order, in pipeline mode
(`Database.pipelined`): `make bench` showed SQLAlchemy's execution layer, its pool's checkout and
one network round trip per statement to be most of an order's cost (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import select
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, cast

import psycopg
from psycopg import pq
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Json
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout
from sqlalchemy import Executable, Insert, Integer, Table, bindparam, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.elements import ClauseElement

from app.adapters.observability import READS, REPLICA_SKIPS, add_time, timed
from app.adapters.replicas import (
    PRIMARY_POSITION_SQL,
    ClientPosition,
    Replica,
    ReplicaSet,
    current_position,
)
from app.kernel.errors import Unavailable

log = logging.getLogger("shop.db")


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # Take transaction control away from the driver so that we can BEGIN IMMEDIATE below.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # A write transaction takes the write lock up front: two writers queue on busy_timeout
    # instead of failing with "database is locked" when a reader upgrades to a writer.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


@dataclass(frozen=True, slots=True)
class ConnectionRules:
    """What every PostgreSQL connection of a process is told when it opens."""

    statement_timeout_ms: int = 15_000
    lock_timeout_ms: int = 5_000
    prepared_statements: bool = True
    connect_timeout_s: int | None = None
    """Give up connecting after this long (libpq's connect_timeout); None: the OS decides."""

    def driver_options(self) -> dict[str, Any]:
        """Keyword arguments of psycopg's connect."""
        options: dict[str, Any] = {
            "options": f"-c statement_timeout={self.statement_timeout_ms} "
            f"-c lock_timeout={self.lock_timeout_ms}"
        }
        if self.connect_timeout_s is not None:
            options["connect_timeout"] = self.connect_timeout_s
        # psycopg prepares a statement by itself after 5 runs; a transaction-pooling proxy
        # would then find it missing on the next server connection.
        return options if self.prepared_statements else {**options, "prepare_threshold": None}


def _time_statements(engine: AsyncEngine) -> None:
    """Count the time of statements SQLAlchemy executes in the request's database time."""

    def before(conn: Any, *_args: Any) -> None:
        conn.info.setdefault("shop_started", []).append(time.perf_counter())

    def after(conn: Any, *_args: Any) -> None:
        add_time("db", time.perf_counter() - conn.info["shop_started"].pop())

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    event.listen(engine.sync_engine, "after_cursor_execute", after)


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    pool_timeout: float = 10.0,
    writer: bool = True,
    autocommit: bool = False,
    rules: ConnectionRules = ConnectionRules(),
) -> AsyncEngine:
    """An async engine; for SQLite, one that serialises writers instead of failing them."""
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **options)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        if writer:
            event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        _time_statements(engine)
        return engine
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
        connect_args=rules.driver_options(),
        **options,
    )
    # A connection is checked as it leaves the pool, so the connections a database restart
    # or failover has closed are replaced instead of failing a request each; by a look at its
    # socket, not SQLAlchemy's pre-ping, a round trip before every transaction (issue
    # "Orders at the limit": one of an order's round trips, on the write primary).
    event.listen(engine.sync_engine, "checkout", _drop_if_closed)
    _time_statements(engine)
    return engine


def _drop_if_closed(
    dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry, _proxy: object
) -> None:
    """Pool checkout: raise DisconnectionError (the pool then discards the connection and
    hands out another, up to three times) when the server has closed it while it sat idle."""
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    if getattr(driver, "pgconn", None) is None:
        return
    closed = _closed_while_idle(driver)
    if closed:
        raise DisconnectionError(closed)


async def _check_idle(driver: Any) -> None:
    """Driver pool checkout: as `_drop_if_closed`, for the driver's own pools (psycopg's pool
    discards a connection whose check raises and hands out another)."""
    closed = _closed_while_idle(driver)
    if closed:
        await driver.close()  # else the pool would take it back as healthy, and offer it again
        raise psycopg.OperationalError(closed)


def _closed_while_idle(driver: Any) -> str | None:
    """Why a pooled psycopg connection is of no more use, or None. An idle connection has
    nothing to read; one the server closed (restart, failover, an administrator's terminate,
    an idle timeout) has its goodbye or the end of the stream waiting, or libpq has already
    marked it bad. Anything unexpected to read also retires it, which costs a new connection,
    never a request. No round trip: a look at the socket."""
    pgconn = driver.pgconn
    if driver.closed or pgconn.status != pq.ConnStatus.OK:
        return "the connection is closed"
    readable, _, _ = select.select([pgconn.socket], [], [], 0)
    return "the server closed the connection while it was idle" if readable else None


def _is_disconnect(exc: psycopg.Error) -> bool:
    """The connection is gone (server restarted, failed over, or shutting down); a statement
    that timed out or waited too long for a lock is not retried."""
    if isinstance(exc, PoolTimeout | PoolClosed):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in {"57P01", "57P02", "57P03"}


# A replica that cannot hand out a connection this fast, or accept one, is passed over for the
# primary: a replica's trouble must not hold a customer's request for the whole pool timeout.
REPLICA_POOL_TIMEOUT_S = 2.0
REPLICA_CONNECT_TIMEOUT_S = 2


def unique_violation(exc: BaseException) -> bool:
    """Whether `exc` is a duplicate key, raised through SQLAlchemy or straight from the driver
    (statements sent with `run` on PostgreSQL)."""
    if isinstance(exc, DBAPIError):
        exc = exc.orig if isinstance(exc.orig, BaseException) else exc
    return isinstance(exc, psycopg.errors.UniqueViolation | sqlite3.IntegrityError)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, raised through SQLAlchemy or from the driver."""
    if isinstance(exc, DBAPIError):
        exc = exc.orig if isinstance(exc.orig, BaseException) else exc
    return exc.sqlstate if isinstance(exc, psycopg.Error) else None


class ShardFenced(Unavailable):
    """A write refused by its logical shard's fence: its transaction did nothing."""


SHARD_MOVING = "SH001"
"""The fence's answer while its logical shard is copied to another database."""
SHARD_MOVED = "SH002"
"""The fence's answer once its logical shard is in another database."""
_FENCE = text("SELECT shop_shard_fence(:logical)").bindparams(bindparam("logical", type_=Integer))


def _replica_failure(exc: psycopg.Error) -> bool:
    """The replica lost the connection (stopped, restarting), or cancelled the statement for a
    conflict with recovery (SQLSTATE 40001 on a standby): the primary can answer instead."""
    return _is_disconnect(exc) or exc.sqlstate == "40001"


class Database:
    """The primary engine and the read engines; one per process, made in the lifespan.

    Reads go to a healthy replica that has replayed the request's position (see
    app/adapters/replicas.py), else to the primary. A read that cannot get a connection to its
    replica, or loses it, is answered by the primary instead, and the replica is skipped until
    its health check passes again.
    """

    def __init__(
        self,
        primary_url: str,
        replica_urls: Sequence[str] = (),
        *,
        pool_size: int = 10,
        max_overflow: int = 10,
        pool_timeout: float = 10.0,
        statement_timeout_ms: int = 15_000,
        lock_timeout_ms: int = 5_000,
        prepared_statements: bool = True,
        replica_max_lag_s: float = 5.0,
        replica_check_s: float = 0.5,
        shard: int = 0,
    ) -> None:
        self.shard = shard
        """Stage 8: the order shard this database is (by number), whose positions a request
        keeps apart from main's (0: main, or a federated database)."""
        rules = ConnectionRules(
            statement_timeout_ms=statement_timeout_ms,
            lock_timeout_ms=lock_timeout_ms,
            prepared_statements=prepared_statements,
        )
        self._prepare = prepared_statements
        self._dialect_ready = False
        sizes: dict[str, Any] = {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "pool_timeout": pool_timeout,
            "rules": rules,
        }
        self.primary = make_engine(primary_url, **sizes)
        # Reads get engines of their own in autocommit: one round trip per query, no BEGIN or
        # ROLLBACK around it, and no isolation-level reset when a connection goes back to the
        # pool. The primary has one too: it takes the reads no replica may answer.
        self._primary_reader = make_engine(primary_url, writer=False, autocommit=True, **sizes)
        postgres = self.dialect == "postgresql"
        # The hottest reads skip SQLAlchemy's execution layer on PostgreSQL: see fetch_all.
        self._primary_fast = _driver_pool(primary_url, rules, pool_size, pool_timeout)
        replica_rules = replace(rules, connect_timeout_s=REPLICA_CONNECT_TIMEOUT_S)
        replica_sizes = {
            **sizes,
            "rules": replica_rules,
            "pool_timeout": min(pool_timeout, REPLICA_POOL_TIMEOUT_S),
        }
        replicas = [
            Replica(
                name=make_url(url).render_as_string(hide_password=True),
                url=_libpq(url),
                engine=make_engine(url, writer=False, autocommit=True, **replica_sizes),
                pool=_driver_pool(url, replica_rules, pool_size, REPLICA_POOL_TIMEOUT_S),
            )
            # Replicas are PostgreSQL streaming replicas; the embedded database has none.
            for url in (replica_urls if postgres else ())
        ]
        self.replicas = ReplicaSet(
            replicas,
            primary_url=_libpq(primary_url),
            max_lag_s=replica_max_lag_s,
            check_s=replica_check_s,
            connect_options=rules.driver_options(),
        )
        self._fast_pools: list[AsyncConnectionPool[Any]] = [
            pool for pool in [self._primary_fast, *(r.pool for r in replicas)] if pool is not None
        ]
        self._reads_on = {
            id(r): READS.labels(f"replica-{n}") for n, r in enumerate(replicas, start=1)
        }
        self._reads_on_primary = READS.labels("primary")

    async def open(self) -> None:
        """Connect to the primary once, open the driver pools, and start the replicas' health
        check (its first round is done when this returns).

        The first connection initialises the dialect (server version and features) that
        compiles the fast path's SQL: compiled before it, some statements come out wrong.
        """
        for pool in self._fast_pools:
            await pool.open(wait=False)
        with contextlib.suppress(OSError, DBAPIError):
            await self._prepare_dialect()
        await self.replicas.start()

    async def _prepare_dialect(self) -> None:
        async with self.primary.connect():
            self._dialect_ready = True

    @property
    def dialect(self) -> str:
        return self.primary.dialect.name

    def pools(self) -> dict[str, Any]:
        """Every connection pool of this process by name, for the metrics."""
        found: dict[str, Any] = {"primary": self.primary.pool, "reads": self._primary_reader.pool}
        for number, replica in enumerate(self.replicas.replicas, start=1):
            found[f"replica-{number}"] = replica.engine.pool
        for number, pool in enumerate(self._fast_pools, start=1):
            found[f"fast-{number}"] = pool
        return found

    def describe(self) -> str:
        """The primary's address without its password, for messages."""
        return self.primary.url.render_as_string(hide_password=True)

    @asynccontextmanager
    async def write(self, *, fence: int | None = None) -> AsyncIterator[AsyncConnection]:
        """A transaction on the primary: committed when the block ends, rolled back on error.

        With `fence` (a logical shard, stage 8's shards), the transaction first takes that
        logical shard's fence (`Databases.shard_write`).

        With replicas, inside a request, the primary's WAL position just after the COMMIT is
        added to the request's position (one more round trip), so that the client's next reads
        see this write wherever they land (app/adapters/replicas.py).
        """
        async with self.primary.connect() as conn:
            async with conn.begin():
                if fence is not None:
                    await run(conn, _FENCE, {"logical": fence})
                yield conn
            position = current_position() if self.replicas else None
            if position is not None:
                await _note_commit(_driver(conn), position, self.shard, autocommit=False)

    @asynccontextmanager
    async def pipelined(self, *, fence: int | None = None) -> AsyncIterator[Tx]:
        """A transaction on the primary for the hottest write (placing an order), as `write`
        but on PostgreSQL on the driver alone: a connection of the primary's driver pool,
        BEGIN, the statements in pipeline mode, COMMIT. Statements sent with `run`, `send`,
        `run_many` and `insert_or_ignore` go out without waiting for each other; a round trip
        happens only when a result is read, and once more for the queued statements and the
        COMMIT together. The handle has no `execute`: SQLAlchemy's own execution cannot read
        results in pipeline mode, and its checkout, greenlet hops and reset were a tenth of an
        order's CPU (docs/performance.md). Elsewhere (the embedded database) this is `write`.
        """
        pool = self._primary_fast
        if pool is None:
            async with self.write(fence=fence) as conn:
                yield conn
            return
        if not self._dialect_ready:
            await self._prepare_dialect()
        async with pool.connection() as driver:
            tx = Pipelined(driver, self.primary.dialect)
            # Out of autocommit for the block: the first statement then begins the transaction
            # in the same message (psycopg's `transaction()` would sync the pipeline twice).
            await driver.set_autocommit(False)
            try:
                async with driver.pipeline():
                    if fence is not None:  # queued: no round trip of its own
                        await send(tx, _FENCE, {"logical": fence})
                    yield tx
                    await driver.commit()
            except BaseException:
                # A statement the server refused (a duplicate key, a lock or statement
                # timeout) leaves the transaction aborted: roll it back here. A connection
                # that cannot be rolled back is broken, and the pool discards it.
                if driver.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                    with contextlib.suppress(psycopg.Error):
                        await driver.rollback()
                raise
            finally:
                try:
                    await driver.set_autocommit(True)
                except psycopg.Error:
                    await driver.close()  # never back in the pool out of autocommit
            position = current_position() if self.replicas else None
            if position is not None:
                await _note_commit(driver, position, self.shard, autocommit=True)

    async def _choose(self) -> Replica | None:
        """The replica for this read, or None for the primary."""
        if not self.replicas:
            return None
        position = current_position()
        not_before = position.at(self.shard) if position is not None else 0
        replica = await self.replicas.choose_caught_up(not_before)
        if replica is None:
            behind = not_before > 0 and any(r.healthy for r in self.replicas.replicas)
            REPLICA_SKIPS.labels("behind" if behind else "unhealthy").inc()
        return replica

    def _count(self, replica: Replica | None) -> None:
        (self._reads_on[id(replica)] if replica is not None else self._reads_on_primary).inc()

    @asynccontextmanager
    async def read(self, *, primary: bool = False) -> AsyncIterator[AsyncConnection]:
        """A read-only connection: on a replica that may answer this request, else the primary.

        `primary=True` reads from the primary whatever the replicas: for a read that must see
        a write committed before it when the request carries no read-after token (a retry
        whose first answer was lost, a sign-in right after a sign-up on another instance).

        A replica that refuses the connection is skipped for the primary. A failure after the
        block has started is not retried (the block may have done anything; the replica is
        skipped from the next read on): use `fetch_all` where a read must survive a replica
        stopping under it.
        """
        replica = None if primary else await self._choose()
        if replica is not None:
            try:
                conn = await replica.engine.connect()
            except (DBAPIError, OSError) as exc:
                self.replicas.report_failure(replica, exc)
                REPLICA_SKIPS.labels("down").inc()
            except SQLAlchemyTimeout:
                REPLICA_SKIPS.labels("busy").inc()
            else:
                self._count(replica)
                try:
                    yield conn
                except DBAPIError as exc:
                    # Too late to answer from the primary, but the next reads need not fail.
                    if exc.connection_invalidated or (
                        isinstance(exc.orig, psycopg.Error) and _is_disconnect(exc.orig)
                    ):
                        self.replicas.report_failure(replica, exc)
                    raise
                finally:
                    await conn.close()
                return
        self._count(None)
        async with self._primary_reader.connect() as conn:
            yield conn

    async def fetch_all(
        self, stmt: Executable, *, primary: bool = False, **params: Any
    ) -> list[Mapping[str, Any]]:
        """Rows of a read-only statement, as mappings, from a replica (or the primary; always
        the primary with `primary=True`, as for `read`).

        The fast read path for the hottest routes: on PostgreSQL the statement is compiled by
        SQLAlchemy once, then run as a prepared statement on the driver's own pool, which
        saves most of the per-request cost of SQLAlchemy's execution layer. Statements must
        take their values as named `bindparam`s and be module-level constants. A read that
        fails on a replica for want of a connection is run again on the primary.
        """
        if self._primary_fast is None:
            async with self.read(primary=primary) as conn:
                return [dict(row) for row in (await conn.execute(stmt, params)).mappings()]
        if not self._dialect_ready:
            await self._prepare_dialect()
        sql, defaults, _ = _compile(stmt, self.primary.dialect)
        values = _adapt(params, defaults)
        replica = None if primary else await self._choose()
        if replica is not None and replica.pool is not None:
            try:
                rows = await self._fetch_fast(replica.pool, sql, values)
            except PoolTimeout:
                REPLICA_SKIPS.labels("busy").inc()
            except psycopg.OperationalError as exc:
                if not _replica_failure(exc):
                    raise
                if _is_disconnect(exc):
                    self.replicas.report_failure(replica, exc)
                REPLICA_SKIPS.labels("down").inc()
            else:
                self._count(replica)
                return rows
        self._count(None)
        pool = self._primary_fast
        try:
            return await self._fetch_fast(pool, sql, values)
        except psycopg.OperationalError as exc:
            if not _is_disconnect(exc):
                raise
            # The connections in the pool may all predate a restart: drop the dead ones and
            # try once more.
            await pool.check()
            return await self._fetch_fast(pool, sql, values)

    async def _fetch_fast(
        self, pool: AsyncConnectionPool[Any], sql: str, values: dict[str, Any]
    ) -> list[Mapping[str, Any]]:
        with timed("db"):
            async with pool.connection() as conn:
                cursor = await conn.execute(sql, values, prepare=self._prepare)
                return cast(list[Mapping[str, Any]], await cursor.fetchall())

    async def fetch_one(
        self, stmt: Executable, *, primary: bool = False, **params: Any
    ) -> Mapping[str, Any] | None:
        rows = await self.fetch_all(stmt, primary=primary, **params)
        return rows[0] if rows else None

    async def dispose(self) -> None:
        await self.replicas.stop()
        for pool in self._fast_pools:
            await pool.close()
        engines = [self.primary, self._primary_reader, *(r.engine for r in self.replicas.replicas)]
        for engine in engines:
            await engine.dispose()


@dataclass(frozen=True, slots=True)
class Databases:
    """The write databases by function. Before stage 8 one Database plays every role. Stage 8
    gives accounting and delivery databases of their own (federation), written only by the
    worker from the queue's events (app/orders/flows.py), and may split the orders across
    shards, found through a directory of logical shards (app/adapters/shards.py)."""

    main: Database
    accounting: Database
    delivery: Database
    shards: tuple[Database, ...] = ()
    """The order shards, numbered from 1 in the directory; none: orders live in `main`."""
    directory: dict[int, int] = field(default_factory=dict)
    """Logical shard (key % LOGICAL_SHARDS) to shard number (1-based), kept current by
    `shards.follow_directory`."""
    stale: asyncio.Event = field(default_factory=asyncio.Event, compare=False)
    """Set when a write found its logical shard moved away: the directory is re-read."""

    @classmethod
    def single(cls, db: Database) -> Databases:
        return cls(db, db, db)

    @classmethod
    def federate(
        cls,
        main: Database,
        urls: Mapping[str, str],
        shard_urls: Sequence[str] = (),
        shard_replica_urls: Sequence[Sequence[str]] = (),
        replica_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Databases:
        """`main` and, for each function named in `urls` ("accounting", "delivery"), a Database
        of its own (its primary only), and one per shard with that shard's replicas
        (`shard_replica_urls`, in shard order; `replica_options` for their health checks),
        with the pool `options` of `Database`. The directory is loaded later
        (`with_directory`)."""
        made = {name: Database(url, **options) for name, url in urls.items()}
        shards = tuple(
            Database(
                url,
                shard_replica_urls[number - 1] if number <= len(shard_replica_urls) else (),
                shard=number,
                **(replica_options or {}),
                **options,
            )
            for number, url in enumerate(shard_urls, start=1)
        )
        return cls(main, made.get("accounting", main), made.get("delivery", main), shards)

    def with_directory(self, directory: Mapping[int, int]) -> Databases:
        return replace(self, directory=dict(directory))

    @property
    def federated(self) -> bool:
        return self.accounting is not self.main or self.delivery is not self.main

    @property
    def split(self) -> bool:
        """Whether an order's work spans databases (federation or shards): no transaction can
        hold it all, and the flows take the multi-step paths (app/orders/flows.py)."""
        return self.federated or bool(self.shards)

    def shard_for(self, key: int) -> Database:
        """The database holding the orders of a key: a customer's id, or an order's id (which
        carries its customer's logical shard); `main` without shards."""
        if not self.shards:
            return self.main
        return self.shards[self.directory[key % LOGICAL_SHARDS] - 1]

    @asynccontextmanager
    async def shard_write(self, key: int) -> AsyncIterator[AsyncConnection]:
        """A transaction on the database holding the orders of `key` (see `shard_for`); with
        shards, behind its logical shard's fence, so that no write lands on a database the
        logical shard is moving away from. A fenced write answers Unavailable (retry): the
        logical shard is being copied, or has moved and this process's directory is stale
        (it is re-read at once)."""
        if not self.shards:
            async with self.main.write() as conn:
                yield conn
            return
        with self._fenced():
            async with self.shard_for(key).write(fence=key % LOGICAL_SHARDS) as conn:
                yield conn

    @asynccontextmanager
    async def shard_pipelined(self, key: int) -> AsyncIterator[Tx]:
        """As `shard_write`, pipelined (`Database.pipelined`): the placing of an order."""
        if not self.shards:
            async with self.main.pipelined() as conn:
                yield conn
            return
        with self._fenced():
            async with self.shard_for(key).pipelined(fence=key % LOGICAL_SHARDS) as conn:
                yield conn

    @contextlib.contextmanager
    def _fenced(self) -> Iterator[None]:
        """A write its logical shard's fence refused raises ShardFenced (and a stale directory
        is re-read); other errors pass."""
        try:
            yield
        except (DBAPIError, psycopg.Error) as exc:
            state = sqlstate(exc)
            if state not in (SHARD_MOVING, SHARD_MOVED):
                raise
            if state == SHARD_MOVED:
                self.stale.set()
            raise ShardFenced(
                "this customer's orders are moving to another database: retry in a moment"
            ) from exc

    def recording(self) -> list[Database]:
        """The databases whose outbox records events: the shards, or `main` without them."""
        return list(self.shards) or [self.main]

    def all(self) -> list[Database]:
        """Every distinct database, `main` first."""
        found: list[Database] = []
        for db in (self.main, self.accounting, self.delivery, *self.shards):
            if all(db is not seen for seen in found):
                found.append(db)
        return found

    def others(self) -> list[Database]:
        """The databases other than `main` (federated and shards): none before stage 8."""
        return self.all()[1:]


LOGICAL_SHARDS = 1024
"""A key's logical shard is `key % LOGICAL_SHARDS`, fixed for the life of the data
(app/adapters/shards.py keeps the directory)."""


async def _note_commit(
    driver: Any, position: ClientPosition, shard: int, *, autocommit: bool
) -> None:
    """Add the primary's WAL insert position, read just after a COMMIT on `driver` (a psycopg
    connection; `autocommit`: already out of transactions), to `position` (as `shard`'s: 0 for
    main).

    The insert position is at or past the end of the commit record even when the commit is
    not yet flushed (synchronous_commit=off). It is read on the same connection, outside a
    transaction, so that it costs one round trip and no BEGIN/ROLLBACK. If the primary fails
    right then, the write stands and the request still succeeds, without the position.
    """
    try:
        if not autocommit:
            await driver.set_autocommit(True)
        try:
            with timed("db"):
                cursor = driver.cursor(row_factory=tuple_row)
                row = await (await cursor.execute(PRIMARY_POSITION_SQL)).fetchone()
        finally:
            if not autocommit:
                await driver.set_autocommit(False)
    except psycopg.Error as exc:
        log.warning("a write committed but the primary's position is unknown: %s", exc)
        return
    if row is not None:
        position.advance(int(row[0]), shard=shard)


def _driver_pool(
    url: str, rules: ConnectionRules, size: int, timeout: float
) -> AsyncConnectionPool[Any] | None:
    """A psycopg pool of the driver's own (PostgreSQL only), opened by Database.open: the fast
    read path's, and on the primary the placing of orders too (`Database.pipelined`). At most
    `size` connections, without overflow: a process's connections stay what they were before
    orders used it (`make bench` ran out of the server's 100 when this pool grew like a write
    pool, since psycopg's pool keeps what it opened for ten idle minutes). Its connections are
    autocommit; a transaction says BEGIN itself."""
    if not url.startswith("postgresql"):
        return None
    return AsyncConnectionPool(
        _libpq(url),
        min_size=1,
        max_size=size,
        timeout=timeout,
        kwargs={"autocommit": True, "row_factory": dict_row, **rules.driver_options()},
        check=_check_idle,
        open=False,
    )


def _libpq(url: str) -> str:
    """A libpq connection URL from a SQLAlchemy one (drops the +driver part)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Pipelined:
    """A pipelined transaction on the driver's own connection (`Database.pipelined`, on
    PostgreSQL): statements go through `run`, `send`, `run_many` and `insert_or_ignore`."""

    __slots__ = ("dialect", "driver")

    def __init__(self, driver: Any, dialect: Any) -> None:
        self.driver = driver
        self.dialect = dialect
        """SQLAlchemy's dialect, which compiles the statement constants."""


Tx = AsyncConnection | Pipelined
"""A transaction a service writes in: SQLAlchemy's connection (`Database.write`, or
`Database.pipelined` on the embedded database) or the driver's (`Database.pipelined`)."""


def _driver(conn: Tx) -> Any:
    """The psycopg connection under a connection already in a transaction (no I/O)."""
    if isinstance(conn, Pipelined):
        return conn.driver
    sync = conn.sync_connection
    assert sync is not None
    driver = sync.connection.driver_connection
    assert driver is not None
    return driver


_COMPILED: dict[tuple[Executable, str], tuple[str, dict[str, Any], bool]] = {}


def _compile(stmt: Executable, dialect: Any) -> tuple[str, dict[str, Any], bool]:
    """SQL text, default parameters and whether rows come back; once per statement constant."""
    key = (stmt, dialect.name)
    found = _COMPILED.get(key)
    if found is None:
        target = stmt
        if isinstance(stmt, Insert) and not stmt.returning_column_descriptions:
            # No implicit RETURNING of the new row's key: nothing reads it, and `run` would
            # wait for it, a round trip more in a pipelined transaction.
            target = stmt.inline()
        compiled = cast(ClauseElement, target).compile(dialect=dialect)
        returns_rows = bool(
            getattr(stmt, "is_select", False) or getattr(compiled, "effective_returning", None)
        )
        found = _COMPILED[key] = (str(compiled), dict(compiled.params), returns_rows)
    return found


def _adapt(params: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    merged = {**defaults, **params}
    for name, value in merged.items():
        if isinstance(value, dict | list):
            merged[name] = Json(value)
    return merged


async def run(
    conn: Tx, stmt: Executable, params: Mapping[str, Any] | None = None
) -> list[Mapping[str, Any]]:
    """Execute a module-level statement constant in the caller's transaction; its rows, if any.

    Values go in as named `bindparam`s. On PostgreSQL this is one prepared statement on the
    driver (queued when the transaction is pipelined); elsewhere it is SQLAlchemy's execute.
    """
    if isinstance(conn, AsyncConnection) and conn.dialect.name != "postgresql":
        result = await conn.execute(stmt, dict(params or {}))
        return [dict(row) for row in result.mappings()] if result.returns_rows else []
    with timed("db"):
        cursor, returns_rows = await _execute(conn, stmt, params)
        return cast(list[Mapping[str, Any]], await cursor.fetchall()) if returns_rows else []


async def _execute(
    conn: Tx, stmt: Executable, params: Mapping[str, Any] | None
) -> tuple[Any, bool]:
    """Send a statement constant on the driver as one prepared statement (queued when the
    transaction is pipelined); its cursor, and whether it returns rows."""
    sql, defaults, returns_rows = _compile(stmt, conn.dialect)
    driver = _driver(conn)
    cursor = driver.cursor(row_factory=dict_row)
    # prepare_threshold is None when prepared statements are turned off (ConnectionRules).
    await cursor.execute(
        sql, _adapt(params or {}, defaults), prepare=driver.prepare_threshold is not None
    )
    return cursor, returns_rows


class Queued:
    """A statement sent in the caller's transaction whose rows are read later: see `send`."""

    __slots__ = ("_cursor", "_rows")

    def __init__(self, cursor: Any, rows: list[Mapping[str, Any]] | None) -> None:
        self._cursor = cursor
        self._rows = rows

    async def rows(self) -> list[Mapping[str, Any]]:
        """Its rows; in a pipelined block, a round trip only if none has happened since it
        was sent. Read them before the block ends."""
        if self._rows is None:
            with timed("db"):
                self._rows = cast(list[Mapping[str, Any]], await self._cursor.fetchall())
        return self._rows


async def send(conn: Tx, stmt: Executable, params: Mapping[str, Any] | None = None) -> Queued:
    """Send a row-returning statement constant in the caller's transaction without waiting for
    its rows. In a pipelined block they arrive with the next round trip another statement
    needs, so a read that nothing waits on costs no round trip of its own. Elsewhere (not
    PostgreSQL) it runs at once."""
    if isinstance(conn, AsyncConnection) and conn.dialect.name != "postgresql":
        return Queued(None, await run(conn, stmt, params))
    with timed("db"):
        cursor, _ = await _execute(conn, stmt, params)
    return Queued(cursor, None)


async def run_many(conn: Tx, stmt: Executable, rows: Sequence[Mapping[str, Any]]) -> None:
    """Execute a statement constant once per row, in one batch, in the caller's transaction."""
    if not rows:
        return
    if isinstance(conn, AsyncConnection) and conn.dialect.name != "postgresql":
        await conn.execute(stmt, [dict(r) for r in rows])
        return
    if len(rows) == 1:  # one statement: executemany's batch costs more than it saves
        await run(conn, stmt, rows[0])
        return
    sql, defaults, _ = _compile(stmt, conn.dialect)
    with timed("db"):
        await _driver(conn).cursor().executemany(sql, [_adapt(r, defaults) for r in rows])


def named_values(*columns: str) -> dict[str, Any]:
    """`.values()` of an INSERT constant whose values come as bindparams named after columns."""
    return {name: bindparam(name) for name in columns}


@functools.cache
def _insert_or_ignore(table: Table, names: tuple[str, ...], dialect_name: str) -> Executable:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    key = next(iter(table.primary_key.columns))
    stmt = dialect.insert(table).values(named_values(*names)).on_conflict_do_nothing()
    stmt = stmt.returning(key)
    return cast(Executable, stmt)


async def insert_or_ignore(conn: Tx, table: Table, values: Mapping[str, Any]) -> bool:
    """INSERT a row unless its key exists; True when inserted.

    On PostgreSQL a concurrent insert of the same key waits for the other transaction and then
    reports the conflict, which is what makes idempotency keys race-free.
    """
    stmt = _insert_or_ignore(table, tuple(sorted(values)), conn.dialect.name)
    return bool(await run(conn, stmt, values))
