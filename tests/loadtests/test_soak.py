"""The soak's bar: what it judges, what it only records, and how it reads memory."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.settings import WorkerSettings
from loadtests.ladder.soak import SOAK_RETENTION_H, growth, memory_kib, verdict


def minutes(count: int, **series: list[float]) -> list[dict[str, Any]]:
    """`count` minutes of a flat soak, with the given series (by their verdict names) over it."""
    found = []
    for i in range(count):
        minute: dict[str, Any] = {
            "memory_mib": {"app-0": 100.0, "moto": 50.0},
            "rows": {"outbox_event": 500, "processed_event": 1000, "idempotency_key": 800},
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


def test_growth_is_the_highest_value_after_the_warm_up_against_its_last_minute() -> None:
    assert growth([50, 90, 100, 104, 108, 103], floor=1, warmup=3) == 0.08
    assert growth([50, 90, 100], floor=1, warmup=3) is None  # nothing after the warm-up yet
    # Near zero, the floor keeps a step of one from counting as a doubling.
    assert growth([0, 1, 1, 2], floor=10, warmup=2) == 0.1


def test_a_process_whose_memory_keeps_growing_fails_the_soak() -> None:
    leaking = [100.0 + 5 * i for i in range(10)]
    _, fails = verdict(minutes(10, **{"memory app-0": leaking}))
    assert fails == ["memory app-0 grew 21 %"]  # 120 MiB at minute 5, 145 at the end


def test_a_flat_soak_passes() -> None:
    grown, fails = verdict(minutes(10))
    assert fails == []
    assert grown["memory app-0"] == 0.0
    assert grown["rows outbox_event"] == 0.0


def test_moto_and_the_idempotency_keys_are_recorded_but_not_judged() -> None:
    rising = [100.0 * (i + 1) for i in range(10)]
    grown, fails = verdict(minutes(10, **{"memory moto": rising, "rows idempotency_key": rising}))
    assert grown["memory moto"] == grown["rows idempotency_key"] == 1.0
    assert fails == []
    # The outbox tables are held to the bar: the purge must keep them bounded.
    _, fails = verdict(minutes(10, **{"rows processed_event": rising}))
    assert fails == ["rows processed_event grew 100 %"]


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
