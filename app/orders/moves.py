"""Moving a logical shard online (stage 8, docs/stage-8.md "Moving a logical shard online").

A logical shard is 1/1024 of the customers: their orders with the lines, their Idempotency-Keys,
the order ids' fences, the orders' outbox events and the steps done for them in the shard. A
move takes it from the database that holds it (A) to another (B) while the shop serves:

1. **Freeze** on A: the logical shard's row in `shard_move` says `moving`, written under the
   fence's exclusive lock, so the writes in flight finish first and every write after it is
   refused (503, retry in a moment). Reads still go to A.
2. **Copy** its rows from A to B, in one transaction on B (rows a move that died left there
   are dropped first; order lines get B's own ids, nothing refers to them).
   When B has replicas, the move waits until they have replayed the copy (at most their lag
   bound), since the logical shard's reads follow the directory to them.
3. **Switch** the directory in the main database (its version goes up): every process
   re-reads it within `shards.FOLLOW_S` and sends the logical shard's reads and writes to B.
4. **Gone** on A: a process still holding the old directory has its write refused there and
   re-reads the directory at once; the customer's retry lands on B.
5. After `grace_s`, delete the rows from A (a stale process's read finds them until then).

Writes to the logical shard wait for at most the copy (one transaction of 1/1024 of a shard);
the other 1,023 logical shards are not touched. A move that died part-way is finished by
running it again: before the switch it starts over (until then the logical shard's writes
answer 503), after it it finishes 4 and 5.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Table,
    cast,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.adapters.db import LOGICAL_SHARDS, Database, Databases
from app.adapters.outbox import OutboxEvent, ProcessedEvent
from app.adapters.replicas import client_position
from app.adapters.shards import FENCE_LOCK, ShardMap, ShardMove, read_directory
from app.kernel.errors import InvalidRequest
from app.kernel.models import utcnow
from app.orders.models import CustomerOrder, IdempotencyKey, OrderFence, OrderLine

log = logging.getLogger("shop.orders.moves")


@dataclass(frozen=True)
class Moved:
    """What a move did: from which shard to which, and how many rows of each table."""

    logical: int
    source: int
    target: int
    rows: dict[str, int]


def _of(logical: int) -> dict[Table, ColumnElement[bool]]:
    """Each sharded table's rows that belong to `logical`, parents before children."""
    order_id = cast(OutboxEvent.payload["order_id"].as_string(), BigInteger)
    events = order_id % LOGICAL_SHARDS == logical
    return {
        CustomerOrder.__table__: CustomerOrder.id % LOGICAL_SHARDS == logical,  # type: ignore[dict-item]
        OrderLine.__table__: OrderLine.order_id % LOGICAL_SHARDS == logical,  # type: ignore[dict-item]
        IdempotencyKey.__table__: IdempotencyKey.customer_id % LOGICAL_SHARDS == logical,  # type: ignore[dict-item]
        OrderFence.__table__: OrderFence.order_id % LOGICAL_SHARDS == logical,  # type: ignore[dict-item]
        OutboxEvent.__table__: events,  # type: ignore[dict-item]
        ProcessedEvent.__table__: ProcessedEvent.event_id.in_(  # type: ignore[dict-item]
            select(OutboxEvent.id).where(events)
        ),
    }


async def _set_state(db: Database, logical: int, state: str) -> None:
    """Write the logical shard's row in `db`'s `shard_move`, under the fence's exclusive lock:
    the writes holding the fence finish first."""
    async with db.write() as conn:
        await conn.execute(select(func.pg_advisory_xact_lock(FENCE_LOCK, logical)))
        values = {"logical": logical, "state": state, "updated_at": utcnow()}
        await conn.execute(
            postgresql.insert(ShardMove)
            .values(values)
            .on_conflict_do_update(index_elements=[ShardMove.logical], set_=values)
        )


async def _unfinished(db: Database, logical: int) -> bool:
    """Whether a move of `logical` away from `db` died before its end: its writes still
    paused there, or its rows not yet deleted."""
    async with db.read(primary=True) as conn:
        found = await conn.execute(select(ShardMove.state).where(ShardMove.logical == logical))
        state = found.scalar_one_or_none()
        if state != "gone":
            return state == "moving"
        for table, belongs in _of(logical).items():
            if await conn.scalar(select(select(table).where(belongs).exists())):
                return True
    return False


