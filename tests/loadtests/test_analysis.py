"""The knee and bottleneck rules on a recorded run (tests/loadtests/data: three stages made from
a real short step run against a served shop, with CPU figures set by hand) and their edges."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from loadtests import analysis

DATA = Path(__file__).parent / "data"


def recorded(stage: int) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((DATA / f"stage-{stage}.json").read_text())
    return result


def step(**overrides: Any) -> dict[str, Any]:
    base = {"users": 10, "requests": 1000, "failures": 0, "rps": 100.0, "p95_ms": 100.0}
    return base | overrides


def test_percentiles_come_from_the_histogram_of_the_window() -> None:
    histogram = {10: 50, 20: 40, 100: 9, 900: 1}
    assert analysis.percentile(histogram, 0.5) == 10
    assert analysis.percentile(histogram, 0.95) == 100
    assert analysis.percentile(histogram, 0.999) == 900
    assert analysis.percentile({}, 0.95) == 0.0
    later, earlier = {10: 60, 20: 40, 30: 5}, {10: 50, 20: 40}
    assert analysis.histogram_delta(later, earlier) == {10: 10, 30: 5}


def test_the_knee_is_the_busiest_step_within_the_objective() -> None:
    steps = recorded(2)["steps"]
    at = analysis.knee(steps, p95_ms=500)
    assert at == 2  # steps 3 and 4 serve as much or more, but over 500 ms at p95
    assert steps[at]["p95_ms"] < 500
    assert analysis.knee(steps, p95_ms=1000) == 3  # a looser objective moves the knee up


def test_a_step_with_over_one_percent_errors_is_never_the_knee() -> None:
    steps = recorded(4)["steps"]
    last = steps[-1]
    assert last["p95_ms"] < 500 and last["rps"] > steps[3]["rps"]
    assert last["failures"] / last["requests"] > 0.01
    assert analysis.knee(steps, p95_ms=500) == 3
    assert analysis.knee([step(failures=9)], p95_ms=500) == 0  # 0.9 %: within
    assert analysis.knee([step(failures=10)], p95_ms=500) is None  # 1 %: not under 1 %


def test_no_knee_when_no_step_meets_the_objective() -> None:
    assert analysis.knee([step(p95_ms=800), step(p95_ms=1200)], p95_ms=500) is None
    assert analysis.knee([step(requests=0, rps=0.0, p95_ms=0.0)], p95_ms=500) is None
    assert analysis.knee([], p95_ms=500) is None
    result = recorded(2) | {"p95_objective_ms": 50.0}
    summary = analysis.summarise(result)
    assert summary.knee_rps is None and summary.bottleneck is None
    assert "no step met p95 < 50 ms" in summary.note


def test_each_recorded_stage_names_the_component_that_reached_its_budget() -> None:
    named = {}
    for stage in (2, 3, 4):
        summary = analysis.summarise(recorded(stage))
        assert summary.bottleneck is not None
        named[stage] = summary.bottleneck.component
        assert summary.bottleneck.utilisation >= analysis.SATURATED
    assert named == {2: "app", 3: "postgres", 4: "replica"}
    evidence = analysis.summarise(recorded(3)).bottleneck.evidence  # type: ignore[union-attr]
    assert evidence.startswith("postgres 0.50 of 0.5 CPU (100%) past the knee, 92% at it")
    assert "pool wait 6.5 ms" in evidence


def test_below_85_percent_of_every_budget_nothing_is_named() -> None:
    found = analysis.bottleneck(
        {"cpu": {"app": 0.7, "postgres": 0.2}}, {"app": 1.0, "postgres": 0.5}
    )
    assert found.component == analysis.NO_BOTTLENECK
    assert found.utilisation == pytest.approx(0.7)
    assert "highest: app 0.70 of 1 CPU (70%)" in found.evidence
    empty = analysis.bottleneck({"cpu": {}}, {"app": 1.0})
    assert empty.component == analysis.NO_BOTTLENECK
    # A component without a budget (or a zero one) is not judged against one.
    assert analysis.bottleneck({"cpu": {"moto": 3.0}}, {"moto": 0.0}).utilisation == 0.0


def test_the_machine_is_named_when_its_cores_ran_out_before_any_budget() -> None:
    """Stage 8's write ramp at 085349e: no budget at 85 %, the two cores spent by the shop,
    moto and Locust together. Without the cores (a deployed run), nothing is named."""
    budgets = {"app": 1.1, "postgres": 0.138, "shard": 0.276, "worker": 0.55}
    past = {
        "cpu": {"app": 0.88, "postgres": 0.11, "shard": 0.14, "worker": 0.35, "moto": 0.30}
        | {"loadgen": 0.08}
    }
    found = analysis.bottleneck(past, budgets, cores=2)
    assert found.component == analysis.MACHINE
    assert found.utilisation == pytest.approx(0.93)
    assert found.evidence.startswith(
        "1.86 of the machine's 2 cores (93%) (app 0.88, worker 0.35, moto 0.30, shard 0.14"
    )
    assert "highest: app 0.88 of 1.1 CPU (80%)" in found.evidence
    assert analysis.bottleneck(past, budgets).component == analysis.NO_BOTTLENECK
    spare = {"cpu": {"app": 0.6, "postgres": 0.1, "moto": 0.2}}
    assert analysis.bottleneck(spare, budgets, cores=2).component == analysis.NO_BOTTLENECK


def test_the_component_that_saturates_past_the_knee_is_named_though_below_85_at_it() -> None:
    """A p95 bound breaks while the limiting component is still at 70 % of its budget (it
    queues already): the step past the knee, where it reaches its budget, names it."""
    budgets = {"app": 0.5, "postgres": 0.2}
    at_knee = {"cpu": {"app": 0.35, "postgres": 0.1}}
    past = {"cpu": {"app": 0.49, "postgres": 0.12}}
    found = analysis.bottleneck(at_knee, budgets, beyond=past)
    assert found.component == "app"
    assert found.evidence.startswith("app 0.49 of 0.5 CPU (98%) past the knee, 70% at it")
    # Still nothing named when nothing reaches its budget even past the knee.
    idle = {"cpu": {"app": 0.3, "postgres": 0.1}}
    assert analysis.bottleneck(at_knee, budgets, beyond=idle).component == analysis.NO_BOTTLENECK
    # And the component named is the one saturating past the knee, not the busiest at it.
    shifted = {"cpu": {"app": 0.36, "postgres": 0.19}}
    assert analysis.bottleneck(at_knee, budgets, beyond=shifted).component == "postgres"


def test_a_saturated_queue_consumer_is_named_beside_the_request_paths_bottleneck() -> None:
    """Stage 7: the worker at its budget grows a backlog, not the requests' p95; the request
    path's component is named, and the evidence says the worker fell behind."""
    budgets = {"app": 0.4, "worker": 0.14, "postgres": 0.14}
    at_knee = {"cpu": {"app": 0.28, "worker": 0.12, "postgres": 0.05}}
    past = {"cpu": {"app": 0.36, "worker": 0.14, "postgres": 0.06}}
    found = analysis.bottleneck(at_knee, budgets, beyond=past)
    assert found.component == "app"
    assert "worker 0.14 of 0.14 CPU (100%): the queue's consumer, its backlog grows" in (
        found.evidence
    )
    idle_worker = {"cpu": {"app": 0.36, "worker": 0.05, "postgres": 0.06}}
    assert "consumer" not in analysis.bottleneck(at_knee, budgets, beyond=idle_worker).evidence


