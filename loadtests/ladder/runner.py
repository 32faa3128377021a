"""Run one stage: build its topology, put every component under its CPU budget, warm up, drive
the Locust suite through it while sampling CPU and signals every second, write
ladder-results/stage-<n>.json (the interface analysis.py and report.py read), tear down.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg

from loadtests import analysis, shapes
from loadtests.ladder.cgroups import Budgets, CpuSampler, cpu_per_component
from loadtests.ladder.components import ROOT, Process, Topology, jwt_secret
from loadtests.ladder.provenance import provenance
from loadtests.ladder.signals import Metrics, merge_step, parse_metrics
from loadtests.ladder.stages import FEDERATED, Stage

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
PRODUCTS = 1000
CUSTOMERS = 20
ADMIN_EMAIL = "ladder-admin@example.com"


@dataclass(frozen=True, kw_only=True)
class Load:
    """The step ramp (and stage 6's compressed day) every stage gets."""

    step_s: float = 12
    steps: int = 20
    step_users: int = 10
    stop_after_missed: int = 2
    """The ramp ends once this many steps in a row missed the objective (0: never)."""
    spawn_rate: int = 50
    p95_ms: float = 500
    warmup_s: float = 10
    daily_s: float = 150
    daily_peak_users: int = 0
    """0: DAY_PEAK_OF_KNEE of the autoscaled ramp's knee (stage 6)."""
    locustfile: Path = LOCUSTFILE
    products: int = PRODUCTS
    """Products seeded before the run."""
    start_users: int = 0
    """Users of the ramp's first step (0: step_users)."""
    fine_passes: int = 0
    """After the ramp, passes of finer steps around its knee, each measured on its own (the
    spread of the knee across them is the run's repeatability); 0: none."""
    fine_steps: int = 5
    fine_step_s: float = 15
    probe_s: float = 20
    """Seconds each steady pass of a stage's popularity probe holds (stage 5)."""
    popularity: str = ""
    """SHOP_LOAD_POPULARITY of the suite (empty: its default skew)."""
    mix: str = ""
    """SHOP_LOAD_MIX of the suite (empty: the talk's mix)."""

    def fine(self, knee_users: int) -> Load:
        """One fine pass: half steps from two below the knee's users, held longer, never cut
        short (every pass covers the same loads)."""
        step = max(1, self.step_users // 2)
        return replace(
            self,
            start_users=max(1, knee_users - 2 * step),
            step_users=step,
            steps=self.fine_steps,
            step_s=self.fine_step_s,
            stop_after_missed=0,
        )

    def env(self, shape: str) -> dict[str, str]:
        return {
            "SHOP_LOAD_SHAPE": shape,
            "SHOP_LOAD_START_USERS": str(self.start_users or self.step_users),
            "SHOP_LOAD_STEP_USERS": str(self.step_users),
            "SHOP_LOAD_STEP_S": str(self.step_s),
            "SHOP_LOAD_STEPS": str(self.steps),
            "SHOP_LOAD_STOP_AFTER_MISSED": str(self.stop_after_missed),
            "SHOP_LOAD_SPAWN_RATE": str(self.spawn_rate),
            "SHOP_LOAD_DAILY_PEAK_USERS": str(
                self.daily_peak_users or self.step_users * self.steps
            ),  # the runner sets the peak from the knee before it runs a day
            "SHOP_LOAD_DAILY_S": str(self.daily_s),
            "SHOP_LOAD_P95_MS": str(self.p95_ms),
            "SHOP_LOAD_POPULARITY": self.popularity,
            "SHOP_LOAD_MIX": self.mix,
        }

    def steady(self, users: int, seconds: float) -> Load:
        """One step of `users`, held `seconds`, never cut short."""
        return replace(
            self, start_users=users, step_users=users, steps=1, step_s=seconds,
            stop_after_missed=0,
        )  # fmt: skip

    def writes(self) -> Load:
        """Stage 7's write-heavy ramp: buyers who only place orders, on products picked
        uniformly (so that the few best sellers do not sell out and answer 409)."""
        return replace(self, mix="orders", popularity="uniform", start_users=0)


def say(message: str) -> None:
    print(f"ladder: {message}", file=sys.stderr, flush=True)


@dataclass
class Sampler:
    """Every second: CPU per group, each app's /metrics, replica lag, queue depth."""

    topology: Topology
    cpu: CpuSampler
    cache: bool
    metrics: list[tuple[float, dict[str, Metrics]]] = field(default_factory=list)
    lag: list[tuple[float, float]] | None = None
    depth: list[tuple[float, float]] | None = None
    """Messages queued (visible)."""
    backlog: list[tuple[float, float]] | None = None
    """Messages queued plus in flight: what the worker group is scaled on."""
    fulfilment: list[tuple[float, float]] | None = None
    """The workers' age of the last order they finished (its first send to its last step), the
    oldest of them."""
    stop: threading.Event = field(default_factory=threading.Event)
    hooks: list[Callable[[], None]] = field(default_factory=list)
    _probe: psycopg.Connection[Any] | None = None
    """The replica-lag probe's connection to the primary, kept open between samples."""

    def __post_init__(self) -> None:
        if self.topology.replica is not None:
            self.lag = []
        if self.topology.workers:
            self.fulfilment = []
        if self.topology.queue_url is not None:
            self.depth, self.backlog = [], []
            import boto3

            self._sqs = boto3.client(
                "sqs",
                endpoint_url=self.topology.moto_url,
                region_name="us-east-1",
                aws_access_key_id="ladder-local",
                aws_secret_access_key="ladder-local",
            )

    def once(self) -> None:
        """One round of the signals: each app's and worker's /metrics (scraped at once),
        replica lag, queue depth and backlog."""
        now = time.time()
        apps = list(self.topology.apps)
        with ThreadPoolExecutor(max_workers=max(1, len(apps))) as pool:
            found = list(pool.map(_scrape, [app.port for app in apps]))
        scraped = {str(app.port): m for app, m in zip(apps, found, strict=True) if m is not None}
        self.metrics.append((now, scraped))
        if self.fulfilment is not None:
            ages = [age for w in list(self.topology.workers) if (age := _last_event_age(w.port))]
            if ages:
                self.fulfilment.append((now, max(ages)))
        if self.lag is not None and self.topology.primary is not None:
            try:
                self.lag.append((now, self._replay_lag()))
            except Exception:  # a sample lost under load is not worth stopping the run
                self._close_probe()
        if self.depth is not None:
            try:
                attributes = self._sqs.get_queue_attributes(
                    QueueUrl=self.topology.queue_url,
                    AttributeNames=[
                        "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible",
                    ],
                )["Attributes"]
                visible = float(attributes["ApproximateNumberOfMessages"])
                in_flight = float(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))
                self.depth.append((now, visible))
                assert self.backlog is not None
                self.backlog.append((now, visible + in_flight))
            except Exception:
                pass

    def _replay_lag(self) -> float:
        """The replicas' replay lag, on one connection kept open to the primary: a new
        connection every second (a backend forked, authenticated, its caches filled) is CPU
        the primary's budget pays for the measurement, not for the shop."""
        if self._probe is None or self._probe.closed:
            assert self.topology.primary is not None
            self._probe = psycopg.connect(
                self.topology.primary.libpq_url(), autocommit=True, connect_timeout=5
            )
        row = self._probe.execute(
            "SELECT COALESCE(EXTRACT(EPOCH FROM max(replay_lag)), 0)::float8"
            " FROM pg_stat_replication"
        ).fetchone()
        return float(row[0] or 0.0) if row else 0.0

    def _close_probe(self) -> None:
        if self._probe is not None:
            with contextlib.suppress(Exception):
                self._probe.close()
            self._probe = None

    def last_backlog(self) -> float | None:
        """The backlog last sampled, if any."""
        return self.backlog[-1][1] if self.backlog else None

    def run(self) -> None:
        """CPU every second, and the scaling policies after each CPU sample, on a thread of
        their own: on a saturated machine a round of scrapes can take seconds, and the CPU of
        the steps past a knee (which name the bottleneck) must not wait for it."""
        cpu = threading.Thread(target=self._cpu_loop, daemon=True)
        cpu.start()
        try:
            self._every_second(self.once)
        finally:
            self._close_probe()
        cpu.join(5)

    def _cpu_loop(self) -> None:
        def sample() -> None:
            self.cpu.sample()
            for hook in self.hooks:
                hook()

        self._every_second(sample)

    def _every_second(self, work: Callable[[], None]) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                work()
            except Exception as exc:  # a lost sample must not stop sampling (and scaling)
                say(f"  sampler: one sample lost: {exc!r}")
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


def _scrape(port: int) -> Metrics | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return parse_metrics(r.read().decode())
    except OSError:
        return None


def _last_event_age(port: int) -> float | None:
    """A worker's `shop_worker_last_event_age_seconds` (0 before its first message: None)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("shop_worker_last_event_age_seconds "):
            with contextlib.suppress(ValueError):
                return float(line.split()[1]) or None
    return None


@dataclass
class _Scaling:
    """What the two local scaling policies share, as an Auto Scaling group runs them: one
    change at a time, a cooldown after each, scale-in more cautious than scale-out, and the
    group's size over time (a step's CPU is judged against what ran during it)."""

    topology: Topology
    budgets: Budgets
    stage: Stage
    _: KW_ONLY
    cooldown_s: float = 8
    """Seconds after a change before the next scale-out; twice as long before a scale-in."""
    instances: list[tuple[float, int]] = field(default_factory=list)
    enabled: bool = True
    """False: the group stays as it is."""
    ceiling: int = 0
    """The most processes it runs."""
    _last_change: float = 0.0
    _grower: threading.Thread | None = None
    """The scale-out in progress (a process starting), if any."""
    _started: int = 0
    """Processes started so far: each new one takes the next index, never one in use."""

    noun = "processes"

    def __post_init__(self) -> None:
        self.instances.append((time.time(), len(self.members())))

    def members(self) -> list[Process]:
        raise NotImplementedError

    def wanted(self) -> int | None:
        """The size the policy asks for now; None when its metric has no sample."""
        raise NotImplementedError

    def _add(self) -> None:
        raise NotImplementedError

    def _remove(self) -> None:
        raise NotImplementedError

    def check(self) -> None:
        since = time.time() - self._last_change
        growing = self._grower is not None and self._grower.is_alive()
        if not self.enabled or growing or since < self.cooldown_s:
            return
        wanted = self.wanted()
        if wanted is None:
            return
        count = len(self.members())
        if wanted > count:
            self._grower = threading.Thread(target=self._grow, daemon=True)
            self._grower.start()
        elif wanted < count and since >= 2 * self.cooldown_s:
            self._remove()
            self._changed()

    def _grow(self) -> None:
        self._add()
        self._changed()

    def _next(self) -> int:
        """The next process's index: past every index used, running or not (a process still
        starting is not yet a member, and must not share its name, log and group)."""
        used = max((int(p.name.split("-")[1]) for p in self.members()), default=-1)
        self._started = max(self._started, used + 1) + 1
        return self._started - 1

    def _changed(self) -> None:
        self._last_change = time.time()
        self.instances.append((self._last_change, len(self.members())))
        say(f"  autoscaler: {len(self.members())} {self.noun}")

    def fix(self, count: int) -> None:
        """Stop scaling, with `count` processes: the extra taken out (stage 5's fixed fleet,
        for stage 6's day), or the missing started one at a time (the write-heavy ramp's
        largest fleet)."""
        self.enabled = False
        if self._grower is not None:
            # The process it is starting joins first (its start fails within wait_http's time).
            self._grower.join()
        while len(self.members()) < count:
            self._add()
            self._changed()
        shrunk = len(self.members()) > count
        while len(self.members()) > count:
            self._remove()
            self._changed()
        if shrunk:
            time.sleep(3)  # the processes taken out finish their requests and stop

    def resume(self) -> None:
        """Scale again, judging only what was measured from now on (the window before this
        may hold a larger group's work, which would read as a busy small group)."""
        self._last_change = time.time()
        self.enabled = True

    def mean_count(self, start: float, end: float) -> float:
        """Processes running between `start` and `end`, on average over the time."""
        if end <= start:
            return float(self.count_at(end))
        edges = [start, *(when for when, _ in self.instances if start < when < end), end]
        spans = itertools.pairwise(edges)
        return sum(self.count_at(a) * (b - a) for a, b in spans) / (end - start)

    def count_at(self, at: float) -> int:
        count = self.instances[0][1]
        for when, number in self.instances:
            if when <= at:
                count = number
        return count


@dataclass
class Autoscaler(_Scaling):
    """Stage 6 locally: target tracking on the app processes' mean CPU against their budget,
    one process at a time behind nginx, as an Auto Scaling group with a target tracking
    policy does, in seconds instead of minutes. `ceiling` is the stage's `max_app_processes`
    unless raised (the write-heavy ramp's `write_fleet`)."""

    cpu: CpuSampler
    target: float = 0.6
    """Mean CPU of the app processes against their budget that the fleet is sized for."""

    noun = "app processes"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.ceiling = self.ceiling or self.stage.max_app_processes

    def members(self) -> list[Process]:
        return self.topology.apps

    def utilisation(self) -> float | None:
        now = time.time()
        groups = {name: g.component for name, g in list(self.budgets.groups.items())}
        used = cpu_per_component(self.cpu.samples, groups, now - 5, now)
        if "app" not in used:
            return None
        return used["app"] / (self.stage.app_cpus * len(self.topology.apps))

    def desired(self, level: float, count: int) -> int:
        """Target tracking: the processes that would run at `target`, within the fleet's
        bounds (ceil(count x level / target)), as an Auto Scaling policy computes it."""
        wanted = math.ceil(round(count * level / self.target, 6))
        return max(self.stage.app_processes, min(self.ceiling, wanted))

    def wanted(self) -> int | None:
        level = self.utilisation()
        return None if level is None else self.desired(level, len(self.topology.apps))

    def _add(self) -> None:
        index = self._next()
        group = f"app-{index}"
        self.budgets.group(group, "app", self.stage.app_cpus)
        app = self.topology.start_app(index, group)
        self.budgets.add(group, app.pid)
        self.topology.reload_balancer()

    def _remove(self) -> None:
        app = self.topology.apps[-1]
        self.topology.apps.remove(app)
        self.topology.reload_balancer()
        threading.Timer(2.0, app.stop).start()  # in-flight requests finish first


@dataclass
class WorkerScaler(_Scaling):
    """The stack's worker group locally: target tracking on the backlog per worker (messages
    queued plus in flight, over the workers running), held at the stage's `worker_backlog`,
    from the stage's workers up to `ceiling`, each new worker under its own budget."""

    backlog: Callable[[], float | None]
    """The queue's messages queued plus in flight, last sampled (None: no sample yet)."""

    noun = "workers"

    def members(self) -> list[Process]:
        return self.topology.workers

    def desired(self, backlog: float) -> int:
        """ceil(backlog / target), within the group's bounds, as the stack's policy does."""
        wanted = math.ceil(round(backlog / max(1, self.stage.worker_backlog), 6))
        return max(self.stage.worker_processes, min(self.ceiling, wanted))

    def wanted(self) -> int | None:
        backlog = self.backlog()
        return None if backlog is None else self.desired(backlog)

    def _add(self) -> None:
        index = self._next()
        group = f"worker-{index}"
        self.budgets.group(group, "worker", self.stage.worker_cpus)
        worker = self.topology.start_worker(index, group)
        self.budgets.add(group, worker.pid)

    def _remove(self) -> None:
        worker = self.topology.workers.pop()
        # SIGTERM: the worker finishes the batch in hand and receives no more (app/worker.py).
        threading.Thread(target=worker.stop, daemon=True).start()


def build(stage: Stage, topology: Topology, budgets: Budgets, *, products: int = PRODUCTS) -> None:
    """Start the stage's components, migrate and seed, then put each under its budget (the
    set-up runs unbudgeted: seeding under 0.1 CPU would take minutes)."""
    box = "box" if stage.single_box else None
    topology.settle_s = stage.settle_s
    topology.env |= {
        "SHOP_ENV": "test",
        "SHOP_JWT_SECRET": jwt_secret(),
        "SHOP_ACCESS_LOG": "false",
        # Cheap password hashing: the run measures the shop's paths, not argon2.
        "SHOP_PASSWORD_TIME_COST": "1",
        "SHOP_PASSWORD_MEMORY_KIB": "1024",
        "SHOP_DATABASE_POOL_SIZE": str(stage.pool_size),
        "SHOP_DATABASE_MAX_OVERFLOW": str(stage.max_overflow),
        "SHOP_SIGN_IN_FAILURES_PER_CLIENT": "100000",
        "SHOP_ASSETS_DIR": str(topology.folder / "assets"),
    } | stage.settings
    say("  starting PostgreSQL" + (" and its streaming replica" if stage.replica else ""))
    topology.start_postgres(replica=stage.replica)
    if stage.shards or stage.federated:
        say(f"  starting {stage.shards} order shards and the federated databases")
        topology.start_stage_8_databases(
            shards=stage.shards, federated=FEDERATED if stage.federated else ()
        )
    if stage.cache:
        topology.start_redis(box or "redis")
    if stage.aws:
        topology.start_moto("moto", queue=stage.queue)
    say(f"  migrating and seeding {products} products")
    topology.shop("migrate")
    topology.shop("seed", "--products", str(products), "--customers", str(CUSTOMERS))
    password = secrets.token_urlsafe(18)
    topology.shop("create-admin", "--email", ADMIN_EMAIL, "--password-stdin", stdin=password)
    topology.env["_ADMIN_PASSWORD"] = password
    for index in range(stage.app_processes):
        topology.start_app(index, box or f"app-{index}")
    for index in range(stage.worker_processes):
        topology.start_worker(index, f"worker-{index}")
    topology.target = f"http://127.0.0.1:{topology.apps[0].port}"
    if stage.balancer:
        topology.target = topology.start_balancer("nginx")
    if stage.cdn:
        topology.target = topology.start_cdn("cdn", topology.target)

    # Budgets: one group per component, one per process for app and worker.
    if box:
        budgets.group("box", "box", stage.box_cpus)
    for name, component, cpus in (
        ("postgres", "postgres", stage.postgres_cpus),
        ("replica", "replica", stage.replica_cpus),
        ("redis", "redis", stage.redis_cpus),
        ("nginx", "nginx", stage.nginx_cpus),
        ("cdn", "cdn", stage.cdn_cpus),
    ):
        if cpus > 0:
            budgets.group(name, component, cpus)
    if stage.aws:
        budgets.group("moto", "moto", 0)  # measured, not budgeted: it stands for AWS
    if not box:
        for index in range(stage.app_processes):
            budgets.group(f"app-{index}", "app", stage.app_cpus)
        for index in range(stage.worker_processes):
            budgets.group(f"worker-{index}", "worker", stage.worker_cpus)
    assert topology.primary is not None
    budgets.add(box or "postgres", topology.postmaster_pid(topology.primary))
    if topology.replica is not None:
        budgets.add("replica", topology.postmaster_pid(topology.replica))
    # Stage 8: a group per database, each with its primary's budget, counted as one component.
    for index, cluster in enumerate(topology.shards, start=1):
        budgets.group(f"shard-{index}", "shard", stage.shard_cpus)
        budgets.add(f"shard-{index}", topology.postmaster_pid(cluster))
    for name, cluster in topology.federated.items():
        budgets.group(name, "federated", stage.federated_cpus)
        budgets.add(name, topology.postmaster_pid(cluster))
    for process in topology.processes:
        budgets.add(process.group, process.pid)


DAY_PEAK_OF_KNEE = 0.8
"""Stage 6's day peaks at this share of the users at the autoscaled ramp's knee: within what
the largest fleet carries, beyond what the minimum fleet does (so the day can show both)."""

LOADGEN = "loadgen"
"""The load generator's component name in a step's `cpu` (outside the system under test)."""


def locust(
    topology: Topology, load: Load, shape: str | None, folder: Path, *, seconds: float = 0
) -> tuple[subprocess.Popen[bytes], dict[str, Path]]:
    """Start the suite headless against the stage (outside every budget)."""
    outputs = {"steps": folder / "steps.jsonl", "invariants": folder / "invariants.json"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env |= load.env(shape or "") | {
        "SHOP_LOAD_SETTLE_S": str(topology.settle_s),
        "SHOP_LOAD_ADMIN_EMAIL": ADMIN_EMAIL,
        "SHOP_LOAD_ADMIN_PASSWORD": topology.env["_ADMIN_PASSWORD"],
    }
    if shape is None:
        del env["SHOP_LOAD_SHAPE"]
    else:
        env |= {
            "SHOP_LOAD_STEPS_OUT": str(outputs["steps"]),
            "SHOP_LOAD_INVARIANTS_OUT": str(outputs["invariants"]),
        }
    command = [
        str(Path(sys.executable).parent / "locust"),
        "-f", str(load.locustfile), "--headless", "--host", topology.target,
        "--only-summary", "--loglevel", "WARNING",
        # Users finish the request they are in before Locust stops: an order the shop committed
        # but whose answer Locust dropped at the stop would read as a stock mismatch.
        "--stop-timeout", "30",
    ]  # fmt: skip
    if shape is None:
        command += ["-u", "10", "-r", "10", "-t", f"{seconds:.0f}s"]
    log = (folder / f"locust-{shape or 'warmup'}.log").open("ab")
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    return process, outputs


def _stop_locust(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def describe(step: dict[str, Any], budgets: dict[str, float]) -> str:
    """One progress line: users, rps, p95 and CPU per component against its budget."""
    cpu = " ".join(
        f"{name} {used:.2f}/{budgets[name]:.2f}" if name in budgets else f"{name} {used:.2f}"
        for name, used in sorted(step.get("cpu", {}).items())
    )
    failures = f" {step['failures']} failed" if step.get("failures") else ""
    stopped = " ".join(
        f"{name} {t['throttled']:.0%}"
        for name, t in sorted((step.get("throttled") or {}).items())
        if t["throttled"] >= 0.1
    )
    return (
        f"  step {step['step']}: {step['users']:4d} users {step['rps']:7.1f} req/s "
        f"p95 {step['p95_ms']:6.0f} ms{failures}  cpu {cpu}"
        + (f"  throttled {stopped}" if stopped else "")
    )


@dataclass
class _Pass:
    """What every Locust pass over one built stage shares."""

    stage: Stage
    topology: Topology
    budgets: Budgets
    cpu: CpuSampler
    sampler: Sampler
    scaler: Autoscaler | None
    stack: ExitStack
    workers: WorkerScaler | None = None

    def measure(
        self, load: Load, shape: str, folder: Path
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Run the suite once with `load`'s shape; its steps, merged with what was sampled
        during each, and the invariants it checked at the end."""
        folder.mkdir(parents=True, exist_ok=True)
        stage, scaler = self.stage, self.scaler
        process, outputs = locust(self.topology, load, shape, folder)
        self.stack.callback(_stop_locust, process)
        # Measured, never budgeted: the load generator's CPU per step (a step where it used
        # most of its core says more about Locust than about the shop, and is no knee).
        self.budgets.add(LOADGEN, process.pid)
        merged: list[dict[str, Any]] = []
        seen = 0
        while True:
            finished = process.poll() is not None
            lines = _lines(outputs["steps"])
            for line in lines[seen:]:
                time.sleep(1.2 if not finished else 0)  # the sample after the step's end
                groups = {
                    name: group.component for name, group in list(self.budgets.groups.items())
                }
                step = merge_step(
                    line,
                    cpu_samples=self.cpu.samples,
                    groups=groups,
                    metric_samples=self.sampler.metrics,
                    lag_samples=self.sampler.lag,
                    depth_samples=self.sampler.depth,
                    fulfilment_samples=self.sampler.fulfilment,
                    cache=stage.cache,
                    throttling_samples=self.cpu.throttling,
                    cdn=stage.cdn,
                )
                if scaler is not None:
                    # The fleet's size changed during the run: a slice's CPU is judged against
                    # the processes that ran during it, not against the largest fleet.
                    span = step["started_at"], step["ended_at"]
                    step["budgets"] = stage.budgets(
                        scaler.mean_count(*span),
                        self.workers.mean_count(*span) if self.workers else None,
                    )
                merged.append(step)
                count = scaler.count_at(step["ended_at"]) if scaler else stage.app_processes
                say(describe(step, step.get("budgets") or stage.budgets(count)))
            seen = len(lines)
            if finished:
                break
            time.sleep(0.5)
        return merged, _invariants(outputs["invariants"], process.returncode)


def _both(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The invariants of two passes as one: each check holds only if it held in both."""
    checks = dict(first.get("checks") or {})
    for name, check in (second.get("checks") or {}).items():
        if name in checks and checks[name].get("ok") and not check.get("ok"):
            checks[name] = check
        checks.setdefault(name, check)
    return {**first, "ok": bool(first.get("ok")) and bool(second.get("ok")), "checks": checks}


def run_stage(stage: Stage, load: Load, out: Path, *, enforce: bool = True) -> dict[str, Any]:
    """Build, warm up, measure and tear down one stage; write and return its result."""
    if not load.locustfile.is_file():
        raise FileNotFoundError(f"no Locust suite at {load.locustfile}")
    run_id = f"{stage.number}-{uuid.uuid4().hex[:8]}"
    folder = Path(f"/tmp/shop-ladder-{run_id}")
    folder.mkdir(parents=True)
    budgets = Budgets(run_id, enforce=enforce)
    with ExitStack() as stack:
        stack.callback(budgets.close)
        topology = Topology(folder=folder, stack=stack)
        how = ("enforced, " if budgets.enforced else "NOT enforced: ") + budgets.how
        say(f"stage {stage.number} ({stage.name}): building; budgets {stage.budgets()} ({how})")
        build(stage, topology, budgets, products=load.products)
        cpu = CpuSampler(budgets)
        sampler = Sampler(topology, cpu, cache=stage.cache)

        say(f"  warm-up {load.warmup_s:.0f} s against {topology.target} (discarded)")
        warm, _ = locust(topology, load, None, folder, seconds=load.warmup_s)
        stack.callback(_stop_locust, warm)
        warm.wait(load.warmup_s + 60)

        scaler = None
        if stage.max_app_processes:
            scaler = Autoscaler(topology, budgets, stage, cpu)
            sampler.hooks.append(scaler.check)
        thread = threading.Thread(target=sampler.run, daemon=True)
        children_before = os.times()
        budgets.group(LOADGEN, LOADGEN, 0)
        started = time.time()
        thread.start()
        # However the stage ends (a component that fails included), sampling stops before the
        # processes and groups it reads are taken down.
        stack.callback(thread.join, 10)
        stack.callback(sampler.stop.set)
        workers = None
        if stage.write_workers:
            # Off until the write-heavy ramp: the mix's figures keep the stack's minimum group.
            workers = WorkerScaler(
                topology, budgets, stage, backlog=sampler.last_backlog,
                ceiling=stage.write_workers, enabled=False,
            )  # fmt: skip
            sampler.hooks.append(workers.check)
        run = _Pass(stage, topology, budgets, cpu, sampler, scaler, stack, workers)
        # Every stage is a step ramp (stage 6's with the autoscaler on), so that every stage
        # has a knee and a fitted model.
        merged, invariants = run.measure(load, "step", folder)
        fine: list[list[dict[str, Any]]] = []
        at = analysis.knee(merged, p95_ms=load.p95_ms)
        if load.fine_passes and at is not None:
            users = int(merged[at]["users"])
            for number in range(1, load.fine_passes + 1):
                say(f"  fine pass {number}/{load.fine_passes} around {users} users")
                steps, checked = run.measure(load.fine(users), "step", folder / f"fine-{number}")
                fine.append(steps)
                invariants = _both(invariants, checked)
        popular: list[dict[str, Any]] = []
        if stage.probe == "popularity" and at is not None:
            # Stage 5's probe: the same users, held steady, under three popularities.
            users = int(merged[at]["users"])
            for kind in ("skew", "uniform", f"zipf:{shapes.ZIPF_EXPONENT:g}"):
                say(f"  popularity {kind}: {users} users for {load.probe_s:.0f} s")
                steady = replace(load.steady(users, load.probe_s), popularity=kind)
                name = kind.replace(":", "-")
                steps, checked = run.measure(steady, "step", folder / f"popularity-{name}")
                invariants = _both(invariants, checked)
                popular += [step | {"popularity": kind} for step in steps[:1]]
        # The fleet's largest during the mix (the write-heavy ramp may grow it further).
        peak_apps = max((n for _, n in scaler.instances), default=0) if scaler else 0
        writes: list[dict[str, Any]] = []
        if stage.probe == "write-heavy":
            if scaler is not None and stage.write_fleet:
                # The ramp asks where the write primaries saturate, so it runs on the stack's
                # largest fleet, held there: grown by the autoscaler during the ramp, the fleet
                # was the limit of its early steps (each order's app CPU queues behind a small
                # quota) and its knee measured how fast processes were added.
                scaler.ceiling = max(scaler.ceiling, stage.write_fleet)
                scaler.fix(scaler.ceiling)
            if workers is not None:
                workers.resume()
            say(
                "  write-heavy ramp: buyers who only place orders, on a fleet of "
                f"{scaler.ceiling if scaler else stage.app_processes} app processes; the "
                f"workers may grow to {workers.ceiling if workers else stage.worker_processes}"
            )
            writes, checked = run.measure(load.writes(), "step", folder / "writes")
            invariants = _both(invariants, checked)
        daily: list[dict[str, Any]] = []
        fixed: list[dict[str, Any]] = []
        peak_users = 0
        if stage.probe == "day" and scaler is not None and at is not None:
            # Stage 6's probe: a day whose peak the largest fleet carries, run autoscaled from
            # the minimum fleet, then again on the fixed fleet of stage 5 (the stack's
            # minimum): what the autoscaler saves, and what a fleet that does not follow the
            # curve costs in p95.
            peak_users = load.daily_peak_users or max(
                1, round(DAY_PEAK_OF_KNEE * int(merged[at]["users"]))
            )
            day = replace(load, daily_peak_users=peak_users)
            scaler.fix(stage.app_processes)
            scaler.resume()
            say(f"  a compressed day peaking at {peak_users} users, autoscaled")
            began = time.time()
            steps, checked = run.measure(day, "daily", folder / "day")
            invariants = _both(invariants, checked)
            daily = _day(steps, began, scaler.count_at)
            say(f"  the same day on a fixed fleet of {stage.app_processes} app processes")
            scaler.fix(stage.app_processes)
            again = time.time()
            steps, checked = run.measure(day, "daily", folder / "fixed")
            invariants = _both(invariants, checked)
            fixed = _day(steps, again, lambda _at: stage.app_processes)
        ended = time.time()
        sampler.stop.set()
        thread.join(10)
        children_after = os.times()  # Locust has been waited for: its CPU time is in here
        result = {
            "stage": stage.number,
            "name": stage.name,
            "source": "local",
            "budgets_enforced": budgets.enforced,
            "budgets": stage.budgets(peak_apps or None),
            "cpus_per_vcpu": stage.cpus_per_vcpu,
            "steps": merged,
            "fine": fine,
            "invariants": invariants,
            "steps_shape": "step",
            "daily": daily,
            "daily_fixed": fixed,
            "daily_peak_users": peak_users,
            "popularity": popular,
            "write_heavy": writes,
            "write_fleet": scaler.ceiling if writes and scaler else 0,
            "write_workers": max((n for _, n in workers.instances), default=0)
            if writes and workers
            else 0,
            "missing": None if merged else f"the suite wrote no step (see {folder})",
            "p95_objective_ms": load.p95_ms,
            "loadgen_cpu": _loadgen_cpu(children_before, children_after, ended - started),
            "provenance": provenance(),
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"stage-{stage.number}.json").write_text(json.dumps(result, indent=1))
    return result


def _day(
    steps: list[dict[str, Any]], started: float, count_at: Callable[[float], int]
) -> list[dict[str, Any]]:
    """A day's slices as the report draws them: time, users, app processes, throughput, p95."""
    return [
        {
            "t_s": round(step["ended_at"] - started, 1),
            "users": step["users"],
            "instances": count_at(step["ended_at"]),
            "rps": step["rps"],
            "p95_ms": step["p95_ms"],
            "seconds": round(step["ended_at"] - step["started_at"], 2),
        }
        for step in steps
    ]


def write_missing(stage: Stage, load: Load, out: Path, why: str) -> dict[str, Any]:
    """The result of a stage that could not run: its row stays in the report, with the reason."""
    result = {
        "stage": stage.number,
        "name": stage.name,
        "source": "local",
        "budgets_enforced": False,
        "budgets": stage.budgets(),
        "cpus_per_vcpu": stage.cpus_per_vcpu,
        "steps": [],
        "invariants": {"ok": False, "checks": {}},
        "daily": [],
        "missing": why,
        "p95_objective_ms": load.p95_ms,
        "loadgen_cpu": None,
        "provenance": provenance(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"stage-{stage.number}.json").write_text(json.dumps(result, indent=1))
    return result


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    found = []
    for text in path.read_text().splitlines():
        try:
            found.append(json.loads(text))
        except json.JSONDecodeError:
            break  # a line still being written
    return found


def _invariants(path: Path, returncode: int | None) -> dict[str, Any]:
    if path.is_file():
        try:
            found: dict[str, Any] = json.loads(path.read_text())
            return found
        except json.JSONDecodeError:
            pass
    return {
        "ok": False,
        "checks": {"suite": {"ok": False, "detail": f"no invariants written (exit {returncode})"}},
    }


def _loadgen_cpu(before: os.times_result, after: os.times_result, seconds: float) -> float | None:
    """Mean CPUs of the load generator: the CPU time of children reaped during the run."""
    if seconds <= 0:
        return None
    spent = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    return round(spent / seconds, 3)
