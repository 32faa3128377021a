"""Stage 8's directory of shards: which database holds a key's rows.

A key (a customer's id, or an id made to carry its customer's shard, as an order's is) belongs
to the logical shard `key % LOGICAL_SHARDS`, which never changes. The directory, a table of the
main database (`shard_map`), maps each logical shard to one of the physical shard databases
(`SHOP_ORDER_SHARD_URLS`, numbered from 1). Adding a database moves some logical shards to it;
nothing is rehashed (docs/stage-8.md).

The directory is filled once, when the first process finds it empty (logical shard k to
database k % N + 1), and read by every process at start-up. A logical shard moves online
(`shop shards move`, app/orders/moves.py) between databases: every write to its rows takes
the fence of its shard first (`shop_shard_fence`, migration 0015), which refuses it while the
rows are copied (SH001: the client retries) and once they have gone (SH002: this process's
directory is stale). Every process follows the directory (`follow_directory`): it re-reads
it when a row's version changes, every few seconds, or at once after a write met SH002.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from sqlalchemy import Integer, String, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Mapped, mapped_column

from app.adapters.db import LOGICAL_SHARDS, Database, Databases
from app.kernel.models import Base

__all__ = [
    "FENCE_LOCK",
    "LOGICAL_SHARDS",
    "DirectoryProblem",
    "ShardMap",
    "ShardMove",
    "follow_directory",
    "load_directory",
    "logical_of",
    "read_directory",
]

log = logging.getLogger("shop.shards")

FENCE_LOCK = 0x73687264
"""The first key of the fence's advisory locks ("shrd"); the second is the logical shard."""
FOLLOW_S = 2.0
"""How often a process looks for a newer directory when nothing told it to sooner."""


class ShardMap(Base):
    __tablename__ = "shard_map"

    logical: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    shard: Mapped[int] = mapped_column(Integer)
    """The physical shard, 1-based: its place in SHOP_ORDER_SHARD_URLS."""
    version: Mapped[int] = mapped_column(Integer, default=1)


class ShardMove(Base):
    """In a shard: a logical shard moving away from it (`moving`: its writes wait) or moved
    away (`gone`: a writer's directory is stale). No row: the shard holds it, if the
    directory says so."""

    __tablename__ = "shard_move"

    logical: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime]


class DirectoryProblem(RuntimeError):
    """The directory does not fit the configured shards; the message says why."""


def logical_of(key: int) -> int:
    """The logical shard of a key (a customer's id, or an order's id)."""
    return key % LOGICAL_SHARDS


async def load_directory(main: Database, *, shards: int) -> dict[int, int]:
    """The directory (logical shard to physical shard, 1-based), filled first if empty.
    Raises DirectoryProblem when it names a shard beyond the `shards` configured (a shard
    left out of SHOP_ORDER_SHARD_URLS would lose its customers' orders)."""
    table = ShardMap.__table__
    async with main.write() as conn:
        filled = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
        if filled == 0:  # two processes filling it at once write the same rows
            await conn.execute(
                postgresql.insert(ShardMap)
                .values(
                    [
                        {"logical": k, "shard": k % shards + 1, "version": 1}
                        for k in range(LOGICAL_SHARDS)
                    ]
                )
                .on_conflict_do_nothing()
            )
        rows = (await conn.execute(select(ShardMap.logical, ShardMap.shard))).all()
    directory = {int(r.logical): int(r.shard) for r in rows}
    beyond = sorted({s for s in directory.values() if not 1 <= s <= shards})
    if len(directory) != LOGICAL_SHARDS or beyond:
        raise DirectoryProblem(
            f"the shard directory (table shard_map, {len(directory)} logical shards) names "
            f"shards {beyond or 'fewer than all'} but SHOP_ORDER_SHARD_URLS gives {shards}: "
            "give every shard the directory names, in the same order"
        )
    return directory


async def read_directory(main: Database) -> tuple[int, dict[int, int]]:
    """The directory as it stands, with its version (the highest of its rows')."""
    async with main.read(primary=True) as conn:
        rows = (
            await conn.execute(select(ShardMap.logical, ShardMap.shard, ShardMap.version))
        ).all()
    return max((int(r.version) for r in rows), default=0), {
        int(r.logical): int(r.shard) for r in rows
    }


async def follow_directory(dbs: Databases, *, every_s: float = FOLLOW_S) -> None:
    """Keep `dbs.directory` the main database's, for as long as it runs (a task of the app's
    lifespan and of the worker): a look at the version every `every_s`, or at once when a
    write found its logical shard gone (`dbs.stale`)."""
    seen: int | None = None
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(dbs.stale.wait(), every_s)
        dbs.stale.clear()
        try:
            async with dbs.main.read(primary=True) as conn:
                newest = await conn.scalar(select(func.max(ShardMap.version)))
            if newest == seen:
                continue
            version, directory = await read_directory(dbs.main)
        except (OSError, DBAPIError) as exc:
            log.warning("the shard directory could not be read: %s", exc)
            continue
        if len(directory) == LOGICAL_SHARDS:
            moved = {k: v for k, v in directory.items() if dbs.directory.get(k) != v}
            dbs.directory.update(directory)
            if moved and seen is not None:
                log.info("shard directory %s: logical shards %s moved", version, sorted(moved))
            seen = version
