"""Stage 8's directory of shards: which database holds a key's rows.

A key (a customer's id, or an id made to carry its customer's shard, as an order's is) belongs
to the logical shard `key % LOGICAL_SHARDS`, which never changes. The directory, a table of the
main database (`shard_map`), maps each logical shard to one of the physical shard databases
(`SHOP_ORDER_SHARD_URLS`, numbered from 1). Adding a database moves some logical shards to it;
nothing is rehashed (docs/stage-8.md).

The directory is filled once, when the first process finds it empty (logical shard k to
database k % N + 1), and read by every process at start-up. Moving a logical shard online
(docs/stage-8.md, build step 4) will reload it on a version change; until then a process holds
the map it started with, and the map never changes under it.
"""

from __future__ import annotations

from sqlalchemy import Integer, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Mapped, mapped_column

from app.adapters.db import LOGICAL_SHARDS, Database
from app.kernel.models import Base

__all__ = ["LOGICAL_SHARDS", "DirectoryProblem", "ShardMap", "load_directory", "logical_of"]


class ShardMap(Base):
    __tablename__ = "shard_map"

    logical: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    shard: Mapped[int] = mapped_column(Integer)
    """The physical shard, 1-based: its place in SHOP_ORDER_SHARD_URLS."""
    version: Mapped[int] = mapped_column(Integer, default=1)


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
