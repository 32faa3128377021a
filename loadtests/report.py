"""The ladder report: Markdown tables and up to four PNG charts from the per-stage results.

    python -m loadtests.report ladder-results docs/ladder

reads `ladder-results/stage-<n>.json` (written by the ladder runner or loadtests.deployed) and
writes `docs/ladder/README.md`, `throughput.png` (one panel per stage: throughput and p95
against users, the knee and its fine passes' range), `cpu.png` (CPU and throttling per
component at the step the rule judges), `daily.png` (stage 6's daily curve against the
instance count) and `projection.png` (each stage's daily users on its stack's sizes against the
talk's user class). Each stage's knee and bottleneck
come from the rules in loadtests/analysis.py, never from a hand-written label.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loadtests import analysis, model, shapes
from loadtests.ladder import sizes

PREDICTED_BOTTLENECK: dict[int, str] = {
    1: "box",
    2: "app",
    3: "postgres",
    4: "replica",
    5: "app",
    6: "app",
    7: "postgres",
    8: "postgres",
}
"""The component STAGES.md says saturates first at each stage, in the results' component names:
stage 4's hot repeated reads land on the replica; at stages 5-6 a fixed fleet (the app) meets
a changing curve; at stage 7 the single write primary; at stage 8 main's primary, which
still takes one reservation per order when the orders themselves are on two shards."""

CHARTS = ("throughput.png", "cpu.png", "daily.png", "projection.png")


class ResultError(ValueError):
    """A per-stage result that cannot be read; the message names the file and the problem."""


REQUIRED = ("stage", "name", "steps", "budgets", "p95_objective_ms")
STEP_KEYS = ("users", "requests", "failures", "rps", "p95_ms")


RAW = "raw"
"""The folder beside the report that keeps the run's own results, gzipped: the report can be
regenerated from it (`python -m loadtests.report docs/ladder/raw docs/ladder`)."""


def _read(path: Path) -> str:
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode("utf-8")
    return path.read_text(encoding="utf-8")


def load_results(folder: Path) -> list[dict[str, Any]]:
    """Every `stage-<n>.json` (or `stage-<n>.json.gz`) in `folder`, by stage number."""
    if not folder.is_dir():
        raise ResultError(f"{folder} is not a folder of stage-<n>.json results")
    results = []
    for path in sorted([*folder.glob("stage-*.json"), *folder.glob("stage-*.json.gz")]):
        try:
            result = json.loads(_read(path))
        except (OSError, ValueError) as exc:
            raise ResultError(f"{path}: not readable JSON ({exc})") from None
        if not isinstance(result, dict):
            raise ResultError(f"{path}: expected a JSON object")
        missing = [key for key in REQUIRED if key not in result]
        if missing and not result.get("missing"):
            raise ResultError(f"{path}: lacks {', '.join(missing)}")
        for index, step in enumerate(result.get("steps") or []):
            lacking = [key for key in STEP_KEYS if not isinstance(step, dict) or key not in step]
            if lacking:
                raise ResultError(f"{path}: step {index} lacks {', '.join(lacking)}")
        results.append(result)
    if not results:
        raise ResultError(f"{folder} holds no stage-<n>.json")
    return sorted(results, key=lambda result: int(result["stage"]))


def _cost(stage: int) -> str:
    """The stage's stack by the hour at its minimum size (us-east-1 list prices), as
    infra/cost.py computes it, through the catalog's export (loadtests/ladder/aws_sizes.json)."""
    found = sizes.load().get(stage)
    return "" if found is None else f"{float(found['cost_per_hour_usd']):.2f}"


