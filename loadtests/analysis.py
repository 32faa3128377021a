"""The figures a load test is judged by: percentiles over a window, the knee, the bottleneck.

Pure functions over plain data (the per-step lines and the per-stage results of the interface in
README "Load tests"), so they are tested on recorded runs without a server.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SATURATED = 0.85
"""A component using at least this share of its CPU budget counts as saturated."""

NO_BOTTLENECK = "none (load generator or latency-bound)"
MACHINE = "the machine"
"""Named when no budgeted component saturates but everything measured on the machine (the
shop's processes, the stand-ins and the load generator) uses SATURATED of its cores or more:
the budgets were not reached because the machine ran out first."""


def percentile(histogram: Mapping[int, int], fraction: float) -> float:
    """The response time (ms) below which `fraction` of the requests in `histogram`
    ({rounded ms: count}, Locust's `response_times`) fall; 0.0 for an empty histogram."""
    total = sum(count for count in histogram.values() if count > 0)
    if total == 0:
        return 0.0
    wanted = fraction * total
    seen = 0
    for ms in sorted(histogram):
        count = histogram[ms]
        if count <= 0:
            continue
        seen += count
        if seen >= wanted:
            return float(ms)
    return float(max(histogram))  # pragma: no cover - seen reaches total


def histogram_delta(later: Mapping[int, int], earlier: Mapping[int, int]) -> dict[int, int]:
    """The requests recorded between two snapshots of one cumulative histogram."""
    delta = {ms: count - earlier.get(ms, 0) for ms, count in later.items()}
    return {ms: count for ms, count in delta.items() if count > 0}


def error_ratio(step: Mapping[str, Any]) -> float:
    requests = int(step.get("requests") or 0)
    return 0.0 if requests == 0 else int(step.get("failures") or 0) / requests


def loadgen_saturated(step: Mapping[str, Any]) -> bool:
    """The load generator used SATURATED of its core or more during the step: its figures
    measure Locust as much as the shop."""
    return float((step.get("cpu") or {}).get("loadgen") or 0.0) >= SATURATED


def meets_objective(step: Mapping[str, Any], *, p95_ms: float, max_error_ratio: float) -> bool:
    """A step meets the objective when it served something, its p95 is under the bound, under
    `max_error_ratio` of its requests failed, and the load generator was not the limit."""
    return (
        int(step.get("requests") or 0) > 0
        and float(step["p95_ms"]) < p95_ms
        and error_ratio(step) < max_error_ratio
        and not loadgen_saturated(step)
    )


def knee(
    steps: Sequence[Mapping[str, Any]], *, p95_ms: float, max_error_ratio: float = 0.01
) -> int | None:
    """Index (into `steps`) of the highest-throughput step that meets the objective: p95 under
    `p95_ms` and fewer than `max_error_ratio` of its requests failed. None when no step does."""
    best: int | None = None
    for index, step in enumerate(steps):
        if not meets_objective(step, p95_ms=p95_ms, max_error_ratio=max_error_ratio):
            continue
        if best is None or float(step["rps"]) > float(steps[best]["rps"]):
            best = index
    return best


@dataclass(frozen=True)
class Bottleneck:
    """The component named as the limit at a step, how much of its budget it used, and the
    figures that say so, in words."""

    component: str
    utilisation: float
    evidence: str


def budgets_during(step: Mapping[str, Any], budgets: Mapping[str, float]) -> Mapping[str, float]:
    """The budgets that held during `step`: its own when the fleet changed size during the run
    (stage 6's autoscaler), else the stage's."""
    own: Mapping[str, float] | None = step.get("budgets")
    return own or budgets


def utilisations(step: Mapping[str, Any], budgets: Mapping[str, float]) -> dict[str, float]:
    """CPU used over budget per component that has both (a budget of 0 or less is skipped),
    against the budgets that held during the step."""
    budgets = budgets_during(step, budgets)
    cpu: Mapping[str, float] = step.get("cpu") or {}
    return {
        name: float(cpu[name]) / float(budget)
        for name, budget in budgets.items()
        if name in cpu and cpu[name] is not None and float(budget) > 0
    }


def _signals_text(step: Mapping[str, Any]) -> str:
    signals: Mapping[str, Any] = step.get("signals") or {}
    parts = []
    if signals.get("db_share") is not None:
        parts.append(f"db {float(signals['db_share']):.0%} of request time")
    if signals.get("pool_wait_ms") is not None:
        parts.append(f"pool wait {float(signals['pool_wait_ms']):.1f} ms")
    if signals.get("cache_hit_ratio") is not None:
        parts.append(f"cache hits {float(signals['cache_hit_ratio']):.0%}")
    if signals.get("replica_lag_s") is not None:
        parts.append(f"replica lag {float(signals['replica_lag_s']):.2f} s")
    if signals.get("replica_read_share") is not None:
        parts.append(
            f"reads on the replica {float(signals['replica_read_share']):.0%}"
            f" ({float(signals.get('replica_skipped_share') or 0):.1%} passed over)"
        )
    if signals.get("queue_depth") is not None:
        parts.append(f"queue depth {float(signals['queue_depth']):.0f}")
    if signals.get("fulfilment_lag_s") is not None:
        parts.append(f"fulfilment lag {float(signals['fulfilment_lag_s']):.1f} s")
    return "; ".join(parts)


CONSUMERS = ("worker",)
"""The queue's consumers: one that saturates grows a backlog (the fulfilment lag), not the
requests' latency, so it is named beside the request path's bottleneck, never as it."""


def bottleneck(
    step: Mapping[str, Any],
    budgets: Mapping[str, float],
    *,
    beyond: Mapping[str, Any] | None = None,
    cores: int | None = None,
) -> Bottleneck:
    """The component that saturates as the load passes `step` (the knee).

    Without `beyond` (the step just past the knee): the component whose CPU used over its
    budget is highest at `step`, named when it reaches SATURATED (85 %). With `beyond`: the
    component highest over its budget there, where the objective broke, named when it reached
    SATURATED there; at the knee itself it is often below (a component at 70 % of its budget
    already queues enough to break a p95 bound). When none reaches SATURATED, the component is
    NO_BOTTLENECK: the limit is then the load generator, or latency (locks, pools, waits), not a
    CPU budget, or, given the machine's `cores`, MACHINE when all the CPU measured reached
    SATURATED of them."""
    judged = beyond if beyond is not None else step
    every = utilisations(judged, budgets)
    shares = {name: share for name, share in every.items() if name not in CONSUMERS}
    cpu: Mapping[str, float] = judged.get("cpu") or {}
    signals = _signals_text(step)
    behind = [
        f"{name} {float(cpu[name]):.2f} of {float(budgets_during(judged, budgets)[name]):.3g} "
        f"CPU ({every[name]:.0%}): the queue's consumer, its backlog grows"
        for name in CONSUMERS
        if every.get(name, 0.0) >= SATURATED
    ]
    if behind:
        signals = "; ".join([*behind, signals] if signals else behind)
    if not shares:
        evidence = "no CPU figures for any budgeted component"
        return Bottleneck(NO_BOTTLENECK, 0.0, f"{evidence}; {signals}" if signals else evidence)
    name = max(shares, key=lambda component: (shares[component], component))
    share = shares[name]
    budget = float(budgets_during(judged, budgets)[name])
    figure = f"{name} {float(cpu[name]):.2f} of {budget:.3g} CPU ({share:.0%})"
    if beyond is not None:
        at_knee = utilisations(step, budgets).get(name)
        figure += " past the knee" + (f", {at_knee:.0%} at it" if at_knee is not None else "")
    if share < SATURATED:
        evidence = f"no component at {SATURATED:.0%} of its budget; highest: {figure}"
        used = sum(float(v) for v in cpu.values())
        if cores and used >= SATURATED * cores:
            parts = ", ".join(f"{n} {float(v):.2f}" for n, v in sorted(
                cpu.items(), key=lambda item: -float(item[1])) if float(v) >= 0.01)  # fmt: skip
            evidence = (
                f"{used:.2f} of the machine's {cores} cores ({used / cores:.0%})"
                f"{' past the knee' if beyond is not None else ''} ({parts}); {evidence}"
            )
            return Bottleneck(
                MACHINE, used / cores, f"{evidence}; {signals}" if signals else evidence
            )
        return Bottleneck(NO_BOTTLENECK, share, f"{evidence}; {signals}" if signals else evidence)
    return Bottleneck(name, share, f"{figure}; {signals}" if signals else figure)


def machine_cores(result: Mapping[str, Any]) -> int | None:
    """The cores of the machine a local result ran on (its provenance); None for a deployed
    run, whose components have machines of their own."""
    if result.get("source", "local") != "local":
        return None
    cores = (result.get("provenance") or {}).get("cores")
    return int(cores) if cores else None


def steps_are_a_day(result: Mapping[str, Any]) -> bool:
    """Whether a result's `steps` are a day's slices (a deployed stage 6 run on its daily
    curve) rather than a ramp's steps (every local stage: stage 6's day is its probe, apart)."""
    shape = result.get("steps_shape")
    return shape == "daily" if shape is not None else bool(result.get("daily"))


def heavier(steps: Sequence[Mapping[str, Any]], at: int | None) -> int | None:
    """The least loaded step with more users than step `at` (all steps when None): the next
    step of a ramp, the next busier slice of a daily curve."""
    floor = -1 if at is None else int(steps[at]["users"])
    heavier = [i for i, step in enumerate(steps) if int(step["users"]) > floor]
    if not heavier:
        return None
    return min(heavier, key=lambda i: (int(steps[i]["users"]), i))


@dataclass(frozen=True)
class StageSummary:
    """One row of the report: a stage's knee and its bottleneck, or why it has none."""

    stage: int
    name: str
    knee_rps: float | None
    knee_users: int | None
    p95_at_knee_ms: float | None
    bottleneck: Bottleneck | None
    note: str
    past_knee: str = ""
    """What the next step (or, without a knee, the first) shows, where the objective broke: a
    component far from its CPU budget at the knee can be the one that queues past it."""
    spread: Spread | None = None
    """The knee of each fine pass around the ramp's knee: its repeatability."""
    cpus_per_vcpu: float | None = None
    """Local CPUs per AWS vCPU of the run's budgets (one factor per stage)."""

    def at_stack_size(self, rps: float) -> float | None:
        """`rps` here as requests/s of the stack's minimum size: every scaled component has
        the same factor, so a knee divides by it (CPU alone; the stand-ins are not scaled)."""
        return rps / self.cpus_per_vcpu if self.cpus_per_vcpu else None


@dataclass(frozen=True)
class Spread:
    """Knees (requests/s) of repeated passes: median, lowest, highest, and how many passes
    found one out of how many ran."""

    median: float
    low: float
    high: float
    found: int
    passes: int

    def overlaps(self, other: Spread) -> bool:
        return self.low <= other.high and other.low <= self.high

    def times(self, factor: float) -> Spread:
        return Spread(
            self.median * factor, self.low * factor, self.high * factor, self.found, self.passes
        )


def spread(passes: Sequence[Sequence[Mapping[str, Any]]], *, p95_ms: float) -> Spread | None:
    """The spread of the knees of `passes` (each a list of steps); None without any knee."""
    knees = []
    for steps in passes:
        at = knee(steps, p95_ms=p95_ms)
        if at is not None:
            knees.append(float(steps[at]["rps"]))
    if not knees:
        return None
    return Spread(statistics.median(knees), min(knees), max(knees), len(knees), len(passes))


def past_knee(
    steps: Sequence[Mapping[str, Any]], at: int | None, budgets: Mapping[str, float]
) -> str:
    """The figures of the step after the knee (the least loaded step when there is no knee):
    users, p95, errors, each component's CPU against its budget (highest first), and the
    signals."""
    index = heavier(steps, at)
    if index is None:
        return ""
    step = steps[index]
    shares = sorted(utilisations(step, budgets).items(), key=lambda kv: (-kv[1], kv[0]))
    where = "the first step" if at is None else "past the knee"
    parts = [
        f"{where} ({int(step['users'])} users, {float(step['rps']):.0f} requests/s, "
        f"p95 {float(step['p95_ms']):.0f} ms, {error_ratio(step):.1%} errors)"
    ]
    if shares:
        parts.append(", ".join(f"{name} {share:.0%}" for name, share in shares) + " of budget")
    stopped = sorted(
        ((name, t["throttled"]) for name, t in (step.get("throttled") or {}).items()),
        key=lambda kv: (-kv[1], kv[0]),
    )
    if any(share > 0 for _, share in stopped):
        parts.append(
            "throttled in "
            + ", ".join(f"{name} {share:.0%}" for name, share in stopped if share > 0)
            + " of its quota periods"
        )
    signals = _signals_text(step)
    if signals:
        parts.append(signals)
    return ": ".join(parts[:2]) + ("; " + "; ".join(parts[2:]) if parts[2:] else "")


def summarise(result: Mapping[str, Any]) -> StageSummary:
    """The report row of one per-stage result (`ladder-results/stage-<n>.json`)."""
    stage, name = int(result["stage"]), str(result["name"])
    if result.get("missing"):
        return StageSummary(stage, name, None, None, None, None, f"not run: {result['missing']}")
    steps: Sequence[Mapping[str, Any]] = result.get("steps") or []
    objective = float(result.get("p95_objective_ms") or 500.0)
    notes = []
    invariants = result.get("invariants") or {}
    if invariants and not invariants.get("ok", False):
        broken = [k for k, v in (invariants.get("checks") or {}).items() if not v.get("ok")]
        notes.append(f"invariants violated: {', '.join(broken) or 'see the run'}")
    if not result.get("budgets_enforced", False):
        notes.append("CPU budgets not enforced: utilisation is of a notional budget")
    loadgen = result.get("loadgen_cpu")
    if loadgen is not None and float(loadgen) >= SATURATED:
        notes.append(f"the load generator used {float(loadgen):.2f} of a core: it may be the limit")
    busy = [step for step in steps if loadgen_saturated(step)]
    if busy:
        notes.append(
            f"{len(busy)} step(s) not judged: the load generator used {SATURATED:.0%} of its "
            "core or more"
        )
    at = knee(steps, p95_ms=objective)
    if at is not None and "loadgen" in (steps[at].get("cpu") or {}):
        notes.append(f"load generator at the knee: {float(steps[at]['cpu']['loadgen']):.2f} CPU")
    if at is None:
        notes.append(
            f"no step met p95 < {objective:g} ms with under 1 % errors"
            if steps
            else "no steps recorded"
        )
        beyond = past_knee(steps, None, result.get("budgets") or {})
        return StageSummary(stage, name, None, None, None, None, "; ".join(notes), beyond)
    step = steps[at]
    past = heavier(steps, at)
    found = bottleneck(
        step,
        result.get("budgets") or {},
        beyond=steps[past] if past is not None else None,
        cores=machine_cores(result),
    )
    fine = result.get("fine") or []
    repeated = spread(fine, p95_ms=objective) if fine else None
    if fine and (repeated is None or repeated.found < len(fine)):
        notes.append(
            f"{len(fine) - (repeated.found if repeated else 0)} of {len(fine)} fine passes "
            "found no knee"
        )
    return StageSummary(
        stage,
        name,
        float(step["rps"]),
        int(step["users"]),
        float(step["p95_ms"]),
        found,
        "; ".join(notes),
        past_knee(steps, at, result.get("budgets") or {}),
        repeated,
        float(result["cpus_per_vcpu"]) if result.get("cpus_per_vcpu") else None,
    )
