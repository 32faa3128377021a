"""The faults report: one table row per stage x fault, one chart per fault, and the soak.

    python -m loadtests.faults_report ladder-results/faults docs/faults

keeps each `stage-<n>.json` and `soak.json` of the results folder, gzipped, in `docs/faults/raw/`
(beside those of stages run earlier), then writes `docs/faults/README.md`, `fault-<name>.png`
(throughput, errors and p95 against the seconds since the fault, its window shaded, one line per
stage) and `soak.png` from everything in `raw/`. `python -m loadtests.faults_report
docs/faults/raw docs/faults` regenerates the report from the committed results alone.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RAW = "raw"
FINDINGS = "findings.md"
"""Written by hand beside the report: what the failing rows show, file and line."""
FAULT_ORDER = (
    "app-kill",
    "replica-stop",
    "redis-kill",
    "worker-kill",
    "primary-restart",
    "primary-freeze",
    "queue-unreachable",
)
STAGES = (3, 4, 5, 6, 7)


def _read(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    text = gzip.decompress(data) if path.suffix == ".gz" else data
    found: dict[str, Any] = json.loads(text)
    return found


def keep(results: Path, raw: Path) -> None:
    """Copy the results' files into `raw/`, gzipped (same results, same bytes)."""
    raw.mkdir(parents=True, exist_ok=True)
    if results.resolve() == raw.resolve():
        return
    for path in sorted([*results.glob("stage-*.json"), *results.glob("soak.json")]):
        result = _read(path)
        text = json.dumps(result, indent=1, sort_keys=True).encode("utf-8")
        target = raw / f"{path.name}.gz"
        if not (target.exists() and gzip.decompress(target.read_bytes()) == text):
            target.write_bytes(gzip.compress(text, mtime=0))


def load(raw: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    stages = sorted((_read(p) for p in raw.glob("stage-*.json.gz")), key=lambda r: r["stage"])
    soak = _read(raw / "soak.json.gz") if (raw / "soak.json.gz").is_file() else None
    return stages, soak


def _kinds(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())) or "none"


def fault_rows(stages: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| stage | fault | p95 before (ms) | window (s) | requests during / after | errors during "
        "| errors after | recovery (s) | orders acknowledged | lost | duplicated | invariants "
        "| verdict |",
        "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---|---|",
    ]
    for result in stages:
        label = f"{result['stage']} {result['name']}"
        for row in result["faults"]:
            if not row.get("applies"):
                lines.append(f"| {label} | {row['fault']} |" + " |" * 10 + " not in this stage |")
                continue
            summary, orders = row["summary"], row["orders"]
            requests = summary["requests"]
            held = "hold" if row["invariants"].get("ok") else "**broken**"
            verdict = "pass" if not row["fails"] else "**FAIL**: " + "; ".join(row["fails"])
            lines.append(
                f"| {label} | {row['fault']} | {summary.get('p95_before_ms', 0):.0f} "
                f"| {row['window_s']:.1f} "
                f"| {requests.get('during', 0)} / {requests.get('after', 0)} "
                f"| {_kinds(summary['errors']['during'])} | {_kinds(summary['errors']['after'])} "
                f"| {summary['recovery_s']:.1f} | {orders['acknowledged']} | {orders['lost']} "
                f"| {orders['duplicated']} | {held} | {verdict} |"
            )
    return lines