async def _delete_rows(conn: AsyncConnection, logical: int) -> dict[str, int]:
    deleted: dict[str, int] = {}
    for table, belongs in reversed(_of(logical).items()):  # children first
        deleted[table.name] = int((await conn.execute(delete(table).where(belongs))).rowcount)
    return deleted


async def _copy(source: Database, target: Database, logical: int) -> dict[str, int]:
    """The logical shard's rows from `source` into `target`, in one transaction on each."""
    found: dict[Table, list[dict[str, Any]]] = {}
    async with source.read(primary=True) as conn:
        for table, belongs in _of(logical).items():
            rows = (await conn.execute(select(table).where(belongs))).mappings().all()
            drop = {"id"} if table is OrderLine.__table__ else set()
            found[table] = [{k: v for k, v in row.items() if k not in drop} for row in rows]
    async with target.write() as conn:
        await _delete_rows(conn, logical)  # what a move that died here left
        await conn.execute(delete(ShardMove).where(ShardMove.logical == logical))
        for table, each in found.items():
            if each:
                await conn.execute(insert(table), each)
    return {table.name: len(each) for table, each in found.items()}


async def move_logical_shard(
    dbs: Databases,
    *,
    logical: int,
    to: int,
    grace_s: float = 10.0,
    say: Callable[[str], None] = log.info,
) -> Moved:
    """Move logical shard `logical` to shard `to` (1-based) while the shop serves (see the
    module's docstring); InvalidRequest naming what is wrong with the request."""
    shards = dbs.shards
    if not shards:
        raise InvalidRequest("shards", "no order shards are configured (SHOP_ORDER_SHARD_URLS)")
    if not 0 <= logical < LOGICAL_SHARDS:
        raise InvalidRequest("logical", f"a logical shard is 0 to {LOGICAL_SHARDS - 1}")
    if not 1 <= to <= len(shards):
        raise InvalidRequest("to", f"the shards are numbered 1 to {len(shards)}")
    _, directory = await read_directory(dbs.main)
    source = directory[logical]
    target = shards[to - 1]
    copied: dict[str, int] = {}
    if source != to:
        origin = shards[source - 1]
        say(f"logical shard {logical}: writes paused in shard {source}")
        await _set_state(origin, logical, "moving")
        with client_position() as written:  # the copy's position in shard `to`
            copied = await _copy(origin, target, logical)
        say(f"logical shard {logical}: copied to shard {to}: {copied}")
        if target.replicas:
            # Reads follow the directory to B's replicas: they must hold the copy first.
            timeout = target.replicas.max_lag_s
            if await target.replicas.wait_for(written.at(to), timeout_s=timeout):
                say(f"logical shard {logical}: shard {to}'s replicas hold the copy")
            else:
                say(
                    f"logical shard {logical}: a replica of shard {to} is still behind after "
                    f"{timeout:g} s; it may answer without the moved orders until it catches up"
                )
        async with dbs.main.write() as conn:
            newest = select(func.max(ShardMap.version)).scalar_subquery()
            await conn.execute(
                update(ShardMap)
                .where(ShardMap.logical == logical)
                .values(shard=to, version=newest + 1)
            )
        say(f"logical shard {logical}: the directory sends it to shard {to}")
    left = [
        (number, db)
        for number, db in enumerate(shards, start=1)
        if number != to and await _unfinished(db, logical)
    ]
    if source == to and not left:
        raise InvalidRequest("to", f"logical shard {logical} is in shard {to} already")
    for _, db in left:
        await _set_state(db, logical, "gone")
    await asyncio.sleep(grace_s)
    for number, db in left:
        async with db.write() as conn:
            deleted = await _delete_rows(conn, logical)
        say(f"logical shard {logical}: its rows deleted from shard {number}: {deleted}")
    return Moved(logical=logical, source=source, target=to, rows=copied)
