"""Service demands, predicted capacity and the projection to AWS, from a stage's measured steps.

The operational laws (Menascé and Almeida; Jain): a component's utilisation is throughput times
its service demand, U = X x D. From the steps at or below the knee, each component's demand D
(CPU seconds per request of the suite's mix) is fitted by least squares through the origin.
Its capacity is then its budget over its demand; the bottleneck is the component of lowest
capacity, and a co-bottleneck is named when another is within CO_BOTTLENECK of it. The
prediction stands beside the highest throughput a step measured, with the error: a model that
misses by more than ±20 % says that CPU is not what limits the stage (locks, pools, the load
generator, a quota's bursts).

The projection puts the same demands on the stack's real sizes (`aws_sizes.json`): each scaled
component's AWS vCPUs times SPEED over its demand, at the stage's largest size. Managed
services (the load balancer, CloudFront, SQS, SES, DynamoDB) scale by themselves and are not
modelled. Users and dollars follow from declared assumptions (`Assumptions`), printed above the
table that uses them.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtests import analysis
from loadtests.ladder.sizes import aws_vcpus

CO_BOTTLENECK = 0.10
STAND_INS = ("nginx", "cdn", "moto")
"""Local stand-ins of managed services: measured, never projected to AWS."""
CONSUMERS = analysis.CONSUMERS
"""Their capacity is shown beside the request path's, never as its limit; over a day they do
limit what is sustained, so the projection counts them."""


@dataclass(frozen=True)
class Assumptions:
    """What turns requests/s into users and dollars; declared, so that a reader can change it."""

    speed: float = 1.0
    """CPU work one AWS vCPU does for one of this machine's CPUs (not measured on AWS)."""
    session_requests: int = 30
    """Requests one visitor's day brings (a visit of browsing, a cart, sometimes an order)."""
    peak_to_average: float = 3.0
    """The busiest hour's rate over the day's average."""
    target_utilisation: float = 0.6
    """How full a fleet is run: the dollars per million requests are counted at this share of
    capacity."""


@dataclass(frozen=True)
class Demand:
    component: str
    seconds: float
    """CPU seconds per request of the suite's mix."""
    points: int


@dataclass(frozen=True)
class Prediction:
    capacities: dict[str, float]
    """Requests/s each budgeted component could serve: budget over demand."""
    bottleneck: str
    co_bottleneck: str | None
    predicted_rps: float
    measured_rps: float
    consumers: dict[str, float] = field(default_factory=dict)
    """Requests/s of the mix each queue consumer keeps up with (budget over demand)."""

    @property
    def error(self) -> float:
        """Predicted over measured, minus one (+0.1: the model promised 10 % more)."""
        return self.predicted_rps / self.measured_rps - 1


@dataclass(frozen=True)
class Projection:
    stage: int
    name: str
    users: str
    rps: float
    limit: str
    concurrent_users: float | None
    daily_users: float
    cost_per_hour_usd: float
    usd_per_million: float


def demands(result: Mapping[str, Any]) -> dict[str, Demand]:
    """Each component's CPU seconds per request, fitted on the steps up to the knee."""
    steps: Sequence[Mapping[str, Any]] = result.get("steps") or []
    at = analysis.knee(steps, p95_ms=float(result.get("p95_objective_ms") or 500.0))
    if at is None:
        return {}
    return fit(steps[: at + 1])


def fit(steps: Sequence[Mapping[str, Any]], rate: str = "rps") -> dict[str, Demand]:
    """Each component's CPU seconds per unit of `rate` (a step's requests/s by default), by
    least squares through the origin over `steps`."""
    sums: dict[str, list[float]] = {}
    for step in steps:
        rps = float(step.get(rate) or 0.0)
        if rps <= 0:
            continue
        for name, used in (step.get("cpu") or {}).items():
            if used is None:
                continue
            xy_xx_n = sums.setdefault(name, [0.0, 0.0, 0.0])
            xy_xx_n[0] += rps * float(used)
            xy_xx_n[1] += rps * rps
            xy_xx_n[2] += 1
    return {
        name: Demand(name, xy / xx, int(n))
        for name, (xy, xx, n) in sums.items()
        if xx > 0 and xy > 0
    }


