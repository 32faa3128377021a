"""Database engines and connections, made in the app's lifespan and handed to services.

`Database.write()` is a transaction on the primary; `Database.read()` is a read-only connection on
a replica when replicas are configured (stage 4), on the primary otherwise. Services choose which
one they need; the domains never know whether replicas exist.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry


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


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    pool_timeout: float = 10.0,
    writer: bool = True,
) -> AsyncEngine:
    """An async engine; for SQLite, one that serialises writers instead of failing them."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        if writer:
            event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
    )


class Database:
    """The primary engine and the read engines; one per process, made in the lifespan."""

    def __init__(
        self,
        primary_url: str,
        replica_urls: Sequence[str] = (),
        *,
        pool_size: int = 10,
        max_overflow: int = 10,
        pool_timeout: float = 10.0,
    ) -> None:
        self.primary = make_engine(
            primary_url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout
        )
        self.replicas = [
            make_engine(
                u,
                writer=False,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=pool_timeout,
            )
            for u in replica_urls
        ]
        if not self.replicas and primary_url.startswith("sqlite"):
            # A second engine on the same file, without BEGIN IMMEDIATE, so reads never queue.
            readers = [make_engine(primary_url, writer=False)]
            self._owned_readers = readers
        else:
            readers = self.replicas or [self.primary]
            self._owned_readers = list(self.replicas)
        # Reads run in autocommit: one round trip per query, no BEGIN/ROLLBACK around it.
        self._readers = [e.execution_options(isolation_level="AUTOCOMMIT") for e in readers]
        self._next_reader: Iterator[AsyncEngine] = itertools.cycle(self._readers)

    @property
    def dialect(self) -> str:
        return self.primary.dialect.name

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction on the primary: committed when the block ends, rolled back on error."""
        async with self.primary.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only connection on the next replica (the primary when there is none)."""
        async with next(self._next_reader).connect() as conn:
            yield conn

    async def dispose(self) -> None:
        for engine in [self.primary, *self._owned_readers]:
            await engine.dispose()


async def insert_or_ignore(conn: AsyncConnection, table: Table, values: Mapping[str, Any]) -> bool:
    """INSERT a row unless its key exists; True when inserted.

    On PostgreSQL a concurrent insert of the same key waits for the other transaction and then
    reports the conflict, which is what makes idempotency keys race-free.
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    key = next(iter(table.primary_key.columns))
    stmt = dialect.insert(table).values(**values).on_conflict_do_nothing().returning(key)
    return (await conn.execute(stmt)).first() is not None