def soak_lines(soak: Mapping[str, Any]) -> list[str]:
    minutes = soak["minutes"]
    window = soak["window_min"]
    how = f"the median of the last {window} minutes against that of the first {window} after it"
    first, last = f"median, first {window} after", f"median, last {window}"
    lines = [
        f"Stage {soak['stage']} ({soak['name']}), {soak['load_from']}, {len(minutes)} minutes; "
        f"budgets {'enforced' if soak.get('budgets_enforced') else 'NOT enforced'}. "
        "The worker's retention was shortened for the soak: "
        + ", ".join(f"`{k}={v}`" for k, v in sorted(soak["settings"].items()))
        + ".",
        "",
        f"Growth after the warm-up ({how}; limit {100 * soak['growth_limit']:.0f} %). The "
        f"warm-up is {soak['warmup_min']} minutes, longer where the table says so:",
        "",
        f"| series | warm-up (min) | {first} | highest after | {last} | growth | |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    later: Mapping[str, int] = soak["warmups"]
    derived: Mapping[str, Sequence[float]] = {
        f"{table} per order kept": values for table, values in soak["per_order_kept"].items()
    }

    def value(index: int, name: str) -> float:
        minute = minutes[index]
        if name in derived:
            return float(derived[name][index])
        if name.startswith("memory "):
            return float(minute["memory_mib"].get(name.removeprefix("memory "), 0.0))
        if name.startswith("rows "):
            return float(minute["rows"].get(name.removeprefix("rows "), 0))
        if name == "queue depth":
            return float(minute.get("queue_depth") or 0)
        return float(minute["p95_ms"])

    unjudged = soak.get("unjudged", {})
    for name, grown in soak["growth"].items():
        warm = later.get(name, soak["warmup_min"])
        if grown is None or len(minutes) <= warm:
            continue
        over = grown > soak["growth_limit"]
        flag = "not judged" if name in unjudged else "**over**" if over else ""
        after = [value(i, name) for i in range(warm, len(minutes))]
        start, end = statistics.median(after[:window]), statistics.median(after[-window:])
        lines.append(
            f"| {name} | {warm} | {start:g} | {max(after):g} | {end:g} "
            f"| {100 * grown:.0f} % | {flag} |"
        )
    if unjudged:
        lines += [
            "",
            "Not judged: " + "; ".join(f"{k}, as {why}" for k, why in unjudged.items()) + ".",
        ]
    rows = minutes[-1]["rows"].get("customer_order", 0) if minutes else 0
    verdict = "pass" if not soak["fails"] else "**FAIL**: " + "; ".join(soak["fails"])
    lines += [
        "",
        f"Orders grow by design ({rows} at the end) and are not held to the bar. "
        f"Invariants: {'hold' if soak['invariants'].get('ok') else '**broken**'}. "
        f"Verdict: {verdict}.",
    ]
    return lines


def markdown(
    stages: Sequence[Mapping[str, Any]], soak: Mapping[str, Any] | None, charts: Sequence[str]
) -> str:
    stamps = sorted(
        {
            f"{r['provenance']['commit']} on {r['provenance']['date'][:10]}"
            for r in [*stages, *([soak] if soak else [])]
        }
    )
    run = {int(r["stage"]) for r in stages}
    missing = [n for n in STAGES if n not in run]
    limit = stages[0]["recovery_limit_s"] if stages else 30
    out = [
        "# Faults under load",
        "",
        # Plain text, not a link: the docs site (mkdocs --strict) refuses links to folders.
        "Written by `python -m loadtests.faults_report` from the raw results in "
        f"`docs/faults/{RAW}/` (gzipped JSON; commit and date: {'; '.join(stamps) or 'none'}). "
        "`make faults` (`python -m loadtests.ladder --faults`) builds each stage 3-7 as the "
        "ladder does, under its CPU budgets, drives the Locust suite at a steady load of about "
        "70 % of the stage's knee (the users at the knee in "
        "[the ladder report](../ladder/README.md)), and injects one fault at a time, then "
        "restores it: 20 s of load before, the fault, "
        "45 s after. Anchors: AWS Fault Injection Service's instance-termination and RDS-reboot "
        "actions, Netflix's Chaos Monkey; the order check is Jepsen's \"acknowledged writes "
        'survive", applied to orders.',
        "",
        "The faults: `app-kill` kill -9 one app process (a supervisor, standing for systemd's "
        "`Restart=always` or an Auto Scaling group, starts it again on the same port; the window "
        "ends when it answers `/readyz`); `replica-stop` the replica stopped (fast) for 30 s, then "
        "started; `redis-kill` kill -9 Redis, started again 30 s later (empty); `worker-kill` "
        "kill -9 a worker while messages are in flight (received, not yet deleted); "
        "`primary-restart` `pg_ctl restart -m fast`; `primary-freeze` SIGSTOP to every process of "
        "the primary for 10 s, then SIGCONT; `queue-unreachable` the AWS endpoint frozen for "
        "60 s (connections hang, as behind a partition). Locally one moto server stands for SQS, "
        "SES and DynamoDB, so the carts' table is unreachable with the queue: harsher than the "
        "queue alone.",
        "",
        "A row passes when: no order the suite saw acknowledged (a 201) is missing from the "
        "database, no order of the run is in the database without an acknowledgement "
        "(`duplicated`), every Idempotency-Key has exactly one row naming its order, the suite's "
        "invariants hold, there is no error before the fault, every error is a 502, a 503 with "
        "`Retry-After` or a refused connection (never a 500), and the objective (p95 under "
        f"{stages[0]['p95_objective_ms'] if stages else 500:g} ms in 5-s slices) holds again and "
        f"errors stop within {limit:g} s of the fault's end (the recovery column). Rows that fail "
        "say why; their inputs were not tuned until they passed. The machine's 2 cores are shared "
        "with other work: each row records the load average at the fault, and a row whose p95 "
        "already missed the objective before the fault says so (p95 before: the steady load's "
        "last 15 s before the fault; its first seconds, while every user signs up, are left out, "
        "as the ladder leaves out its warm-up).",
        "",
    ]
    for result in stages:
        out.append(
            f"- Stage {result['stage']} ({result['name']}): {result['load_from']}; budgets "
            f"{'enforced' if result.get('budgets_enforced') else 'NOT enforced'}; "
            f"{result['minutes']} min."
            + (f" {result['summarised_by']}" if "summarised_by" in result else "")
        )
    if missing:
        names = ", ".join(map(str, missing))
        out.append(
            f"- {'Stage' if len(missing) == 1 else 'Stages'} {names}: not run yet; "
            f"`make faults STAGES={names.replace(', ', ',')}` adds their rows "
            "(4 to 12 minutes a stage)."
        )
    out += ["", *fault_rows(stages), ""]
    if stages:
        out += [
            f"What the failing rows show, and what was left alone: [{FINDINGS}]({FINDINGS}).",
            "",
        ]
    for chart in charts:
        if chart.startswith("fault-"):
            name = chart.removeprefix("fault-").removesuffix(".png")
            out += [f"### {name}", "", f"![{name}: throughput, errors and p95]({chart})", ""]
    out += ["## Soak", ""]
    if soak is None:
        out += [
            "Not run yet: `make soak` (`python -m loadtests.ladder --soak`, about 35 min).",
            "",
        ]
    else:
        out += [*soak_lines(soak), ""]
        if "soak.png" in charts:
            out += ["![the soak, minute by minute](soak.png)", ""]
    return "\n".join(out)


def _plot_fault(stages: Sequence[Mapping[str, Any]], name: str, path: Path) -> bool:
    import matplotlib.pyplot as plt

    runs = [
        (result, row)
        for result in stages
        for row in result["faults"]
        if row["fault"] == name and row.get("applies")
    ]
    if not runs:
        return False
    figure, (rps_axis, error_axis, p95_axis) = plt.subplots(3, 1, figsize=(12, 8), sharex=True)
    for result, row in runs:
        slices = row["summary"]["slices"]
        ts = [float(s["t_s"]) + 2.5 for s in slices]  # the middle of each 5-s slice
        label = f"{result['stage']} {result['name']}"
        (line,) = rps_axis.plot(ts, [float(s["rps"]) for s in slices], label=label)
        color = line.get_color()
        error_axis.plot(ts, [s["failures"] / 5.0 for s in slices], color=color, label=label)
        p95_axis.plot(ts, [max(1.0, float(s["p95_ms"])) for s in slices], color=color)
        for axis in (rps_axis, error_axis, p95_axis):
            axis.axvspan(0, float(row["window_s"]), color=color, alpha=0.12)
    p95_axis.axhline(
        float(runs[0][0].get("p95_objective_ms") or 500), color="grey", linestyle="--", linewidth=1
    )
    rps_axis.set(ylabel="requests/s", title=f"{name}: the fault's window shaded")
    error_axis.set(ylabel="errors/s")
    p95_axis.set(xlabel="seconds since the fault", ylabel="p95 (ms)")
    p95_axis.set_yscale("log")
    rps_axis.legend(fontsize="small")
    for axis in (rps_axis, error_axis, p95_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _plot_soak(soak: Mapping[str, Any], path: Path) -> bool:
    import matplotlib.pyplot as plt

    minutes = soak["minutes"]
    if not minutes:
        return False
    ts = [int(m["minute"]) for m in minutes]
    figure, (memory_axis, rows_axis, p95_axis) = plt.subplots(3, 1, figsize=(12, 9), sharex=True)
    for name in sorted({n for m in minutes for n in m["memory_mib"]}):
        memory_axis.plot(ts, [m["memory_mib"].get(name) for m in minutes], label=name)
    for table in sorted({t for m in minutes for t in m["rows"]}):
        rows_axis.plot(ts, [m["rows"].get(table) for m in minutes], label=table)
    p95_axis.plot(ts, [m["p95_ms"] for m in minutes], label="p95 (ms)", color="tab:red")
    depth_axis = p95_axis.twinx()
    depth_axis.plot(
        ts, [m.get("queue_depth") or 0 for m in minutes], label="queue depth", color="tab:blue"
    )
    depth_axis.set_ylabel("messages")
    for axis in (memory_axis, rows_axis, p95_axis):
        axis.axvspan(0, soak["warmup_min"], color="grey", alpha=0.12)
        axis.grid(alpha=0.3)
    memory_axis.set(
        ylabel="MiB (anonymous resident)", title="Soak: memory, table rows, p95 (warm-up shaded)"
    )
    rows_axis.set(ylabel="rows")
    kept = soak.get("per_order_kept") or {}
    if kept:
        ratio_axis = rows_axis.twinx()
        for table, values in sorted(kept.items()):
            ratio_axis.plot(ts, values, linestyle="--", label=f"{table} per order kept")
        ratio_axis.set_ylabel("rows per order kept (dashed)")
        ratio_axis.legend(fontsize="small", loc="lower right")
    p95_axis.set(xlabel="minute", ylabel="p95 (ms)")
    memory_axis.legend(fontsize="small", ncol=4)
    rows_axis.legend(fontsize="small")
    handles = p95_axis.get_legend_handles_labels()
    more = depth_axis.get_legend_handles_labels()
    p95_axis.legend(handles[0] + more[0], handles[1] + more[1], fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def write_report(results: Path, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    raw = out / RAW
    keep(results, raw)
    stages, soak = load(raw)
    charts: list[str] = []
    for name in FAULT_ORDER:
        chart = f"fault-{name}.png"
        if _plot_fault(stages, name, out / chart):
            charts.append(chart)
        else:
            (out / chart).unlink(missing_ok=True)
    if soak is not None and _plot_soak(soak, out / "soak.png"):
        charts.append("soak.png")
    readme = out / "README.md"
    readme.write_text(markdown(stages, soak, charts) + "\n", encoding="utf-8")
    return [readme, *(out / c for c in charts)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.faults_report", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("results", type=Path, help="folder of stage-<n>.json and soak.json")
    parser.add_argument("out", type=Path, help="the report's folder (docs/faults)")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"python -m loadtests.faults_report: no folder {args.results}", file=sys.stderr)
        return 2
    for path in write_report(args.results, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
