"""The ladder's model: demands fitted from steps, capacity predicted beside the measured peak,
and the projection of a stage to its stack's sizes (loadtests/model.py)."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests import model
from loadtests.ladder import sizes

AWS = sizes.load()


def _result(
    demands_ms: dict[str, float],
    budgets: dict[str, float],
    *,
    users: list[int],
    rps: list[float],
    p95: list[float],
    stage: int = 3,
) -> dict[str, Any]:
    steps = [
        {
            "users": u,
            "requests": int(r * 10),
            "failures": 0,
            "rps": r,
            "p95_ms": p,
            "cpu": {name: round(r * d / 1000, 4) for name, d in demands_ms.items()},
        }
        for u, r, p in zip(users, rps, p95, strict=True)
    ]
    return {
        "stage": stage,
        "name": "horizontal",
        "budgets": budgets,
        "steps": steps,
        "p95_objective_ms": 500,
    }


def test_demands_are_fitted_from_the_steps_up_to_the_knee_only() -> None:
    result = _result(
        {"app": 5.0, "postgres": 1.0},
        {"app": 0.6, "postgres": 0.3, "nginx": 0.1},
        users=[10, 20, 30, 40],
        rps=[20, 40, 60, 62],
        p95=[50, 60, 200, 900],
    )
    # Past the knee the app is throttled: its CPU stops following the throughput.
    result["steps"][3]["cpu"]["app"] = 0.6
    fitted = model.demands(result)
    assert fitted["app"].seconds == pytest.approx(0.005, rel=0.01)
    assert fitted["postgres"].seconds == pytest.approx(0.001, rel=0.01)
    assert fitted["app"].points == 3


def test_the_bottleneck_is_the_lowest_capacity_and_the_error_is_against_the_measured_peak() -> None:
    result = _result(
        {"app": 5.0, "postgres": 2.4},
        {"app": 0.6, "postgres": 0.3},
        users=[10, 20, 30, 40],
        rps=[20, 60, 100, 110],
        p95=[50, 60, 300, 900],
    )
    prediction = model.predict(result)
    assert prediction is not None
    # app: 0.6 / 5 ms = 120/s; postgres: 0.3 / 2.4 ms = 125/s, within 10 %: named with it.
    assert prediction.bottleneck == "app" and prediction.co_bottleneck == "postgres"
    assert prediction.predicted_rps == pytest.approx(120, rel=0.01)
    assert prediction.error == pytest.approx(120 / 110 - 1, rel=0.01)
    section = "\n".join(model.model_section([result]))
    assert "app (with postgres)" in section and "within ±20 %" in section


def test_a_model_that_misses_says_so() -> None:
    result = _result(
        {"app": 1.0},
        {"app": 0.6},
        users=[10, 20],
        rps=[50, 60],
        p95=[100, 900],
    )
    section = "\n".join(model.model_section([result]))
    assert "misses by more than 20 %" in section  # predicts 600/s against a peak of 60


def test_no_knee_no_model() -> None:
    result = _result({"app": 5.0}, {"app": 0.6}, users=[10], rps=[20], p95=[900])
    assert model.predict(result) is None and model.model_section([result]) == []


def test_the_projection_puts_the_demands_on_the_stacks_largest_size() -> None:
    result = _result(
        {"app": 5.0, "postgres": 1.0, "nginx": 0.3},
        {"app": 0.6, "postgres": 0.3, "nginx": 0.1},
        users=[10, 20, 30],
        rps=[20, 40, 60],
        p95=[50, 60, 200],
    )
    aws = AWS[3]
    found = model.project(result, aws, model.Assumptions(speed=1.0, session_requests=30))
    assert found is not None
    app_vcpus = aws["web"]["vcpus"] * aws["web"]["max"]
    db_vcpus = aws["database"]["vcpus"]
    expected = min(app_vcpus / 0.005, db_vcpus / 0.001)
    assert found.rps == pytest.approx(expected, rel=0.01)
    assert found.limit.startswith("app")  # nginx stands for the ALB: never the limit on AWS
    assert found.concurrent_users == pytest.approx(expected / 2.0, rel=0.01)  # 60/s from 30
    assert found.daily_users == pytest.approx(expected / 3 * 86_400 / 30, rel=0.01)
    cost = aws["cost_per_hour_usd_at_max"]
    assert found.usd_per_million == pytest.approx(cost / (0.6 * expected * 3600) * 1e6, rel=0.01)
    # A faster AWS vCPU is more capacity, in proportion.
    faster = model.project(result, aws, model.Assumptions(speed=2.0))
    assert faster is not None and faster.rps == pytest.approx(2 * found.rps, rel=0.01)
    table = "\n".join(model.projection_section([result], AWS))
    assert f"| 3 | horizontal | {aws['users']} |" in table


def test_a_ramp_that_never_broke_the_objective_is_not_a_verdict_on_the_model() -> None:
    result = _result({"app": 5.0}, {"app": 0.6}, users=[10, 20], rps=[20, 40], p95=[50, 60])
    section = "\n".join(model.model_section([result]))
    assert "the peak is a lower bound" in section and "misses" not in section


def test_a_queue_consumer_is_never_the_request_paths_limit_but_its_capacity_is_shown() -> None:
    """A saturated worker grows a backlog, not the requests' latency: the prediction is the
    request path's lowest capacity, and the worker's stands beside it."""
    result = _result(
        {"app": 5.0, "worker": 4.0, "postgres": 1.0},
        {"app": 0.4, "worker": 0.2, "postgres": 0.2},
        users=[10, 20, 30, 40],
        rps=[20, 40, 60, 75],
        p95=[50, 60, 200, 900],
        stage=7,
    )
    found = model.predict(result)
    assert found is not None
    assert found.bottleneck == "app" and found.predicted_rps == pytest.approx(80, rel=0.01)
    assert found.consumers == {"worker": pytest.approx(50, rel=0.01)}
    [row] = [line for line in model.model_section([result]) if line.startswith("| 7 ")]
    assert "worker 4.00" in row and "the worker keeps up with 50" in row


def test_a_daily_curve_is_not_fitted_and_the_section_says_so() -> None:
    ramp = _result({"app": 5.0}, {"app": 0.6}, users=[10, 20], rps=[20, 40], p95=[50, 900])
    day = _result({"app": 5.0}, {"app": 0.6}, users=[10, 20], rps=[20, 40], p95=[50, 60], stage=6)
    day |= {"name": "auto-scaling", "daily": [{"t_s": 1.0}]}
    text = "\n".join(model.model_section([ramp, day]))
    assert "| 3 | horizontal |" in text and "| 6 |" not in text
    assert "Not fitted: stage 6 (auto-scaling), a daily curve" in text


def test_an_autoscaled_ramp_with_a_day_as_its_probe_is_fitted_at_its_largest_fleet() -> None:
    # Stage 6 as the ladder runs it: a ramp (its steps) with the autoscaler on, the fleet
    # growing from 2 to 3 processes, then the day apart (its probe). The ramp is fitted, and
    # the capacity is the largest fleet's budget over the app's demand.
    ramp = _result(
        {"app": 5.0}, {"app": 0.3}, users=[10, 20, 30, 40], rps=[20, 40, 58, 60],
        p95=[50, 60, 200, 900], stage=6,
    )  # fmt: skip
    for step, processes in zip(ramp["steps"], (2, 2, 3, 3), strict=True):
        step["budgets"] = {"app": 0.15 * processes}
    ramp |= {"name": "auto-scaling", "steps_shape": "step", "daily": [{"t_s": 1.0}]}
    text = "\n".join(model.model_section([ramp]))
    assert "Not fitted" not in text
    found = model.predict(ramp)
    assert found is not None and found.predicted_rps == pytest.approx(90, rel=0.01)
    [row] = [line for line in text.splitlines() if line.startswith("| 6 ")]
    assert "| 90 | 60 |" in row


def _writes(app_ms: float, postgres_ms: float, orders: list[float], p95: list[float]) -> list[Any]:
    return [
        {
            "users": 10 * (n + 1),
            "requests": int(o * 12),
            "failures": 0,
            "rps": o * 1.1,  # a few sign-ins and restocks beside the orders
            "p95_ms": p,
            "cpu": {
                "app": round(o * app_ms / 1000, 4),
                "postgres": round(o * postgres_ms / 1000, 4),
            },
            "signals": {"orders_per_s": o},
        }
        for n, (o, p) in enumerate(zip(orders, p95, strict=True))
    ]


def test_the_write_heavy_ramp_is_fitted_per_order_and_the_primary_predicted_on_aws() -> None:
    result = {
        "stage": 7,
        "name": "service-oriented",
        "budgets": {"app": 0.3, "postgres": 0.15},
        "p95_objective_ms": 500,
        "write_heavy": _writes(10.0, 2.0, [10, 20, 28, 29], [80, 150, 300, 1400]),
    }
    # Past the knee the app is out of CPU: it stopped the ramp, far from the primary's limit.
    result["write_heavy"][3]["cpu"]["app"] = 0.3
    found = model.write_limit(result, AWS[7])
    assert found is not None
    assert found.knee_orders == 28 and found.knee_users == 30
    assert found.per_order["postgres"].seconds == pytest.approx(0.002, rel=0.01)
    assert found.bottleneck.component == "app"
    assert found.here == {
        "app": pytest.approx(30, rel=0.01),
        "postgres": pytest.approx(75, rel=0.01),
    }
    # On AWS: 16 vCPUs of web at the largest fleet, the primary's 2 vCPUs.
    assert found.aws["app"] == pytest.approx(1600, rel=0.01)
    assert found.aws["postgres"] == pytest.approx(1000, rel=0.01)
    text = "\n".join(model.write_heavy_section([result], {7: AWS[7]}))
    assert "**28 orders/s** at 30 users" in text
    assert "so where the write tier saturates is **predicted**, not measured" in text
    assert "postgres limits orders first, at 1,000 orders/s" in text


def test_a_write_heavy_ramp_without_a_knee_says_so() -> None:
    result = {
        "stage": 7, "name": "service-oriented", "budgets": {"app": 0.3}, "p95_objective_ms": 500,
        "write_heavy": _writes(10.0, 2.0, [10], [900]),
    }  # fmt: skip
    assert model.write_limit(result, AWS[7]) is None
    assert "found no step within the objective" in "\n".join(
        model.write_heavy_section([result], {7: AWS[7]})
    )


def _write_result(stage: int, orders: list[float], p95: list[float]) -> dict[str, Any]:
    return {
        "stage": stage,
        "name": "federated" if stage == 8 else "service-oriented",
        "budgets": {"app": 1.0, "postgres": 0.15},
        "p95_objective_ms": 500,
        "write_heavy": _writes(10.0, 2.0, orders, p95),
    }


@pytest.mark.parametrize(
    ("eight", "verdict"),
    [([10, 20, 40, 50, 51], "**2.00 x**, at least the 1.7 x"), ([10, 20, 30, 31], "**short of**")],
)
def test_stage_8s_write_knee_is_judged_against_stage_7s(eight: list[float], verdict: str) -> None:
    seven = _write_result(7, [10, 20, 25, 26], [80, 150, 300, 1400])
    p95 = [80, 120, 200, 300, 1400][-len(eight) :]
    text = "\n".join(
        model.write_heavy_section([seven, _write_result(8, eight, p95)], {7: AWS[7], 8: AWS[8]})
    )
    assert "## Stage 7: where the single write primary saturates" in text
    assert "## Stage 8: orders across two shards" in text
    assert "## Stage 8 against stage 7: orders at the same budget per primary" in text
    assert verdict in text


def test_without_stage_7_stage_8_is_not_judged() -> None:
    text = "\n".join(
        model.write_heavy_section([_write_result(8, [10, 20, 30], [80, 150, 300])], {8: AWS[8]})
    )
    assert "## Stage 8: orders across two shards" in text
    assert "against stage 7" not in text


def test_an_autoscaled_mix_is_judged_by_its_own_steps_fleet_not_the_write_ramps() -> None:
    """Stages 7 and 8 grow the fleet to 8 app processes for the write-heavy ramp after the mix;
    the mix's capacity is its steps' largest fleet, not that one."""
    steps = [
        {"users": 10 * n, "rps": 10.0 * n, "p95_ms": 100, "failures": 0, "requests": 100 * n,
         "cpu": {"app": 0.01 * n}, "budgets": {"app": 0.2 if n < 3 else 0.3}}
        for n in (1, 2, 3)
    ]  # fmt: skip
    result = {"stage": 7, "budgets": {"app": 1.1}, "steps": steps, "p95_objective_ms": 500}
    found = model.predict(result)
    assert found is not None
    assert found.capacities["app"] == pytest.approx(0.3 / 0.001, rel=0.01)


def test_orders_per_second_are_the_suites_answered_orders_before_the_apps_count() -> None:
    step = {
        "started_at": 100.0,
        "ended_at": 110.0,
        "by_name": {"POST /orders": {"requests": 650, "failures": 50}},
        "signals": {"orders_per_s": 22.0},  # scrapes lost on a saturated machine
    }
    assert model.orders_answered(step) == 60.0
    assert model.orders_answered({"signals": {"orders_per_s": 22.0}}) == 22.0


def test_several_runs_of_stages_7_and_8_are_judged_by_their_median_with_each_shown() -> None:
    def run(commit: str, eight: list[float]) -> list[dict[str, Any]]:
        found = [
            _write_result(7, [10, 20, 25, 26], [80, 150, 300, 1400]),
            _write_result(8, eight, [80, 120, 200, 300, 1400][-len(eight) :]),
        ]
        return [{**r, "provenance": {"commit": commit * 40}} for r in found]

    first, second, third = (
        run("a", [10, 20, 40, 50, 51]),
        run("b", [10, 20, 30, 31]),
        run("c", [10, 20, 45, 46]),
    )
    text = "\n".join(
        model.write_heavy_section(first, {7: AWS[7], 8: AWS[8]}, repeats=[second, third])
    )
    assert "3 runs of stages 7 and 8" in text
    assert "| 1 | aaaaaaa | 25 (" in text and "| 2.00 x |" in text
    assert "| 2 | bbbbbbb |" in text and "| 1.20 x |" in text
    assert "| 3 | ccccccc |" in text and "| 1.80 x |" in text
    assert "Median **1.80 x** (runs 1.20-2.00 x), at least the 1.7 x" in text
    assert "1 of 3 runs fell short of it." in text
    # The stage sections describe run 1 only; a repeat without stage 8 is not paired.
    assert text.count("## Stage 8: orders across two shards") == 1
    alone = "\n".join(
        model.write_heavy_section(first, {7: AWS[7], 8: AWS[8]}, repeats=[second[:1]])
    )
    assert "runs of stages 7 and 8" not in alone and "**2.00 x**" in alone