def _largest_budgets(result: Mapping[str, Any]) -> dict[str, float]:
    """The budgets at the fleet's largest size during the steps (an autoscaler changes them,
    and each of its steps records its own); the result's budgets for a fixed fleet. Not the
    result's when steps have their own: at stages 7 and 8 it holds the write-heavy ramp's
    fleet, larger than the mix's."""
    recorded = [step["budgets"] for step in result.get("steps") or [] if step.get("budgets")]
    if not recorded:
        return {k: float(v) for k, v in (result.get("budgets") or {}).items()}
    largest: dict[str, float] = {}
    for budgets in recorded:
        for name, cpus in budgets.items():
            largest[name] = max(largest.get(name, 0.0), float(cpus))
    return largest


def _lowest(capacities: Mapping[str, float]) -> tuple[str, str | None, float]:
    ranked = sorted(capacities.items(), key=lambda kv: (kv[1], kv[0]))
    name, lowest = ranked[0]
    second = ranked[1] if len(ranked) > 1 else None
    close = second is not None and second[1] <= lowest * (1 + CO_BOTTLENECK)
    return name, (second[0] if close and second else None), lowest


def predict(result: Mapping[str, Any]) -> Prediction | None:
    """The model's capacity of the stage as run here, beside the highest measured throughput;
    None without a knee or without a budgeted component it can fit."""
    fitted = demands(result)
    budgets = _largest_budgets(result)
    every = {
        name: cpus / fitted[name].seconds
        for name, cpus in budgets.items()
        if name in fitted and cpus > 0 and fitted[name].seconds > 0
    }
    capacities = {name: rps for name, rps in every.items() if name not in CONSUMERS}
    steps = result.get("steps") or []
    if not capacities or not steps:
        return None
    name, co, lowest = _lowest(capacities)
    measured = max(float(step.get("rps") or 0.0) for step in steps)
    if measured <= 0:
        return None
    return Prediction(
        capacities={k: round(v, 1) for k, v in capacities.items()},
        bottleneck=name,
        co_bottleneck=co,
        predicted_rps=lowest,
        measured_rps=measured,
        consumers={k: round(v, 1) for k, v in every.items() if k in CONSUMERS},
    )


def _rate_per_user(result: Mapping[str, Any]) -> float | None:
    """Requests/s one simulated user brought at the knee (think time and answers included)."""
    steps = result.get("steps") or []
    at = analysis.knee(steps, p95_ms=float(result.get("p95_objective_ms") or 500.0))
    if at is None or not steps[at].get("users"):
        return None
    return float(steps[at]["rps"]) / float(steps[at]["users"])


def project(
    result: Mapping[str, Any], aws: Mapping[str, Any], assumptions: Assumptions = Assumptions()
) -> Projection | None:
    """The stage at its stack's largest size, from the demands measured here."""
    fitted = demands(result)
    web = aws["web"]["max"]
    workers = aws["workers"]["max"] if aws.get("workers") else None
    vcpus = aws_vcpus(dict(aws), web=web, workers=workers)
    capacities = {
        name: vcpus[name] * assumptions.speed / fitted[name].seconds
        for name in vcpus
        if name in fitted and fitted[name].seconds > 0
    }
    if not capacities:
        return None
    limit, co, rps = _lowest(capacities)
    per_user = _rate_per_user(result)
    cost = float(aws["cost_per_hour_usd_at_max"])
    daily_requests = rps / assumptions.peak_to_average * 86_400
    return Projection(
        stage=int(aws["number"]),
        name=str(aws["name"]),
        users=str(aws["users"]),
        rps=rps,
        limit=limit if co is None else f"{limit} (with {co})",
        concurrent_users=rps / per_user if per_user else None,
        daily_users=daily_requests / assumptions.session_requests,
        cost_per_hour_usd=cost,
        usd_per_million=cost / (assumptions.target_utilisation * rps * 3600) * 1e6,
    )