def _figure(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def story(summaries: Sequence[analysis.StageSummary]) -> list[str]:
    """Whether the figures tell the talk's story, in plain sentences: the knee rises from each
    stage to the next, and each stage's bottleneck is the one STAGES.md predicts."""
    by_stage = {s.stage: s for s in summaries}
    lines = []
    ladder = [by_stage[n] for n in sorted(by_stage)]
    for lower, upper in itertools.pairwise(ladder):
        lines.append(_rise(lower, upper))
    for summary in summaries:
        predicted = PREDICTED_BOTTLENECK.get(summary.stage)
        if summary.bottleneck is None or predicted is None:
            continue
        found = summary.bottleneck.component
        if found == predicted:
            lines.append(
                f"Stage {summary.stage}: the bottleneck is {found}, as STAGES.md predicts."
            )
        else:
            # Why, in the figures: where the predicted component stood when another saturated.
            past = summary.past_knee
            why = f" {past[0].upper()}{past[1:]}." if past else ""
            lines.append(
                f"Stage {summary.stage}: the bottleneck named is {found}, "
                f"not {predicted} as STAGES.md predicts.{why}"
            )
    return lines


def _rise(lower: analysis.StageSummary, upper: analysis.StageSummary) -> str:
    """Whether the knee rises from one stage to the next. Each stage runs at its own CPUs per
    vCPU, so knees compare at the stacks' sizes (the knee over that factor) when both runs
    recorded it, and as measured otherwise."""
    pair = f"Stage {lower.stage} to {upper.stage}"
    if lower.knee_rps is None or upper.knee_rps is None:
        return f"{pair}: not compared, a knee is missing (see its note)."
    low, high = lower.at_stack_size(1.0), upper.at_stack_size(1.0)
    if low is None or high is None:
        low = high = 1.0
        unit = "requests/s here"
    else:
        unit = "requests/s at the stacks' sizes"
    a, b = lower.knee_rps * low, upper.knee_rps * high
    ranges = (
        (lower.spread.times(low), upper.spread.times(high))
        if (lower.spread and upper.spread)
        else None
    )
    if ranges and ranges[0].overlaps(ranges[1]):
        return (
            f"{pair}: the knees' ranges overlap ({_range(ranges[0])} and {_range(ranges[1])} "
            f"{unit} over the fine passes): no rise or fall is shown."
        )
    if b > a:
        shown = f" (fine passes: {_range(ranges[0])} and {_range(ranges[1])})" if ranges else ""
        return f"{pair}: the knee rises from {a:,.0f} to {b:,.0f} {unit}{shown}."
    # Why, in the figures: what saturated past the upper stage's knee, and what had room (a
    # component of the new stage far from its budget did not take the load).
    why = f" {upper.past_knee[0].upper()}{upper.past_knee[1:]}." if upper.past_knee else ""
    return f"{pair}: the knee does NOT rise ({a:,.0f} to {b:,.0f} {unit}).{why}"


def _range(spread: analysis.Spread) -> str:
    return f"{spread.low:.0f}-{spread.high:.0f}"


def _knee(s: analysis.StageSummary) -> str:
    """The ramp's knee, and with fine passes their median and range."""
    figure = _figure(s.knee_rps, "{:.0f}")
    if s.spread is None:
        return figure
    return f"{figure} (median {s.spread.median:.0f}, {_range(s.spread)} over {s.spread.passes})"


def table(summaries: Sequence[analysis.StageSummary]) -> str:
    """The report's one table, in Markdown."""
    lines = [
        "| # | stage | knee (requests/s) | at the stack's size | users at knee "
        "| p95 at knee (ms) | bottleneck | evidence | AWS $/hour |",
        "|---|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for s in summaries:
        neck = s.bottleneck
        if neck is not None:
            evidence = neck.evidence
            component = neck.component
        else:
            evidence, component = s.note, "-"
        if neck is not None and s.note:
            evidence = f"{evidence} ({s.note})"
        lines.append(
            f"| {s.stage} | {s.name} | {_knee(s)} "
            f"| {_figure(s.at_stack_size(s.knee_rps) if s.knee_rps else None, '{:,.0f}')} | "
            f"{_figure(s.knee_users, '{:d}')} | {_figure(s.p95_at_knee_ms, '{:.0f}')} | "
            f"{component} | {evidence.replace('|', '/')} | {_cost(s.stage)} |"
        )
    return "\n".join(lines)


ROUTES = ("GET /products/[id]", "GET /products", "GET /cart", "POST /orders", "POST /cart/checkout")
"""The routes whose p95 at the knee the report shows for every stage: a cached read, a listing,
the cart (DynamoDB from stage 5), and the two order writes (through the queue at stage 7)."""


def routes_section(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """p95 per route at each stage's knee: where the mix's p95 hides a slow write."""
    rows = []
    for result in results:
        steps = result.get("steps") or []
        at = analysis.knee(steps, p95_ms=float(result.get("p95_objective_ms") or 500.0))
        if at is None:
            continue
        by_name = steps[at].get("by_name") or {}
        cells = [
            f"{float(by_name[r]['p95_ms']):.0f}"
            if r in by_name and by_name[r].get("requests")
            else "-"
            for r in ROUTES
        ]
        rows.append(f"| {result['stage']} | {result['name']} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "## p95 per route at the knee",
        "",
        "Milliseconds, at the step each stage's knee was measured at (the suite's own names).",
        "",
        "| # | stage | " + " | ".join(f"`{r}`" for r in ROUTES) + " |",
        "|---|---|" + "---:|" * len(ROUTES),
        *rows,
        "",
    ]


def popularity_section(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Stage 5's probe: the knee's users held steady under three popularities."""
    found = next((r for r in results if r.get("popularity")), None)
    if found is None:
        return []
    budgets = found.get("budgets") or {}
    rows = []
    for step in found["popularity"]:
        signals = step.get("signals") or {}
        app = analysis.utilisations(step, budgets).get("app")
        rows.append(
            f"| {step['popularity']} | {float(step['rps']):.0f} | {float(step['p95_ms']):.0f} "
            f"| {_figure(signals.get('cache_hit_ratio'), '{:.0%}')} "
            f"| {_figure(signals.get('cdn_offload'), '{:.0%}')} "
            f"| {_figure(app, '{:.0%}')} | {analysis.error_ratio(step):.1%} |"
        )
    users = int(found["popularity"][0]["users"])
    return [
        f"## Stage {found['stage']}: the cache and the CDN under three popularities",
        "",
        f"The knee's {users} users held steady once under each popularity of the products "
        "they open: the suite's own skew (half the picks among the 20 best sellers, 30 % among "
        "the hottest fifth, 20 % anywhere), uniform over the catalog, and Zipf (the product of "
        f"rank k weighs 1/k^s, s = {shapes.ZIPF_EXPONENT:g}). Cache hits: the app's look-ups "
        "that its cache answered; CDN offload: the suite's requests that never reached the app.",
        "",
        "| popularity | requests/s | p95 (ms) | cache hits | CDN offload | app CPU of budget "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def _fleet(day: Sequence[Mapping[str, Any]], objective: float) -> dict[str, float]:
    """Instance-seconds, requests and the slices over the objective of one day's slices."""
    seconds = [float(p.get("seconds") or 0.0) for p in day]
    return {
        "instance_s": sum(int(p["instances"]) * s for p, s in zip(day, seconds, strict=True)),
        "requests": sum(float(p["rps"]) * s for p, s in zip(day, seconds, strict=True)),
        "seconds": sum(seconds),
        "over": sum(1 for p in day if float(p["p95_ms"]) >= objective),
        "slices": len(day),
        "worst_p95_ms": max((float(p["p95_ms"]) for p in day), default=0.0),
        "peak": max((int(p["instances"]) for p in day), default=0),
    }


def daily_section(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Stage 6's probe: the same day on the autoscaled fleet and on stage 5's fixed fleet."""
    found = next((r for r in results if int(r["stage"]) == 6 and r.get("daily")), None)
    if found is None or not found.get("daily_fixed"):
        return []
    if not all(p.get("seconds") for p in [*found["daily"], *found["daily_fixed"]]):
        return []
    objective = float(found.get("p95_objective_ms") or 500.0)
    scaled, fixed = _fleet(found["daily"], objective), _fleet(found["daily_fixed"], objective)
    peak_sized = scaled["peak"] * scaled["seconds"]
    rows = [
        ("autoscaled (target tracking at 60 % CPU)", scaled, scaled["instance_s"]),
        (f"fixed at stage 5's {fixed['peak']} instances", fixed, fixed["instance_s"]),
    ]
    saved = (
        f" A fleet sized for the autoscaled day's peak ({scaled['peak']} processes all day) "
        f"would have used {peak_sized:,.0f}: the autoscaler saved "
        f"{1 - scaled['instance_s'] / peak_sized:.0%} of it."
        if peak_sized
        else ""
    )
    users = int(found.get("daily_peak_users") or 0)
    steps = found.get("steps") or []
    at = analysis.knee(steps, p95_ms=objective)
    knee_users = int(steps[at]["users"]) if at is not None else 0
    peak = (
        f", peaking at {users} users ({users / knee_users:.0%} of the {knee_users} users at "
        "the autoscaled ramp's knee),"
        if users and knee_users and not analysis.steps_are_a_day(found)
        else ""
    )
    lines = [
        "## Stage 6: the same day, autoscaled and on a fixed fleet",
        "",
        f"The compressed day{peak} run twice on the same topology after the ramp: once with "
        "the local autoscaler, from the fleet's minimum, once on the fixed fleet of stage 5 "
        f"(the stack's minimum). Instance-seconds are app processes times seconds.{saved}",
        "",
        "| fleet | instance-seconds | requests served | slices with p95 over "
        f"{objective:g} ms | worst slice p95 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, figures, used in rows:
        lines.append(
            f"| {label} | {used:,.0f} | {figures['requests']:,.0f} "
            f"| {figures['over']:.0f} of {figures['slices']:.0f} | {figures['worst_p95_ms']:,.0f} |"
        )
    return [*lines, ""]


def markdown(
    results: Sequence[Mapping[str, Any]],
    *,
    charts: Sequence[str],
    repeats: Sequence[Sequence[Mapping[str, Any]]] = (),
) -> str:
    summaries = [analysis.summarise(result) for result in results]
    objectives = sorted({float(r.get("p95_objective_ms") or 500.0) for r in results})
    sources = sorted({str(r.get("source", "local")) for r in results})
    commits = {(r.get("provenance") or {}).get("commit") for r in results}
    runs = "one run" if len(commits) <= 1 else f"{len(commits)} runs (commits below)"
    parts = [
        "# The stage ladder, measured",
        "",
        f"Written by `python -m loadtests.report` from the per-stage results of {runs} "
        f"(source: {', '.join(sources)}). The knee is the step with the highest throughput "
        f"whose p95 stays under {' / '.join(f'{o:g}' for o in objectives)} ms with under 1 % "
        "errors; the bottleneck is the component whose CPU used over its budget is highest at "
        "the step past the knee, where the objective broke (at the knee when there is none), "
        f"and none when no component reaches {analysis.SATURATED:.0%} of its budget there "
        "(the limit is then the load generator, or latency: locks, pools, waits). "
        "Each stage runs at its own CPUs per AWS vCPU (its budgets are its stack's vCPUs times "
        "one factor, loadtests/ladder/sizes.py), so knees are compared at the stack's size: "
        "the knee over that factor, what the same proportions would carry on the stack's "
        "minimum size if a vCPU there did the work of a CPU here (CPU alone: the load "
        "balancer's and the CDN's stand-ins are not scaled; at an autoscaled stage, with the "
        "app instances its fleet had grown to at the knee, up to the largest slice that fits "
        "here). "
        "AWS $/hour: the stage's stack at its minimum size (infra/cost.py). Where passes of "
        "half steps were run around a ramp's knee, the knee column adds their median and range, "
        "and a knee is said to rise only when the ranges do not overlap. The load is a closed "
        "model (each user waits for its answer, then thinks about 1 s): past a knee the "
        "offered load falls as answers slow, so a p95 there is a lower bound.",
        "",
        table(summaries),
        "",
    ]
    told = story(summaries)
    if told:
        parts += ["## Does it tell the talk's story?", "", *[f"- {line}" for line in told], ""]
    notes = [s for s in summaries if s.note]
    if notes:
        parts += ["## Notes", "", *[f"- Stage {s.stage} ({s.name}): {s.note}." for s in notes], ""]
    beyond = [s for s in summaries if s.past_knee]
    if beyond:
        parts += [
            "## Where the objective broke",
            "",
            "The step after each knee (or the first step, for a stage without one): the "
            "component that queues there can be far from its CPU budget at the knee, for "
            "instance one throttled by a small quota in bursts.",
            "",
            *[f"- Stage {s.stage} ({s.name}), {s.past_knee}." for s in beyond],
            "",
        ]
    parts += routes_section(results)
    parts += popularity_section(results)
    parts += daily_section(results)
    parts += model.model_section(results)
    parts += model.write_heavy_section(results, sizes.load(), repeats=repeats)
    parts += model.projection_section(results, sizes.load())
    parts += provenance_section(results)
    titles = {
        "throughput.png": "Throughput and p95 against users, every stage",
        "projection.png": "Projected to AWS: daily users each stage carries",
        "cpu.png": "CPU and throttling per component at the step the rule judges",
        "daily.png": "Stage 6: the daily curve against the instance count",
    }
    for chart in charts:
        parts += [
            f"## {titles.get(chart, chart)}",
            "",
            f"![{titles.get(chart, chart)}]({chart})",
            "",
        ]
    return "\n".join(parts)


PROVENANCE = ("commit", "date", "kernel", "cgroup", "cpu", "cores", "python", "locust")


def provenance_section(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where each stage's figures came from: one row per distinct machine and commit."""
    rows: dict[tuple[str, ...], list[str]] = {}
    for result in results:
        known = result.get("provenance") or {}
        key = tuple(str(known.get(name, "not recorded")) for name in PROVENANCE if name != "date")
        rows.setdefault(key, []).append(
            f"{result['stage']} ({str(known.get('date', 'date not recorded'))[:10]})"
        )
    lines = [
        "## Where these figures come from",
        "",
        # Plain text, not a link: the docs site (mkdocs --strict) refuses links to folders.
        f"The raw per-stage results are in `docs/ladder/{RAW}/`, gzipped; "
        f"`python -m loadtests.report docs/ladder/{RAW} docs/ladder` writes this page again.",
        "",
        "| stages (date) | " + " | ".join(n for n in PROVENANCE if n != "date") + " |",
        "|---|" + "---|" * (len(PROVENANCE) - 1),
    ]
    for key, stages in rows.items():
        lines.append(f"| {', '.join(stages)} | " + " | ".join(key) + " |")
    return [*lines, ""]


def _plot_throughput(results: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """One panel per stage: throughput and p95 against users, the objective, the knee (a
    star) and, where fine passes ran, the range of their knees (a band)."""
    import matplotlib.pyplot as plt

    runs = [r for r in results if r.get("steps") and not r.get("missing")]
    if not runs:
        return False
    columns = min(4, len(runs))
    rows = -(-len(runs) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.flat[len(runs) :]:
        axis.set_visible(False)
    for axis, result in zip(axes.flat, runs, strict=False):
        steps = result["steps"]
        objective = float(result.get("p95_objective_ms") or 500.0)
        users = [int(step["users"]) for step in steps]
        # A day's slices go up and down in users: points, not a line through them.
        style = "none" if analysis.steps_are_a_day(result) else "-"
        axis.plot(
            users, [float(s["rps"]) for s in steps], marker="o", color="tab:blue", linestyle=style
        )
        at = analysis.knee(steps, p95_ms=objective)
        repeated = analysis.spread(result.get("fine") or [], p95_ms=objective)
        if repeated is not None:
            axis.axhspan(repeated.low, repeated.high, color="tab:blue", alpha=0.15)
        if at is not None:
            axis.plot(
                [users[at]], [float(steps[at]["rps"])], marker="*", markersize=15,
                color="gold", markeredgecolor="black", zorder=5,
            )  # fmt: skip
        axis.set_title(f"{result['stage']} {result['name']}", fontsize="medium")
        axis.set_xlabel("users", fontsize="small")
        axis.set_ylabel("requests/s", color="tab:blue", fontsize="small")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        latency = axis.twinx()
        latency.plot(
            users, [float(s["p95_ms"]) for s in steps], marker=".", color="tab:red",
            linestyle=style,
        )  # fmt: skip
        latency.axhline(objective, color="tab:red", linestyle="--", linewidth=1)
        latency.set_yscale("log")
        latency.set_ylabel("p95 (ms)", color="tab:red", fontsize="small")
    figure.suptitle(
        "Throughput (blue; star: the knee; band: the fine passes' knees) and p95 (red; "
        "dashed: the objective) against users"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _judged(result: Mapping[str, Any]) -> int | None:
    """The step the bottleneck rule judges: the one past the knee, else the knee."""
    steps = result.get("steps") or []
    at = analysis.knee(steps, p95_ms=float(result.get("p95_objective_ms") or 500.0))
    if at is None:
        return None
    past = analysis.heavier(steps, at)
    return at if past is None else past


def _plot_cpu(results: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """CPU used over budget per component at the step the rule judges (bars), and the share
    of its quota periods it was stopped in (black ticks): a CPU average hides a throttled
    component, the ticks show it."""
    import matplotlib.pyplot as plt

    rows = []
    for result in results:
        index = _judged(result)
        if index is None or result.get("missing"):
            continue
        step = result["steps"][index]
        shares = analysis.utilisations(step, result.get("budgets") or {})
        stopped = {
            name: float(figures.get("throttled") or 0.0)
            for name, figures in (step.get("throttled") or {}).items()
            if isinstance(figures, Mapping)
        }
        if shares:
            rows.append((f"{result['stage']} {result['name']}", shares, stopped))
    if not rows:
        return False
    components = sorted({name for _, shares, _ in rows for name in shares})
    width = 0.8 / len(components)
    figure, axis = plt.subplots(figsize=(12, 4.5))
    for index, component in enumerate(components):
        xs = [i + index * width for i in range(len(rows))]
        axis.bar(
            xs, [100 * shares.get(component, 0.0) for _, shares, _ in rows], width, label=component
        )
        ticks = [(x, 100 * stopped[component]) for x, (_, _, stopped) in zip(xs, rows, strict=True)
                 if component in stopped]  # fmt: skip
        if ticks:
            axis.scatter(
                [x for x, _ in ticks], [y for _, y in ticks], marker="_", s=120, color="black",
                zorder=5, label="throttled periods" if index == 0 else None,
            )  # fmt: skip
    axis.axhline(100 * analysis.SATURATED, color="red", linestyle="--", linewidth=1)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [label for label, *_ in rows])
    axis.set(
        ylabel="% of budget; % of quota periods",
        title="CPU per component against its budget at the step the rule judges (past the "
        "knee; dashed: 85 %)\nblack ticks: the share of its quota periods it was throttled in",
    )
    axis.legend(fontsize="small", ncol=min(len(components) + 1, 6))
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _plot_daily(results: Sequence[Mapping[str, Any]], path: Path) -> bool:
    import matplotlib.pyplot as plt

    daily = next((r.get("daily") for r in results if int(r["stage"]) == 6 and r.get("daily")), None)
    if not daily:
        return False
    ts = [float(point["t_s"]) for point in daily]
    figure, load_axis = plt.subplots(figsize=(12, 4.5))
    load_axis.plot(ts, [int(p["users"]) for p in daily], label="users", color="tab:blue")
    load_axis.plot(ts, [float(p["rps"]) for p in daily], label="requests/s", color="tab:green")
    load_axis.set(xlabel="seconds into the compressed day", ylabel="users, requests/s")
    instances_axis = load_axis.twinx()
    instances_axis.step(
        ts, [int(p["instances"]) for p in daily], where="post", color="tab:red", label="instances"
    )
    instances_axis.set_ylabel("app instances")
    instances_axis.set_ylim(bottom=0)
    handles = load_axis.get_legend_handles_labels()
    more = instances_axis.get_legend_handles_labels()
    load_axis.legend(handles[0] + more[0], handles[1] + more[1], fontsize="small")
    load_axis.set_title("Stage 6: the daily curve and the fleet that follows it")
    load_axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _talk_users(text: str) -> float | None:
    """The talk's user class as a number: "1+" -> 1, ">1,000,000" -> 1e6."""
    digits = "".join(c for c in text if c.isdigit())
    return float(digits) if digits else None


def _plot_projection(results: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Each stage's daily users on its stack at its largest size (log scale, from the model's
    projection) beside the talk's user class for the stage."""
    import matplotlib.pyplot as plt

    catalog = sizes.load()
    found = [
        projected
        for result in results
        if int(result["stage"]) in catalog
        and (projected := model.project(result, catalog[int(result["stage"])])) is not None
    ]
    if not found:
        return False
    figure, axis = plt.subplots(figsize=(12, 4.5))
    labels = [f"{p.stage} {p.name}" for p in found]
    axis.barh(labels, [p.daily_users for p in found], color="tab:blue", label="projected")
    talk = [(label, _talk_users(p.users)) for label, p in zip(labels, found, strict=True)]
    shown = [(label, users) for label, users in talk if users]
    axis.scatter(
        [users for _, users in shown], [label for label, _ in shown], marker="|", s=400,
        color="black", zorder=5, label="the talk's users for the stage",
    )  # fmt: skip
    for label, projected in zip(labels, found, strict=True):
        axis.annotate(
            f" {projected.rps:,.0f} req/s, {projected.limit}", (projected.daily_users, label),
            va="center", fontsize="small",
        )  # fmt: skip
    axis.set_xscale("log")
    axis.set_xlim(right=max(p.daily_users for p in found) * 30)  # room for the labels
    axis.invert_yaxis()
    axis.set(
        xlabel="daily users (log scale; assumptions in the projection's table)",
        title="Projected to AWS: what each stage's stack carries at its largest size, "
        "and what it is limited by",
    )
    axis.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    axis.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def write_report(
    results: Sequence[Mapping[str, Any]],
    out: Path,
    repeats: Sequence[Sequence[Mapping[str, Any]]] = (),
) -> list[Path]:
    """Write README.md and the charts that have data into `out`, and every result into its
    raw folder (`repeats`: other runs' write-heavy stages, under `raw/repeats/<n>/`); returns
    the files written."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    charts = []
    plots = (_plot_throughput, _plot_cpu, _plot_daily, _plot_projection)
    for name, plot in zip(CHARTS, plots, strict=True):
        if plot(results, out / name):
            charts.append(name)
            written.append(out / name)
        else:
            (out / name).unlink(missing_ok=True)  # no stale chart from an earlier run
    readme = out / "README.md"
    text = markdown(results, charts=charts, repeats=repeats)
    readme.write_text(text + "\n", encoding="utf-8")
    raw = out / RAW
    folders = [raw, *(raw / REPEATS / str(n) for n in range(1, len(repeats) + 1))]
    kept = set()
    for folder, run in zip(folders, [results, *repeats], strict=True):
        folder.mkdir(parents=True, exist_ok=True)
        for result in run:
            path = folder / f"stage-{result['stage']}.json.gz"
            data = json.dumps(result, indent=1, sort_keys=True).encode("utf-8")
            if not (path.exists() and gzip.decompress(path.read_bytes()) == data):
                path.write_bytes(gzip.compress(data, mtime=0))  # same results, same bytes
            kept.add(path)
            written.append(path)
    for stale in {*raw.glob("stage-*.json.gz"), *raw.glob(f"{REPEATS}/*/stage-*.json.gz")} - kept:
        stale.unlink()
    return [readme, *written]


REPEATS = "repeats"
"""The folder of a results folder that holds other runs of the write-heavy stages, one
numbered folder each, compared in the report's "Stage 8 against stage 7"."""


def load_repeats(folder: Path, more: Sequence[Path] = ()) -> list[list[dict[str, Any]]]:
    """The runs under `folder/repeats/<n>/` in number order, then those of `more`, each with
    only its stages that ran a write-heavy ramp."""
    kept = folder / REPEATS
    numbered = (
        sorted(
            (p for p in kept.iterdir() if p.is_dir() and p.name.isdigit()),
            key=lambda p: int(p.name),
        )
        if kept.is_dir()
        else []
    )
    runs = [load_results(path) for path in [*numbered, *more]]
    return [[r for r in run if r.get("write_heavy")] for run in runs]


README_BEGIN = "<!-- ladder table: written by python -m loadtests.report --readme -->"
README_END = "<!-- end of the ladder table -->"


def readme_block(results: Sequence[Mapping[str, Any]]) -> str:
    """The ladder's table as the project's README shows it (the report's own table)."""
    return f"{README_BEGIN}\n{table([analysis.summarise(r) for r in results])}\n{README_END}"


def update_readme(path: Path, results: Sequence[Mapping[str, Any]]) -> bool:
    """Replace the README's ladder table with this run's; False when it has no markers."""
    text = path.read_text(encoding="utf-8")
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        return False
    new = text[:begin] + readme_block(results) + text[end + len(README_END) :]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.report", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("results", type=Path, help="folder of stage-<n>.json (ladder-results)")
    parser.add_argument("out", type=Path, help="folder to write README.md and the charts into")
    parser.add_argument(
        "--readme",
        type=Path,
        action="append",
        default=[],
        help="also replace the ladder table of this file (README.md, docs/index.md) with the "
        "run's; may be given more than once",
    )
    parser.add_argument(
        "--repeat",
        type=Path,
        action="append",
        default=[],
        help="a folder of another run's stage-<n>.json (as `make ladder STAGES=7,8` writes): "
        "its write-heavy stages join the comparison of stages 7 and 8; may be given more than "
        f"once (kept in the report's {RAW}/{REPEATS}/, where the next regeneration finds them)",
    )
    args = parser.parse_args(argv)
    for path in args.readme:
        if not path.is_file():
            parser.error(f"no file at {path}")
    try:
        results = load_results(args.results)
        repeats = load_repeats(args.results, args.repeat)
    except ResultError as exc:
        print(f"python -m loadtests.report: {exc}", file=sys.stderr)
        return 2
    for path in write_report(results, args.out, repeats):
        print(path)
    for path in args.readme:
        if not update_readme(path, results):
            print(
                f"python -m loadtests.report: {path} has no ladder table markers "
                f"({README_BEGIN} ... {README_END})",
                file=sys.stderr,
            )
            return 2
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
