"""The evidence beside CPU: what the shop's /metrics, PostgreSQL and SQS say during a step, and
the merge of every timestamped sample into the suite's per-step lines.

Each app process's /metrics is scraped about once a second; a step's figure is the difference
of the counters between the samples nearest its two ends, summed over the processes present at
both (a process added mid-step counts from its first sample). Replica lag and queue depth are
gauges: their mean over the step, as is the fulfilment lag (stage 7: the workers' age of the
last order they finished, from its first send to its last step).
"""

from __future__ import annotations

import contextlib
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from loadtests.ladder.cgroups import Throttling, cpu_per_component, throttling_per_component

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
"""name{labels} value [timestamp]; label values may hold braces (route templates)."""
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

COUNTERS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "request_s": ("shop_request_duration_seconds_sum", ()),
    "requests": ("shop_request_duration_seconds_count", ()),
    "scrapes": ("shop_request_duration_seconds_count", (("route", "/metrics"),)),
    "orders_placed": (
        "shop_request_duration_seconds_count",
        (("route", "/orders"), ("method", "POST"), ("status", "201")),
    ),
    "db_s": ("shop_request_db_seconds_sum", ()),
    "pool_wait_s": ("shop_db_pool_wait_seconds_total", ()),
    "cache_hit": ("shop_cache_requests_total", (("result", "hit"),)),
    "cache_miss": ("shop_cache_requests_total", (("result", "miss"),)),
    "reads_primary": ("shop_db_reads_total", (("target", "primary"),)),
    "reads_replica": ("shop_db_reads_total", (("target", "replica-*"),)),
    "replica_skips": ("shop_db_replica_skips_total", ()),
}
"""What is read from each /metrics: a name for it, the metric, and the labels it must carry
(a value ending in * matches by prefix). `scrapes` are the ladder's own reads of /metrics,
taken out of the requests the app answered for the suite."""

Metrics = dict[str, float]


def parse_metrics(text: str) -> Metrics:
    """The sums of COUNTERS in one Prometheus text document (missing ones are 0)."""
    found = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        name, labels, value = match.group(1), match.group(3) or "", match.group(4)
        for key, (metric, wanted) in COUNTERS.items():
            if name != metric:
                continue
            if wanted:
                carried = dict(_LABEL.findall(labels))
                if not all(_matches(carried.get(k), v) for k, v in wanted):
                    continue
            with contextlib.suppress(ValueError):
                found[key] += float(value)
    return found


def _matches(value: str | None, wanted: str) -> bool:
    if value is None:
        return False
    return value.startswith(wanted[:-1]) if wanted.endswith("*") else value == wanted


def _window(samples: Sequence[tuple[float, Any]], started_at: float, ended_at: float) -> list[Any]:
    return [s for s in samples if started_at - 0.75 <= s[0] <= ended_at + 0.75]


def metric_deltas(
    samples: Sequence[tuple[float, Mapping[str, Metrics]]], started_at: float, ended_at: float
) -> Metrics | None:
    """Counter increases over the step, summed over app processes (keyed by their address)."""
    inside = _window(samples, started_at, ended_at)
    if len(inside) < 2:
        return None
    first, last = inside[0][1], inside[-1][1]
    total = dict.fromkeys(COUNTERS, 0.0)
    for process, figures in last.items():
        before = first.get(process)
        if before is None:  # started inside the step: from its first sample
            before = next((s[1][process] for s in inside if process in s[1]), figures)
        for key in total:
            total[key] += max(0.0, figures.get(key, 0.0) - before.get(key, 0.0))
    return total


def gauge_mean(
    samples: list[tuple[float, float]], started_at: float, ended_at: float
) -> float | None:
    inside = [value for at, value in samples if started_at <= at <= ended_at]
    return round(statistics.fmean(inside), 4) if inside else None


def signals_of(
    deltas: Metrics | None,
    *,
    cache: bool,
    lag: float | None,
    depth: float | None,
    fulfilment: float | None = None,
    seconds: float = 0.0,
    suite_requests: float | None = None,
) -> dict[str, float | None]:
    """The interface's `signals` of one step from its counter increases and gauges.
    `suite_requests`: what the load generator sent in the step, given when a CDN stands in
    front of the app (its offload is the share the app never answered)."""
    db_share = pool_wait_ms = hit_ratio = replica_share = skipped = None
    offload = orders = None
    if deltas is not None:
        answered = max(0.0, deltas["requests"] - deltas.get("scrapes", 0.0))
        if suite_requests:
            offload = round(max(0.0, 1 - answered / suite_requests), 4)
        if seconds > 0:
            orders = round(deltas.get("orders_placed", 0.0) / seconds, 3)
    if deltas is not None and deltas["requests"] > 0:
        if deltas["request_s"] > 0:
            db_share = round(min(1.0, deltas["db_s"] / deltas["request_s"]), 4)
        pool_wait_ms = round(1000 * deltas["pool_wait_s"] / deltas["requests"], 3)
        looked_up = deltas["cache_hit"] + deltas["cache_miss"]
        if cache and looked_up > 0:
            hit_ratio = round(deltas["cache_hit"] / looked_up, 4)
        reads = deltas.get("reads_primary", 0.0) + deltas.get("reads_replica", 0.0)
        if lag is not None and reads > 0:  # a stage with a replica: who served the reads
            replica_share = round(deltas.get("reads_replica", 0.0) / reads, 4)
            skipped = round(deltas.get("replica_skips", 0.0) / reads, 4)
    return {
        "db_share": db_share,
        "pool_wait_ms": pool_wait_ms,
        "cache_hit_ratio": hit_ratio,
        "replica_lag_s": lag,
        "replica_read_share": replica_share,
        "replica_skipped_share": skipped,
        "queue_depth": depth,
        "fulfilment_lag_s": fulfilment,
        "cdn_offload": offload,
        "orders_per_s": orders,
    }


def merge_step(
    step: dict[str, Any],
    *,
    cpu_samples: list[tuple[float, dict[str, float]]],
    groups: Mapping[str, str],
    metric_samples: Sequence[tuple[float, Mapping[str, Metrics]]],
    lag_samples: list[tuple[float, float]] | None,
    depth_samples: list[tuple[float, float]] | None,
    cache: bool,
    fulfilment_samples: list[tuple[float, float]] | None = None,
    throttling_samples: list[tuple[float, dict[str, Throttling]]] | None = None,
    cdn: bool = False,
) -> dict[str, Any]:
    """One suite step line plus `cpu` (CPUs per component over its window), `throttled` (the
    share of its quota periods each component was stopped in, and its stopped time per second)
    and `signals`."""
    started, ended = float(step["started_at"]), float(step["ended_at"])
    lag = gauge_mean(lag_samples, started, ended) if lag_samples is not None else None
    depth = gauge_mean(depth_samples, started, ended) if depth_samples is not None else None
    fulfilment = gauge_mean(fulfilment_samples, started, ended) if fulfilment_samples else None
    throttled = (
        throttling_per_component(throttling_samples, dict(groups), started, ended)
        if throttling_samples
        else {}
    )
    return step | {
        "cpu": cpu_per_component(cpu_samples, dict(groups), started, ended),
        "throttled": throttled,
        "signals": signals_of(
            metric_deltas(metric_samples, started, ended),
            cache=cache,
            lag=lag,
            depth=depth,
            fulfilment=fulfilment,
            seconds=ended - started,
            suite_requests=float(step.get("requests") or 0) if cdn else None,
        ),
    }
