"""Faults under load, the short version of `make faults`: stage 3's topology (nginx, two app
processes, a private PostgreSQL, each under its budget) under a light steady load, one app
process killed with SIGKILL. The supervisor brings it back, no order the suite saw
acknowledged is lost or doubled, the invariants hold, and the only errors are a balancer's 502,
the app's 503 or a refused connection, inside the fault's window and its recovery."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from loadtests import analysis
from loadtests.ladder.faults import (
    ACCEPTED_ERRORS,
    FAULTS,
    KNEE_REPORT,
    knee_users,
    run_stage_faults,
    summarise,
    summarise_again,
)
from loadtests.ladder.stages import STAGES
from tests import pg_cluster

needs_postgres = pytest.mark.skipif(
    pg_cluster.why_unavailable() is not None, reason="no private PostgreSQL"
)
needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_the_steady_load_comes_from_the_users_at_each_stages_knee(stage: int) -> None:
    """The faults' load is a share of the users at the knee in the committed ladder report, read
    from the column of that name: the same figure as the knee of the stage's raw results."""
    raw = KNEE_REPORT.parent / "raw" / f"stage-{stage}.json.gz"
    result = json.loads(gzip.decompress(raw.read_bytes()))
    at = analysis.knee(result["steps"], p95_ms=result["p95_objective_ms"])
    assert at is not None
    assert knee_users(stage) == int(result["steps"][at]["users"])


def test_a_report_without_the_knees_column_gives_no_users(tmp_path: Path) -> None:
    report = tmp_path / "README.md"
    report.write_text("| # | stage | p95 |\n|---|---|---:|\n| 3 | horizontal | 66 |\n")
    assert knee_users(3, report) is None


@needs_postgres
@needs_nginx
def test_killing_an_app_process_under_load_loses_no_acknowledged_order(tmp_path: Path) -> None:
    result = run_stage_faults(
        STAGES[3],
        [FAULTS["app-kill"]],
        tmp_path,
        users=8,
        baseline_s=3,
        after_s=5,
        products=50,
        think_s=0.3,
    )

    [row] = result["faults"]
    assert row["detail"]["killed"] == "app-0"
    assert row["window_s"] < 60, "the supervisor brought the process back"
    orders = row["orders"]
    assert orders["acknowledged"] > 0
    assert orders["lost"] == 0 and orders["duplicated"] == 0, orders
    assert orders["keys_not_one_row"] == 0, orders
    # Each ends fulfilled once: its sale in the ledger once and one shipment.
    assert orders["unfulfilled"] == orders["fulfilled_twice"] == 0, orders
    assert orders["fulfilled_incompletely"] == 0, orders
    assert row["invariants"]["ok"], row["invariants"]
    errors = row["summary"]["errors"]
    assert errors["before"] == {}
    assert set(errors["during"]) | set(errors["after"]) <= set(ACCEPTED_ERRORS), errors
    # Latency is not asserted: on a shared 2-core machine p95 is the neighbours' as much as ours.
    assert (tmp_path / "stage-3.json").is_file()


def test_errors_are_counted_by_phase_and_kind_and_recovery_runs_to_the_last_one() -> None:
    # start, name, status, ms, failed, exception, Retry-After
    lines = [
        [100.0, "/products", 200, 10.0, False, "", False],
        [100.4, "/orders", 503, 300.0, True, "", True],  # sent before the fault, answered in it
        [101.0, "/orders", 502, 5.0, True, "", False],
        [102.0, "/orders", 503, 5.0, True, "", True],
        [103.0, "/products", 503, 5.0, True, "", False],
        [104.0, "/products", 0, 1.0, True, "ConnectionRefusedError", False],
        [105.0, "/cart", 0, 1.0, True, "no answer: ConnectionRefusedError", False],
        [106.0, "/cart", 0, 6000.0, True, "no answer: RetriesExceeded", False],
        [108.0, "/products", 500, 20.0, True, "", False],
        [130.0, "/products", 200, 10.0, False, "", False],
    ]
    summary = summarise(lines, injected_at=100.5, restored_at=103.5, p95_ms=500)

    assert summary["errors"]["before"] == {}
    assert summary["errors"]["during"] == {"502": 1, "503": 2, "503 without Retry-After": 1}
    assert summary["errors"]["after"] == {"refused": 2, "no answer: RetriesExceeded": 1, "500": 1}
    assert summary["errors_500"] == 1
    assert summary["unaccepted_errors"] == {
        "503 without Retry-After": 1,
        "no answer: RetriesExceeded": 1,
        "500": 1,
    }
    # To the end of the 5-s slice in which the 6-s request ended (its p95 missed the objective).
    assert summary["recovery_s"] == pytest.approx(115.5 - 103.5, abs=0.1)
    assert summary["recovered"]


def test_the_p95_before_a_fault_is_the_steady_loads_not_its_start() -> None:
    # start, name, status, ms, failed, exception, Retry-After
    start = [[t, "/auth/sign-up", 201, 900.0, False, "", False] for t in (0.0, 0.1, 0.2, 0.3)]
    steady = [[10.0 + t, "/products", 200, 40.0, False, "", False] for t in range(20)]
    lines = start + steady
    summary = summarise(lines, injected_at=30.5, restored_at=31.0, p95_ms=500)
    assert summary["p95_before_ms"] == 40.0  # the sign-ups ended more than 15 s before
    # The same sign-ups inside the window count.
    summary = summarise(lines, injected_at=30.5, restored_at=31.0, p95_ms=500, before_s=31)
    assert summary["p95_before_ms"] == 900.0


def test_a_stages_rows_are_counted_again_from_their_journals(tmp_path: Path) -> None:
    journal = tmp_path / "app-kill" / "requests.jsonl"
    journal.parent.mkdir()
    lines = [[10.0 + t, "/products", 200, 40.0, False, "", False] for t in range(20)]
    lines.append([31.0, "/orders", 502, 5.0, True, "", False])
    lines += [[35.0 + t, "/products", 200, 40.0, False, "", False] for t in range(30)]
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
    row = {
        "fault": "app-kill",
        "applies": True,
        "injected_at": 30.5,
        "restored_at": 32.0,
        "p95_objective_ms": 500,
        "load_average": [1.0, 1.0, 1.0],
        "orders": {"acknowledged": 1, "lost": 0, "duplicated": 0, "keys_not_one_row": 0},
        "invariants": {"ok": True},
        "summary": {"p95_before_ms": 900.0},
        "fails": ["objective missed before the fault"],
        "journals": str(tmp_path / "app-kill"),
    }
    result = {"stage": 3, "faults": [row, {"fault": "redis-kill", "applies": False}]}
    summarise_again(result, "after the p95 before a fault left the users' sign-ups out")
    assert row["summary"]["p95_before_ms"] == 40.0
    assert row["summary"]["errors"]["during"] == {"502": 1}
    assert row["fails"] == []
    assert result["summarised_by"].startswith("after the p95")
