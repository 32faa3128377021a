"""The soak's bar: what it judges, what it only records, and how it reads memory."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from app.kernel.settings import WorkerSettings
from loadtests.ladder.soak import (
    KEPT_MIN,
    SOAK_RETENTION_H,
    growth,
    memory_kib,
    per_order_kept,
    verdict,
)


def minutes(count: int, **series: list[float]) -> list[dict[str, Any]]:
    """`count` minutes of a flat soak, with the given series (by their verdict names) over it."""
    found = []
    for i in range(count):
        minute: dict[str, Any] = {
            "memory_mib": {"app-0": 100.0, "moto": 50.0},
            "rows": {
                "outbox_event": 500,
                "processed_event": 1000,
                "idempotency_key": 800,
                "customer_order": 100 * (i + 1),
            },
            "queue_depth": 0,
            "p95_ms": 120.0,
        }
        for name, values in series.items():
            kind, _, what = name.partition(" ")
            if kind == "memory":
                minute["memory_mib"][what] = values[i]
            elif kind == "rows":
                minute["rows"][what] = values[i]
        found.append(minute)
    return found


def test_growth_is_the_median_of_the_last_minutes_against_that_of_the_first_after_warm_up() -> None:
    warm = [50.0, 90.0]
    steady = [100.0, 104.0, 98.0, 101.0, 99.0]  # median 100
    assert growth([*warm, *steady, *steady, 110, 112, 108, 111, 109], floor=1, warmup=2) == 0.1
    # A minute's spike is not growth: p95 and the queue's depth jump with no trend.
    assert growth([*warm, *steady, 400.0, *steady], floor=1, warmup=2) == 0.0
    assert growth([*warm, 100.0, 100.0], floor=1, warmup=2) is None  # too little after warm-up
    # Near zero, the floor keeps a step of one from counting as a doubling.
    assert growth([0.0] * 7 + [1.0] * 5, floor=10, warmup=2) == 0.1


def test_a_process_whose_memory_keeps_growing_fails_the_soak() -> None:
    leaking = [100.0 + 5 * i for i in range(30)]
    _, fails = verdict(minutes(30, **{"memory app-0": leaking}))
    # Median of minutes 6-10: 135 MiB; of minutes 26-30: 235 MiB.
    assert fails == ["memory app-0 grew 74 %"]


def test_a_flat_soak_passes() -> None:
    grown, fails = verdict(minutes(30))
    assert fails == []
    assert grown["memory app-0"] == 0.0
    assert grown["rows outbox_event"] == 0.0


def test_moto_and_the_idempotency_keys_are_recorded_but_not_judged() -> None:
    rising = [100.0 * (i + 1) for i in range(30)]
    grown, fails = verdict(minutes(30, **{"memory moto": rising, "rows idempotency_key": rising}))
    assert grown["memory moto"] == grown["rows idempotency_key"] == 2.5  # 800 to 2,800
    assert fails == []


def orders_at_a_rising_rate(count: int, *, purged: bool) -> list[dict[str, Any]]:
    """`count` minutes whose order rate rises from 100 to about 150 a minute, each order adding
    one outbox row and two processed-event rows; `purged`: the worker keeps the last six
    minutes' (the soak's retention), else it keeps everything."""
    placed = [0]
    for i in range(count):
        placed.append(placed[-1] + 100 + 2 * i)
    found = minutes(count)
    for i, minute in enumerate(found, 1):
        kept = placed[i] - placed[max(0, i - 6)] if purged else placed[i]
        minute["rows"] |= {
            "customer_order": placed[i],
            "outbox_event": kept,
            "processed_event": 2 * kept,
        }
    return found


def test_purged_tables_are_judged_per_order_kept_once_their_window_is_full() -> None:
    # The rows grow with the order rate (about 600 at minute 7, about 850 at minute 30) and
    # would fail a bar on rows alone; per order placed in the window the purge keeps, they hold.
    soak = orders_at_a_rising_rate(30, purged=True)
    grown, fails = verdict(soak)
    assert fails == []
    assert grown["rows outbox_event"] is not None  # recorded, not judged
    assert grown["rows outbox_event"] > 0.10
    assert grown["outbox_event per order kept"] is not None
    assert grown["outbox_event per order kept"] <= 0.05
    # Nothing to divide by until the window is full.
    assert per_order_kept(soak, "outbox_event")[:KEPT_MIN] == [0.0] * KEPT_MIN


def test_a_purge_that_stops_fails_the_soak_on_its_tables() -> None:
    grown, fails = verdict(orders_at_a_rising_rate(30, purged=False))
    assert [f.split(" grew ")[0] for f in sorted(fails)] == [
        "outbox_event per order kept",
        "processed_event per order kept",
    ]
    # Every order ever placed, against the last seven minutes': more than twice the bound.
    assert grown["outbox_event per order kept"] is not None
    assert grown["outbox_event per order kept"] > 1.0


def test_memory_is_the_anonymous_memory_a_leak_grows_and_zero_once_a_process_is_gone() -> None:
    grower = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; b = bytearray(64 << 20); b[::4096] = b'x' * (16384); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        baseline = memory_kib(os.getpid())
        assert baseline > 0
        for _ in range(50):
            if memory_kib(grower.pid) > 60 * 1024:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert memory_kib(grower.pid) > 60 * 1024  # 64 MiB written, not shared
    finally:
        grower.communicate(b"")
    assert memory_kib(grower.pid) == 0


def test_the_soaks_retention_is_one_the_worker_accepts_and_nothing_shorter_is() -> None:
    assert WorkerSettings(worker_retention_h=float(SOAK_RETENTION_H)).worker_retention_h == 0.1
    with pytest.raises(ValidationError, match="worker_retention_h"):
        WorkerSettings(worker_retention_h=0.05)