def _count(value: float) -> str:
    if value >= 1e9:
        return f"{value / 1e9:.1f} billion"
    if value >= 1e6:
        return f"{value / 1e6:.1f} million"
    return f"{value:,.0f}"


def model_section(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's "model" section: demands, predicted capacity, measured peak, error."""
    rows, daily = [], []
    for result in results:
        if analysis.steps_are_a_day(result):
            daily.append(f"{result['stage']} ({result['name']})")
            continue  # a day's curve, not a ramp: its slices mix fleet sizes and warm-ups
        prediction = predict(result)
        if prediction is None:
            continue
        fitted = demands(result)
        shown = ", ".join(
            f"{name} {fitted[name].seconds * 1000:.2f}"
            for name in sorted(fitted, key=lambda n: -fitted[n].seconds)
            if name in prediction.capacities or name in prediction.consumers
        )
        named = prediction.bottleneck + (
            f" (with {prediction.co_bottleneck})" if prediction.co_bottleneck else ""
        )
        steps = result.get("steps") or []
        objective = float(result.get("p95_objective_ms") or 500.0)
        if analysis.knee(steps, p95_ms=objective) == len(steps) - 1:
            verdict = "**the ramp ended before the objective broke: the peak is a lower bound**"
        elif abs(prediction.error) <= 0.2:
            verdict = "within ±20 %"
        else:
            verdict = "**misses by more than 20 %**"
        for consumer, rps in prediction.consumers.items():
            verdict += f"; the {consumer} keeps up with {rps:.0f}"
        rows.append(
            f"| {result['stage']} | {result['name']} | {shown} | {named} "
            f"| {prediction.predicted_rps:.0f} | {prediction.measured_rps:.0f} "
            f"| {prediction.error:+.0%} ({verdict}) |"
        )
    if not rows:
        return []
    return [
        "## The model: service demands and predicted capacity",
        "",
        "Each component's CPU milliseconds per request of the mix, fitted on the steps up to the "
        "knee (utilisation = throughput x demand); its capacity is its budget over its demand, "
        "and the lowest names the bottleneck (a second within 10 % is named with it). The "
        "prediction stands beside the highest throughput any step measured. A queue consumer "
        "(the worker) is never the request path's limit: past its capacity the backlog grows, "
        "not the requests' latency; its capacity is given beside the error."
        + (
            f" Not fitted: stage {', '.join(daily)}, a daily curve, not a ramp (its slices "
            "mix fleet sizes)."
            if daily
            else ""
        ),
        "",
        "| # | stage | CPU ms per request | predicted bottleneck | predicted requests/s "
        "| measured peak | error |",
        "|---|---|---|---|---:|---:|---|",
        *rows,
        "",
    ]


def projection_section(
    results: Sequence[Mapping[str, Any]],
    sizes: Mapping[int, Mapping[str, Any]],
    assumptions: Assumptions = Assumptions(),
) -> list[str]:
    """The report's projection of every measured stage to its stack's sizes."""
    rows = []
    for result in results:
        aws = sizes.get(int(result["stage"]))
        found = project(result, aws, assumptions) if aws else None
        if found is None:
            continue
        concurrent = _count(found.concurrent_users) if found.concurrent_users else "-"
        rows.append(
            f"| {found.stage} | {found.name} | {found.users} | {found.rps:,.0f} | {found.limit} "
            f"| {concurrent} | {_count(found.daily_users)} | {found.cost_per_hour_usd:.2f} "
            f"| {found.usd_per_million:.2f} |"
        )
    if not rows:
        return []
    a = assumptions
    return [
        "## Projected to AWS",
        "",
        "The demands above on each stack's own sizes at its largest (infra/shop_infra/stages.py"
        ", through loadtests/ladder/aws_sizes.json): every scaled component's vCPUs times the "
        f"speed factor ({a.speed:g}: one AWS vCPU does the work of one CPU here, not measured "
        "on AWS) over its demand; managed services are not modelled. Concurrent users: at the "
        "rate one simulated user brought at the knee. Daily users: "
        f"{a.session_requests} requests a visitor, the busiest hour at {a.peak_to_average:g} "
        "times the average. $ per million requests: the stack at its largest size, run at "
        f"{a.target_utilisation:.0%} of capacity.",
        "",
        "| # | stage | talk's users | requests/s | limit on AWS | concurrent users "
        "| daily users | $/hour | $ per million requests |",
        "|---|---|---|---:|---|---:|---:|---:|---:|",
        *rows,
        "",
    ]


@dataclass(frozen=True)
class WriteLimit:
    """Stage 7's write-heavy ramp: orders placed per second at its knee, what limited it here,
    and each component's CPU per order carried to the stack's largest size (predicted)."""

    knee_orders: float
    knee_users: int
    knee_p95_ms: float
    bottleneck: analysis.Bottleneck
    per_order: dict[str, Demand]
    here: dict[str, float]
    """Orders/s each budgeted component could place here: its budget over its CPU per order."""
    aws: dict[str, float]
    """Orders/s each scaled component could place at the stack's largest size on AWS."""
    fleet: int = 0
    """App processes the ramp's fleet could grow to (0: not recorded, the autoscaler's own
    ceiling)."""
    workers: int = 0
    """The most workers that ran during the ramp (0: not recorded, the workers stayed as
    started)."""


ORDER_ROUTE = "POST /orders"


def orders_answered(step: Mapping[str, Any]) -> float:
    """Orders per second the suite saw placed in a step (its `POST /orders` that did not
    fail), else the app's own count (`orders_per_s`, from the app processes' metrics). The
    suite's count comes first: the app's is scraped from each process, and on a saturated
    machine the scrapes of a busy or just-started process go missing (at stage 8's write-heavy
    knee the app counted 22 orders/s where the suite saw 65 answered)."""
    route = (step.get("by_name") or {}).get(ORDER_ROUTE)
    seconds = float(step.get("ended_at") or 0.0) - float(step.get("started_at") or 0.0)
    if route and seconds > 0:
        return max(0, int(route["requests"]) - int(route.get("failures") or 0)) / seconds
    return float((step.get("signals") or {}).get("orders_per_s") or 0.0)


def write_limit(
    result: Mapping[str, Any],
    aws: Mapping[str, Any] | None,
    assumptions: Assumptions = Assumptions(),
) -> WriteLimit | None:
    """The write-heavy ramp of a result (`write_heavy`), fitted per order placed; None when it
    did not run or found no knee."""
    steps: Sequence[Mapping[str, Any]] = result.get("write_heavy") or []
    objective = float(result.get("p95_objective_ms") or 500.0)
    at = analysis.knee(steps, p95_ms=objective)
    if at is None:
        return None
    orders = [{**step, "orders": orders_answered(step)} for step in steps]
    per_order = fit(orders[: at + 1], rate="orders")
    if not per_order:
        return None
    budgets = _largest_budgets({"budgets": result.get("budgets"), "steps": steps})
    here = {
        name: round(cpus / per_order[name].seconds, 1)
        for name, cpus in budgets.items()
        if name in per_order and per_order[name].seconds > 0 and name not in STAND_INS
    }
    vcpus: dict[str, float] = {}
    if aws is not None:
        workers = aws["workers"]["max"] if aws.get("workers") else None
        vcpus = aws_vcpus(dict(aws), web=aws["web"]["max"], workers=workers)
    past = analysis.heavier(steps, at)
    return WriteLimit(
        knee_orders=orders[at]["orders"],
        knee_users=int(steps[at]["users"]),
        knee_p95_ms=float(steps[at]["p95_ms"]),
        bottleneck=analysis.bottleneck(
            steps[at],
            result.get("budgets") or {},
            beyond=steps[past] if past is not None else None,
            cores=analysis.machine_cores(result),
        ),
        per_order=per_order,
        here=here,
        aws={
            name: round(vcpus[name] * assumptions.speed / per_order[name].seconds, 1)
            for name in vcpus
            if name in per_order and per_order[name].seconds > 0
        },
        fleet=int(result.get("write_fleet") or 0),
        workers=int(result.get("write_workers") or 0),
    )


WRITE_GAIN_TARGET = 1.7
"""What stage 8's write-heavy knee must reach over stage 7's, at the same budget per primary
(two shards instead of one primary, less the reservation each order still writes in main)."""

WRITE_TITLES = {
    7: "where the single write primary saturates",
    8: "orders across two shards",
}


def write_heavy_section(
    results: Sequence[Mapping[str, Any]],
    sizes: Mapping[int, Mapping[str, Any]],
    assumptions: Assumptions = Assumptions(),
    repeats: Sequence[Sequence[Mapping[str, Any]]] = (),
) -> list[str]:
    """The report's sections on the write-heavy ramps (stages 7 and 8): where the write
    primaries saturate, and what stage 8's shards bought over stage 7's one primary, in this
    run and in each of `repeats` (other runs' results, judged the same way)."""
    lines: list[str] = []
    found: dict[int, WriteLimit | None] = {}
    for result in results:
        if not result.get("write_heavy"):
            continue
        stage = int(result["stage"])
        found[stage] = write_limit(result, sizes.get(stage), assumptions)
        lines += _write_heavy(stage, found[stage], assumptions)
    runs = [(_commit(results), found)]
    for run in repeats:
        limits = {
            int(r["stage"]): write_limit(r, sizes.get(int(r["stage"])), assumptions)
            for r in run
            if r.get("write_heavy")
        }
        runs.append((_commit(run), limits))
    lines += _write_gain(runs)
    return lines


def _commit(results: Sequence[Mapping[str, Any]]) -> str:
    """The commit stages 7 and 8 of a run were measured at (short), as its results record."""
    commits = {
        str((r.get("provenance") or {}).get("commit") or "not recorded")[:7]
        for r in results
        if int(r["stage"]) in (7, 8)
    }
    return ", ".join(sorted(commits)) or "not recorded"


def _write_heavy(stage: int, found: WriteLimit | None, assumptions: Assumptions) -> list[str]:
    title = f"## Stage {stage}: {WRITE_TITLES.get(stage, 'a write-heavy ramp')}"
    if found is None:
        return [title, "", "The write-heavy ramp found no step within the objective.", ""]
    shown = ", ".join(
        f"{name} {found.per_order[name].seconds * 1000:.2f}"
        for name in sorted(found.per_order, key=lambda n: -found.per_order[n].seconds)
        if name not in STAND_INS and name != "loadgen"
    )
    lines = [
        title,
        "",
        "A ramp of buyers who only place orders (products picked uniformly, so that the best "
        "sellers do not sell out; the admin restocks), on the same topology after the fine "
        + (
            f"passes, on a fleet of {found.fleet} app processes (the stack's largest, held "
            "there), so that the app does not hide where the primaries saturate. "
            if found.fleet
            else "passes. "
        )
        + (
            f"Its workers grew on the stack's rule (the backlog per worker) to {found.workers}. "
            if found.workers
            else ""
        )
        + f"Its knee: **{found.knee_orders:.0f} orders/s** at "
        f"{found.knee_users} users (p95 {found.knee_p95_ms:.0f} ms); what limited it: "
        f"{found.bottleneck.component} ({found.bottleneck.evidence}). CPU milliseconds per "
        f"order placed, fitted on the steps up to the knee: {shown}.",
        "",
    ]
    writers = [name for name in ("postgres", "shard") if name in found.here]
    if writers:
        first = min(writers, key=lambda n: found.here[n])
        alone = "; ".join(f"{WRITERS[name]} {found.here[name]:,.0f}" for name in writers)
        measured = found.bottleneck.component in writers
        lines += [
            f"Here, orders/s each write tier alone would place (its budget over its CPU per "
            f"order): {alone}. The ramp reached {found.knee_orders / found.here[first]:.0%} of "
            f"the lowest before {found.bottleneck.component} stopped it"
            + (
                ": where the write tier saturates is measured."
                if measured
                else ", so where the write tier saturates is **predicted**, not measured."
            ),
            "",
        ]
    if found.aws:
        limit = min(found.aws, key=lambda n: (found.aws[n], n))
        rows = [
            f"| {name} | {found.aws[name]:,.0f} |"
            for name in sorted(found.aws, key=lambda n: (found.aws[n], n))
        ]
        lines += [
            "**Predicted** at the stack's largest size on AWS (the same per-order CPU on its "
            f"vCPUs, speed factor {assumptions.speed:g}): {limit} limits orders first, at "
            f"{found.aws[limit]:,.0f} orders/s"
            + (
                f"; the write primary alone saturates at {found.aws['postgres']:,.0f}."
                if "postgres" in found.aws and limit != "postgres"
                else "."
            ),
            "",
            "| component | orders/s it could place on AWS (predicted) |",
            "|---|---:|",
            *rows,
            "",
        ]
    return lines


WRITERS = {"postgres": "the main primary", "shard": "the order shards together"}


def _write_gain(runs: Sequence[tuple[str, Mapping[int, WriteLimit | None]]]) -> list[str]:
    """Stage 8's write-heavy knee against stage 7's, judged by WRITE_GAIN_TARGET: in one run,
    or across several (each run's stages 7 and 8 measured one after the other on the same
    machine) by the median gain, with every run's shown."""
    paired = [(commit, found) for commit, found in runs if 7 in found and 8 in found]
    if not paired:
        return []
    title = "## Stage 8 against stage 7: orders at the same budget per primary"
    if len(paired) == 1:
        found = paired[0][1]
        seven, eight = found[7], found[8]
        if seven is None or eight is None:
            missing = " and ".join(str(n) for n in (7, 8) if found[n] is None)
            return [title, "", f"Not judged: stage {missing}'s write-heavy ramp found no knee.", ""]
        gain = _gain(seven, eight)
        return [
            title,
            "",
            f"Stage 7's write-heavy knee: {seven.knee_orders:.0f} orders/s (limited by "
            f"{seven.bottleneck.component}); stage 8's: {eight.knee_orders:.0f} orders/s "
            f"(limited by {eight.bottleneck.component}): **{gain:.2f} x**, " + _verdict(gain),
            "",
        ]
    rows, gains = [], []
    for number, (commit, found) in enumerate(paired, start=1):
        seven, eight = found[7], found[8]
        gain = _gain(seven, eight) if seven is not None and eight is not None else None
        if gain is not None:
            gains.append(gain)
        ratio = f"{gain:.2f} x" if gain is not None else "not judged (no knee)"
        rows.append(f"| {number} | {commit} | {_knee_of(seven)} | {_knee_of(eight)} | {ratio} |")
    lines = [
        title,
        "",
        f"{len(paired)} runs of stages 7 and 8, each pair measured one after the other on this "
        "machine (run 1 is the run the sections above come from):",
        "",
        "| run | commit | stage 7: orders/s at the knee (limited by) | stage 8 | stage 8 / 7 |",
        "|---:|---|---|---|---:|",
        *rows,
        "",
    ]
    if not gains:
        return [*lines, "Not judged: no run had a knee in both write-heavy ramps.", ""]
    median = statistics.median(gains)
    short = sum(gain < WRITE_GAIN_TARGET for gain in gains)
    lines += [
        f"Median **{median:.2f} x** (runs {min(gains):.2f}-{max(gains):.2f} x), "
        + _verdict(median)
        + (
            f" {short} of {len(gains)} runs fell short of it."
            if short
            else " Every run reached it."
        ),
        "",
    ]
    return lines


def _gain(seven: WriteLimit, eight: WriteLimit) -> float:
    return eight.knee_orders / seven.knee_orders if seven.knee_orders else 0.0


def _knee_of(found: WriteLimit | None) -> str:
    if found is None:
        return "no knee"
    return f"{found.knee_orders:.0f} ({found.bottleneck.component})"


def _verdict(gain: float) -> str:
    if gain >= WRITE_GAIN_TARGET:
        return f"at least the {WRITE_GAIN_TARGET:g} x the design asked for."
    return f"**short of** the {WRITE_GAIN_TARGET:g} x the design asked for."
