"""The stage-3 topology (nginx, two app processes, a private PostgreSQL, each under its CPU
budget) built natively and driven by the Locust suite at low load for 14 s, as `make ladder`
does: no failed request, the shop's invariants hold, and the result file has the shape the
report reads; and stage 8's, whose five PostgreSQL servers must each do their part. The full
ladder is a benchmark (`make ladder`), not a test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loadtests.ladder.runner import Load, run_stage
from loadtests.ladder.stages import STAGES
from tests import pg_cluster

STEP_KEYS = {"step", "users", "started_at", "ended_at", "requests", "failures", "rps",
             "p50_ms", "p95_ms", "p99_ms", "by_name", "cpu", "signals"}  # fmt: skip
SIGNALS = {"db_share", "pool_wait_ms", "cache_hit_ratio", "replica_lag_s", "queue_depth",
           "replica_read_share", "replica_skipped_share", "fulfilment_lag_s", "cdn_offload",
           "orders_per_s"}  # fmt: skip

pytestmark = [
    pytest.mark.skipif(pg_cluster.why_unavailable() is not None, reason="no private PostgreSQL"),
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed"),
]


def test_stage_three_at_low_load_serves_without_errors_and_keeps_invariants(
    tmp_path: Path,
) -> None:
    load = Load(
        step_s=7, steps=2, step_users=3, spawn_rate=10, warmup_s=2, products=100,
        fine_passes=1, fine_steps=1, fine_step_s=5,
    )  # fmt: skip
    result = run_stage(STAGES[3], load, tmp_path)
    # One fine pass of one half step, around the ramp's knee (its last step at this load).
    [fine] = result["fine"]
    assert [step["users"] for step in fine] == [max(1, 6 - 2)]
    assert fine[0]["requests"] > 0 and fine[0]["failures"] == 0

    assert result["invariants"]["ok"], result["invariants"]
    assert [step["failures"] for step in result["steps"]] == [0, 0]
    assert all(step["requests"] > 0 for step in result["steps"])

    written = json.loads((tmp_path / "stage-3.json").read_text())
    assert written["stage"] == 3 and written["name"] == "horizontal"
    assert written["source"] == "local" and written["missing"] is None
    assert written["budgets"] == STAGES[3].budgets()
    assert written["daily"] == [] and written["p95_objective_ms"] == 500
    assert written["cpus_per_vcpu"] == STAGES[3].cpus_per_vcpu > 0
    for step in written["steps"]:
        assert set(step) >= STEP_KEYS
        assert set(step["signals"]) == SIGNALS
        # Every component did some work, and none beyond its budget (10 % for sampling); the
        # load generator is measured beside them, never budgeted.
        assert set(step["cpu"]) == {"app", "postgres", "nginx", "loadgen"}
        assert 0 < step["cpu"]["loadgen"] < 1
        for component, used in step["cpu"].items():
            if written["budgets_enforced"] and component != "loadgen":
                assert 0 < used <= written["budgets"][component] * 1.1, (component, used)
        assert step["signals"]["db_share"] is not None
        # Stage 3 has no replica and no worker: those signals are absent, not zero.
        assert step["signals"]["replica_read_share"] is None
        assert step["signals"]["fulfilment_lag_s"] is None
        assert step["signals"]["cdn_offload"] is None  # no CDN at stage 3
        assert step["signals"]["orders_per_s"] is not None


def test_stage_eight_places_orders_in_both_shards_and_keeps_every_databases_invariants(
    tmp_path: Path,
) -> None:
    """Stage 8's topology (a main primary and its replica, two order shards, accounting and
    delivery, each its own PostgreSQL server under its own budget, plus stage 7's queue and
    worker) at low load: the shards and the federated databases do the work, the write-heavy
    ramp runs after the mix, and the invariants, read through the API from every database,
    hold."""
    load = Load(step_s=8, steps=2, step_users=4, spawn_rate=10, warmup_s=2, products=100)
    result = run_stage(STAGES[8], load, tmp_path)

    assert result["invariants"]["ok"], result["invariants"]
    steps = result["steps"] + result["write_heavy"]
    assert len(result["write_heavy"]) == 2 and result["write_fleet"] == STAGES[8].write_fleet
    assert 1 <= result["write_workers"] <= STAGES[8].write_workers
    assert [step["failures"] for step in steps] == [0] * len(steps)
    orders = [step for step in result["write_heavy"] if step["signals"]["orders_per_s"]]
    assert orders, "the write-heavy ramp placed no order"
    for step in orders:
        # Orders are written in the shards, their ledger and shipments in the federated
        # databases (by the worker), and each order still takes its hold in main.
        assert step["cpu"]["shard"] > 0 and step["cpu"]["postgres"] > 0
    assert any(step["cpu"]["federated"] > 0 for step in steps)
    written = json.loads((tmp_path / "stage-8.json").read_text())
    assert written["budgets"]["shard"] == pytest.approx(2 * STAGES[7].postgres_cpus, abs=0.002)
