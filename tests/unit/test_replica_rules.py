"""The rules of replica choice, with no database: tokens, lag, and who may answer a read."""

from __future__ import annotations

import time
from typing import Any

from app.adapters.replicas import (
    PositionTokens,
    Replica,
    ReplicaSet,
    client_position,
    position_now,
    reading_after,
)


def replica(name: str, *, healthy: bool = True, position: int = 0) -> Replica:
    engine: Any = None
    return Replica(name=name, url="", engine=engine, pool=None, healthy=healthy, position=position)


def test_a_read_after_token_round_trips_and_cannot_be_forged_or_moved() -> None:
    tokens = PositionTokens("k" * 40)
    token = tokens.sign(0x16B374D848)
    assert token.startswith("16b374d848.")  # main's position alone, as before shards
    assert tokens.read(token.encode()) == [0x16B374D848]
    _, mac = token.split(".")
    assert tokens.read(f"ffffffffff.{mac}".encode()) == [0]
    assert PositionTokens("o" * 40).read(token.encode()) == [0]
    assert tokens.read(b"garbage") == tokens.read(b"") == tokens.read(b".") == [0]
    # Stage 8: main's, then each shard's (none for shard 1 here), one signature for all.
    sharded = tokens.sign([0x100, 0, 0x2A])
    assert sharded.startswith("100--2a.")
    assert tokens.read(sharded.encode()) == [0x100, 0, 0x2A]
    _, mac = sharded.split(".")
    assert tokens.read(f"100-ff-2a.{mac}".encode()) == [0]  # a shard's position moved
    assert tokens.read(tokens.sign([1] * 70).encode()) == [0]  # past 64 shards: refused


def test_the_newest_position_of_header_and_cookie_counts() -> None:
    tokens = PositionTokens("k" * 40)
    old, new = tokens.sign(100), tokens.sign(200)
    headers = [
        (b"x-shop-read-after", old.encode()),
        (b"cookie", f"theme=dark; shop_read_after={new}".encode()),
    ]
    assert tokens.from_headers(headers) == [200]
    assert tokens.from_headers([(b"cookie", b"theme=dark")]) == [0]
    # Per database: the newest of each, whichever token carried it.
    headers = [
        (b"x-shop-read-after", tokens.sign([300, 5]).encode()),
        (b"cookie", f"shop_read_after={tokens.sign([100, 0, 9])}".encode()),
    ]
    assert tokens.from_headers(headers) == [300, 5, 9]


def test_a_request_keeps_each_shards_position_apart_from_mains() -> None:
    # Each shard is a server of its own: its positions are another write-ahead log's, and a
    # write there says nothing about how far main's replicas must have replayed.
    with client_position([300, 0, 9]) as position:
        assert (position.at(0), position.at(1), position.at(2), position.at(3)) == (300, 0, 9, 0)
        position.advance(50, shard=1)
        position.advance(200)  # main's is already further
        assert position.vector() == [300, 50, 9] and position.wrote
        assert position_now() == 300  # main's, for the catalog's cache
    with client_position(7) as position:
        assert position.vector() == [7] and not position.wrote


def test_reads_go_round_robin_to_healthy_replicas_that_have_the_clients_writes() -> None:
    ahead, behind, down = (
        replica("ahead", position=500),
        replica("behind", position=100),
        replica("down", healthy=False, position=900),
    )
    replicas = ReplicaSet([ahead, behind, down], primary_url="")
    assert {replicas.choose(0).name for _ in range(6)} == {"ahead", "behind"}  # type: ignore[union-attr]
    assert {replicas.choose(300).name for _ in range(6)} == {"ahead"}  # type: ignore[union-attr]
    assert replicas.choose(600) is None  # the primary answers


def test_lag_is_how_long_ago_the_primary_was_where_the_replica_is() -> None:
    replicas = ReplicaSet([], primary_url="", max_lag_s=5)
    now = time.monotonic()
    replicas._history.extend([(now - 3, 100), (now - 2, 100), (now - 1, 200), (now, 300)])
    assert replicas.lag_of(300) == 0  # has all the primary had at the last check
    assert 0.9 < replicas.lag_of(250) < 1.5  # the primary was at 200 a second ago
    assert 1.9 < replicas.lag_of(100) < 2.5  # ... and at 100 until two seconds ago
    assert replicas.lag_of(50) == float("inf")  # older than anything remembered
    idle = ReplicaSet([], primary_url="")
    idle._history.extend([(now - 60, 100), (now, 100)])
    assert idle.lag_of(100) == 0  # an idle primary makes no lag


def test_a_refill_reads_past_the_writers_position_and_the_requests_own_whichever_is_further() -> (
    None
):
    assert position_now() == 0  # outside a request: any server will do
    with reading_after(0):
        assert position_now() == 0
    with reading_after(700):
        assert position_now() == 700
    with client_position(900) as request:
        with reading_after(500):
            assert position_now() == 900  # the request's own is further
        with reading_after(1200):
            assert position_now() == 1200
        assert position_now() == 900  # restored after the block
        request.advance(1500)
        assert position_now() == 1500
    assert position_now() == 0