def test_a_slice_of_a_changing_fleet_is_judged_against_the_processes_that_ran_in_it() -> None:
    """Stage 6: the autoscaler's largest fleet (3 x 0.2) is not what ran at every slice; two
    processes at 0.38 of their 0.4 are saturated, though at 63 % of the largest fleet."""
    largest = {"app": 0.6, "postgres": 0.1}
    past = {"cpu": {"app": 0.38, "postgres": 0.05}, "budgets": {"app": 0.4, "postgres": 0.1}}
    found = analysis.bottleneck({"cpu": {"app": 0.3}}, largest, beyond=past)
    assert found.component == "app"
    assert found.evidence.startswith("app 0.38 of 0.4 CPU (95%) past the knee")
    assert analysis.utilisations({"cpu": {"app": 0.38}}, largest)["app"] == pytest.approx(
        0.38 / 0.6
    )


def test_the_bottleneck_is_judged_by_share_of_budget_not_by_cpu_used() -> None:
    found = analysis.bottleneck({"cpu": {"app": 1.8, "nginx": 0.24}}, {"app": 2.0, "nginx": 0.25})
    assert found.component == "nginx"  # 96 % of its budget against the app's 90 %


def test_the_summary_says_when_budgets_were_not_enforced_or_a_stage_did_not_run() -> None:
    loose = copy.deepcopy(recorded(3)) | {"budgets_enforced": False}
    assert "CPU budgets not enforced" in analysis.summarise(loose).note
    missing = {"stage": 5, "name": "cache-cdn", "missing": "no carts table yet", "steps": []}
    summary = analysis.summarise(missing)
    assert summary.knee_rps is None and summary.note == "not run: no carts table yet"
    broken = copy.deepcopy(recorded(3))
    broken["invariants"] = {"ok": False, "checks": {"stock_never_negative": {"ok": False}}}
    assert "invariants violated: stock_never_negative" in analysis.summarise(broken).note
    busy_generator = copy.deepcopy(recorded(3)) | {"loadgen_cpu": 0.97}
    assert "load generator used 0.97" in analysis.summarise(busy_generator).note


