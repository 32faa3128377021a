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
    assert tokens.read(token.encode()) == 0x16B374D848
    _, mac = token.split(".")
    assert tokens.read(f"ffffffffff.{mac}".encode()) == 0
    assert PositionTokens("o" * 40).read(token.encode()) == 0
    assert tokens.read(b"garbage") == tokens.read(b"") == tokens.read(b".") == 0


def test_the_newest_position_of_header_and_cookie_counts() -> None:
    tokens = PositionTokens("k" * 40)
    old, new = tokens.sign(100), tokens.sign(200)
    headers = [
        (b"x-shop-read-after", old.encode()),
        (b"cookie", f"theme=dark; shop_read_after={new}".encode()),
    ]
    assert tokens.from_headers(headers) == 200
    assert tokens.from_headers([(b"cookie", b"theme=dark")]) == 0


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