def test_the_step_past_the_knee_shows_what_queued_there() -> None:
    summary = analysis.summarise(recorded(3))
    assert summary.past_knee.startswith(
        "past the knee (30 users, 97 requests/s, p95 1500 ms, 0.0% errors): "
        "postgres 100%, app 71%, nginx 48% of budget; db 74% of request time; pool wait 40.0 ms"
    )
    no_knee = analysis.summarise(recorded(2) | {"p95_objective_ms": 50.0})
    assert no_knee.past_knee.startswith("the first step (6 users,")
    # A daily curve's slices are not in load order: past the knee is the next busier slice.
    slices = [step(users=u, p95_ms=p) for u, p in ((5, 90), (30, 900), (20, 300), (10, 120))]
    assert analysis.past_knee(slices, 2, {}).startswith("past the knee (30 users,")
    assert analysis.past_knee(slices, 1, {}) == ""  # nothing heavier than the busiest slice


def test_a_step_where_the_load_generator_was_the_limit_is_never_the_knee() -> None:
    steps = [
        {"users": 10, "requests": 100, "failures": 0, "rps": 50.0, "p95_ms": 80.0,
         "cpu": {"app": 0.1, "loadgen": 0.3}},
        {"users": 20, "requests": 200, "failures": 0, "rps": 90.0, "p95_ms": 90.0,
         "cpu": {"app": 0.2, "loadgen": 0.9}},
    ]  # fmt: skip
    assert analysis.knee(steps, p95_ms=500) == 0
    summary = analysis.summarise(
        {"stage": 3, "name": "horizontal", "steps": steps, "budgets": {"app": 0.5},
         "p95_objective_ms": 500, "budgets_enforced": True}
    )  # fmt: skip
    assert summary.knee_rps == 50.0
    assert "1 step(s) not judged: the load generator" in summary.note
    assert "load generator at the knee: 0.30 CPU" in summary.note


def _pass(*rps_p95: tuple[float, float]) -> list[dict[str, Any]]:
    return [
        {"users": 10 * (i + 1), "requests": 100, "failures": 0, "rps": r, "p95_ms": p}
        for i, (r, p) in enumerate(rps_p95)
    ]


def test_the_knees_of_repeated_passes_give_a_median_and_a_range() -> None:
    passes = [
        _pass((100, 200), (120, 300), (125, 900)),
        _pass((100, 200), (110, 400), (130, 700)),
        _pass((100, 200), (140, 450)),
        _pass((90, 800)),  # found no knee
    ]
    found = analysis.spread(passes, p95_ms=500)
    assert found == analysis.Spread(median=120, low=110, high=140, found=3, passes=4)
    assert found.overlaps(analysis.Spread(135, 135, 150, 3, 3))
    assert not found.overlaps(analysis.Spread(150, 141, 160, 3, 3))


def test_with_fine_passes_a_knee_rises_only_when_the_ranges_do_not_overlap() -> None:
    from loadtests import report

    def stage(number: int, knees: list[float]) -> dict[str, Any]:
        return {
            "stage": number, "name": f"stage-{number}", "budgets": {}, "budgets_enforced": True,
            "p95_objective_ms": 500, "steps": _pass((knees[0], 100), (knees[0] + 50, 900)),
            "fine": [_pass((k, 100), (k + 30, 900)) for k in knees],
        }  # fmt: skip

    told = report.story(
        [analysis.summarise(stage(2, [100, 110, 120])), analysis.summarise(stage(3, [115, 130]))]
    )
    assert any("ranges overlap (100-120 and 115-130" in line for line in told), told
    told = report.story(
        [analysis.summarise(stage(2, [100, 110])), analysis.summarise(stage(3, [150, 160]))]
    )
    assert any("the knee rises from 100 to 150" in line for line in told), told
    row = report.table([analysis.summarise(stage(3, [150, 160, 155]))])
    assert "150 (median 155, 150-160 over 3)" in row
