"""The ladder's data and arithmetic, on recorded figures: budgets, stage choice, cgroup
detection, and the merge of CPU samples and /metrics scrapes into the suite's steps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from loadtests.ladder import sizes
from loadtests.ladder.cgroups import (
    Budgets,
    Throttling,
    cpu_per_component,
    detect,
    quota_and_period,
    read_throttling,
    throttling_per_component,
)
from loadtests.ladder.signals import merge_step, metric_deltas, parse_metrics
from loadtests.ladder.stages import COMPONENTS, STAGES, parse_stages

STAGES_MD = ["single-box", "separate-db", "horizontal", "read-replicas", "cache-cdn",
             "auto-scaling", "service-oriented", "federated"]  # fmt: skip


def test_every_stage_of_stages_md_is_declared_in_order() -> None:
    assert [stage.name for stage in STAGES.values()] == STAGES_MD
    assert list(STAGES) == list(range(1, 9))


@pytest.mark.parametrize(
    "stage",
    [s for s in STAGES.values() if s.number not in sizes.SCALED_AS],
    ids=lambda s: s.name,
)
def test_a_stage_leaves_the_load_generator_most_of_a_core(stage) -> None:  # type: ignore[no-untyped-def]
    assert 0 < stage.total_cpus() <= sizes.MACHINE_CPUS + 0.001 < 1.5
    assert set(stage.budgets()) <= set(COMPONENTS)


def test_stage_8_is_stage_7_plus_databases_at_the_same_budget_per_primary() -> None:
    seven, eight = STAGES[7], STAGES[8]
    assert eight.cpus_per_vcpu == seven.cpus_per_vcpu
    assert eight.shards == 2 and eight.shard_cpus == seven.postgres_cpus
    assert eight.federated_cpus == seven.postgres_cpus
    extra = {"shard", "federated"}
    assert set(eight.budgets()) == set(seven.budgets()) | extra
    assert {k: v for k, v in eight.budgets().items() if k not in extra} == seven.budgets()
    assert eight.max_app_processes == seven.max_app_processes
    assert set(eight.budgets()) <= set(COMPONENTS)
    # The write-heavy ramps of both may grow the fleet to the stack's largest.
    assert eight.write_fleet == seven.write_fleet == sizes.load()[7]["web"]["max"]
    # ... and the workers to the stack's largest group, on the stack's backlog per worker.
    group = sizes.load()[7]["workers"]
    assert eight.write_workers == seven.write_workers == group["max"] == 4
    assert eight.worker_backlog == seven.worker_backlog == group["backlog_per_instance"]


def test_each_stage_adds_what_stages_md_says() -> None:
    assert set(STAGES[1].budgets()) == {"box"}
    assert set(STAGES[2].budgets()) == {"app", "postgres"}
    assert set(STAGES[3].budgets()) == {"app", "postgres", "nginx"}
    assert set(STAGES[4].budgets()) == {"app", "postgres", "replica", "nginx"}
    assert set(STAGES[5].budgets()) >= {"redis", "cdn", "replica"} and STAGES[5].aws
    assert STAGES[6].max_app_processes > STAGES[6].app_processes
    assert "worker" in STAGES[7].budgets()


def test_stage_three_doubles_the_app_of_stage_two_against_the_same_database() -> None:
    """Each stage has its own scale factor, so budgets compare across stages as proportions:
    two web instances against one database of the same size, as the stacks deploy them."""
    two, three = STAGES[2].budgets(), STAGES[3].budgets()
    assert three["app"] / three["postgres"] == pytest.approx(2 * two["app"] / two["postgres"])
    assert STAGES[3].app_processes == 2 * STAGES[2].app_processes


def test_the_app_budget_follows_the_autoscaler() -> None:
    assert STAGES[6].budgets(3)["app"] == pytest.approx(3 * STAGES[6].app_cpus)


def test_stages_are_chosen_by_number_list_or_range() -> None:
    assert [s.number for s in parse_stages("3,4")] == [3, 4]
    assert [s.number for s in parse_stages("2-4")] == [2, 3, 4]
    assert [s.number for s in parse_stages("")] == list(range(1, 9))
    with pytest.raises(ValueError, match="no stage 9"):
        parse_stages("9")
    with pytest.raises(ValueError, match="not a stage number"):
        parse_stages("three")


def test_cgroup_v1_is_found_with_its_usage_hierarchy(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpuacct").mkdir()
    (tmp_path / "cpuacct" / "cpuacct.usage").write_text("0\n")
    controller, how = detect(tmp_path)
    assert controller is not None and controller.version == 1, how
    assert controller.usage == tmp_path / "cpuacct"


def test_cgroup_v2_is_found_by_cpu_max(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    controller, _ = detect(tmp_path)
    assert controller is not None and controller.version == 2


def test_without_a_cpu_controller_the_ladder_runs_unbudgeted_and_says_why(tmp_path: Path) -> None:
    controller, how = detect(tmp_path)
    assert controller is None and "no cgroup cpu controller" in how
    budgets = Budgets("test", root=tmp_path)
    assert not budgets.enforced
    budgets.group("app-0", "app", 0.25)
    assert budgets.usage_s() == {"app-0": 0}


def test_a_v1_group_gets_its_quota_and_period(tmp_path: Path) -> None:
    for hierarchy, marker in (("cpu", "cpu.cfs_quota_us"), ("cpuacct", "cpuacct.usage")):
        (tmp_path / hierarchy).mkdir()
        (tmp_path / hierarchy / marker).write_text("0\n")
    budgets = Budgets("t1", root=tmp_path)
    assert budgets.enforced
    group = budgets.group("postgres", "postgres", 0.12)
    assert (group.folders[0] / "cpu.cfs_quota_us").read_text() == "1200"
    assert (group.folders[0] / "cpu.cfs_period_us").read_text() == "10000"
    (group.folders[1] / "cpuacct.usage").write_text("1500000000\n")
    assert budgets.usage_s() == {"postgres": 1.5}


def test_a_measured_only_group_has_no_quota(tmp_path: Path) -> None:
    for hierarchy, marker in (("cpu", "cpu.cfs_quota_us"), ("cpuacct", "cpuacct.usage")):
        (tmp_path / hierarchy).mkdir()
        (tmp_path / hierarchy / marker).write_text("0\n")
    group = Budgets("t2", root=tmp_path).group("moto", "moto", 0)
    assert (group.folders[0] / "cpu.cfs_quota_us").read_text() == "-1"


def test_a_small_budget_gets_a_longer_period_not_a_larger_quota() -> None:
    assert quota_and_period(0.25) == (2500, 10_000)
    assert quota_and_period(0.03) == (1000, 33_334)
    quota, period = quota_and_period(0.05)
    assert quota / period == pytest.approx(0.05) and quota >= 1000


# Cumulative CPU seconds per group, one sample a second (recorded from a stage-3 run).
SAMPLES = [
    (100.0, {"app-0": 10.0, "app-1": 12.0, "postgres": 3.0}),
    (101.0, {"app-0": 10.25, "app-1": 12.24, "postgres": 3.1}),
    (102.0, {"app-0": 10.5, "app-1": 12.49, "postgres": 3.2}),
    (103.0, {"app-0": 10.75, "app-1": 12.74, "postgres": 3.3, "app-2": 0.1}),
    (104.0, {"app-0": 11.0, "app-1": 12.99, "postgres": 3.41, "app-2": 0.3}),
]
GROUPS = {"app-0": "app", "app-1": "app", "app-2": "app", "postgres": "postgres"}


def test_cpu_of_a_step_sums_the_processes_of_a_component() -> None:
    cpu = cpu_per_component(SAMPLES[:3], GROUPS, 100.0, 102.0)
    assert cpu == {"app": pytest.approx(0.495), "postgres": pytest.approx(0.1)}


def test_a_process_added_during_a_step_counts_from_zero() -> None:
    cpu = cpu_per_component(SAMPLES, GROUPS, 100.0, 104.0)
    assert cpu["app"] == pytest.approx((1.0 + 0.99 + 0.3) / 4)


def test_a_step_without_two_samples_has_no_cpu_figure() -> None:
    assert cpu_per_component(SAMPLES, GROUPS, 200.0, 210.0) == {}


METRICS_TEXT = """\
# HELP shop_request_duration_seconds Time to answer a request
shop_request_duration_seconds_count{method="GET",route="/products/{product_id}",status="200"} 90.0
shop_request_duration_seconds_sum{method="GET",route="/products/{product_id}",status="200"} 4.5
shop_request_duration_seconds_count{method="POST",route="/orders",status="201"} 10.0
shop_request_duration_seconds_sum{method="POST",route="/orders",status="201"} 1.5
shop_request_duration_seconds_count{method="POST",route="/orders",status="409"} 4.0
shop_request_duration_seconds_sum{method="POST",route="/orders",status="409"} 0.4
shop_request_duration_seconds_count{method="GET",route="/metrics",status="200"} 6.0
shop_request_duration_seconds_sum{method="GET",route="/metrics",status="200"} 0.1
shop_request_db_seconds_sum{route="/products/{product_id}"} 2.0
shop_request_db_seconds_sum{route="/orders"} 1.0
shop_db_pool_wait_seconds_total{pool="primary"} 0.25
shop_cache_requests_total{result="hit"} 60.0
shop_cache_requests_total{result="miss"} 20.0
shop_cache_requests_created{result="hit"} 1.7e9
shop_db_reads_total{target="primary"} 20.0
shop_db_reads_total{target="replica-1"} 50.0
shop_db_reads_total{target="replica-2"} 30.0
shop_db_replica_skips_total{reason="behind"} 4.0
shop_db_replica_skips_total{reason="busy"} 1.0
"""


def test_metrics_are_summed_over_routes_and_labels() -> None:
    figures = parse_metrics(METRICS_TEXT)
    assert figures == {
        "request_s": 6.5,
        "requests": 110.0,
        "scrapes": 6.0,  # the ladder's own reads of /metrics
        "orders_placed": 10.0,  # POST /orders answered 201 (not the 409s)
        "db_s": 3.0,
        "pool_wait_s": 0.25,
        "cache_hit": 60.0,
        "cache_miss": 20.0,
        "reads_primary": 20.0,
        "reads_replica": 80.0,  # replica-1 and replica-2
        "replica_skips": 5.0,
    }


def test_signals_of_a_step_come_from_counter_increases() -> None:
    zero = dict.fromkeys(parse_metrics(METRICS_TEXT), 0.0)
    after = parse_metrics(METRICS_TEXT)
    metric_samples = [(100.0, {"8001": zero}), (110.0, {"8001": after})]
    assert metric_deltas(metric_samples, 100.0, 110.0) == after
    step = {"step": 0, "users": 10, "started_at": 100.0, "ended_at": 110.0, "rps": 10.0,
            "requests": 416}  # fmt: skip
    merged = merge_step(
        step,
        cpu_samples=[(100.0, {"app-0": 1.0}), (110.0, {"app-0": 3.5})],
        groups={"app-0": "app"},
        metric_samples=metric_samples,
        lag_samples=[(101.0, 0.002), (105.0, 0.004)],
        depth_samples=None,
        fulfilment_samples=[(102.0, 1.5), (108.0, 2.5), (130.0, 60.0)],
        cache=True,
        cdn=True,
    )
    assert merged["cpu"] == {"app": 0.25}
    assert merged["signals"] == {
        "db_share": 0.4615,  # 3 of 6.5 request seconds
        "pool_wait_ms": 2.273,  # 0.25 s over 110 requests
        "cache_hit_ratio": 0.75,
        "replica_lag_s": 0.003,
        "replica_read_share": 0.8,
        "replica_skipped_share": 0.05,  # of the 100 reads, 5 passed the replicas over
        "queue_depth": None,
        "fulfilment_lag_s": 2.0,  # the mean within the step; the later sample is not its own
        # The suite sent 416 requests through the CDN; the app answered 104 of them (110 less
        # the 6 scrapes of /metrics): the CDN kept 75 % from it.
        "cdn_offload": 0.75,
        "orders_per_s": 1.0,  # 10 orders placed in the 10-s step
    }
    assert merged["step"] == 0 and merged["rps"] == 10.0


def test_a_stage_without_a_cache_reports_no_hit_ratio() -> None:
    after = parse_metrics(METRICS_TEXT)
    zero = dict.fromkeys(after, 0.0)
    merged = merge_step(
        {"started_at": 0.0, "ended_at": 10.0},
        cpu_samples=[],
        groups={},
        metric_samples=[(0.0, {"a": zero}), (10.0, {"a": after})],
        lag_samples=None,
        depth_samples=None,
        cache=False,
    )
    assert merged["signals"]["cache_hit_ratio"] is None
    assert merged["cpu"] == {}


class _Topology:
    """What the autoscaler touches of a topology: its app processes and the balancer."""

    def __init__(self, apps: int) -> None:
        self.apps = [_App(f"app-{n}") for n in range(apps)]
        self.reloads = 0

    def start_app(self, index: int, group: str) -> _App:
        app = _App(f"app-{index}")
        self.apps.append(app)
        return app

    def reload_balancer(self) -> None:
        self.reloads += 1


class _App:
    def __init__(self, name: str) -> None:
        self.name = name
        self.pid = 0
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


SCALED = replace(STAGES[6], app_processes=1, max_app_processes=3, app_cpus=0.2)
"""A fleet of 1 to 3 processes of 0.2 CPU: the autoscaler's rules, apart from any stage's sizes."""


def _scaler(apps: int, used_per_app: float, tmp_path: Path):  # type: ignore[no-untyped-def]
    import time

    from loadtests.ladder.cgroups import CpuSampler
    from loadtests.ladder.runner import Autoscaler

    budgets = Budgets("t", root=tmp_path)  # no controller: groups without quotas
    for n in range(apps):
        budgets.group(f"app-{n}", "app", SCALED.app_cpus)
    sampler = CpuSampler(budgets)
    now = time.time()
    sampler.samples = [
        (now - 5, {f"app-{n}": 0.0 for n in range(apps)}),
        (now, {f"app-{n}": 5 * used_per_app for n in range(apps)}),
    ]
    topology = _Topology(apps)
    scaler = Autoscaler(topology, budgets, SCALED, sampler, cooldown_s=0)  # type: ignore[arg-type]
    return scaler, topology


def test_the_autoscaler_adds_a_process_above_its_target(tmp_path: Path) -> None:

    scaler, topology = _scaler(1, 0.19, tmp_path)  # 95 % of a 0.2 budget
    scaler.check()
    assert scaler._grower is not None
    scaler._grower.join(5)
    assert [a.name for a in topology.apps] == ["app-0", "app-1"]
    assert topology.reloads == 1 and scaler.instances[-1][1] == 2


def test_the_autoscaler_removes_a_process_when_idle_but_keeps_the_minimum(
    tmp_path: Path,
) -> None:
    scaler, topology = _scaler(2, 0.02, tmp_path)
    scaler.check()
    assert len(topology.apps) == 1 and topology.reloads == 1
    scaler, topology = _scaler(1, 0.0, tmp_path)
    scaler.check()
    assert len(topology.apps) == 1 and topology.reloads == 0


def test_the_autoscaler_keeps_a_fleet_that_would_be_over_target_with_one_less(
    tmp_path: Path,
) -> None:
    scaler, topology = _scaler(2, 0.08, tmp_path)  # 40 %: one process alone would be at 80 %
    assert scaler.desired(0.4, 2) == 2
    scaler.check()
    assert len(topology.apps) == 2 and topology.reloads == 0
    assert scaler.desired(0.95, 1) == 2 and scaler.desired(1.0, 3) == 3


def test_a_resumed_autoscaler_waits_out_the_cpu_of_the_fleet_before(tmp_path: Path) -> None:
    # Stage 6's day starts from the minimum fleet: the CPU the larger fleet used just before
    # must not read as a busy small fleet and add a process at once.
    scaler, topology = _scaler(1, 0.19, tmp_path)
    scaler.cooldown_s = 8
    scaler.enabled = False
    scaler.resume()
    scaler.check()
    assert len(topology.apps) == 1 and scaler.enabled


def test_a_fixed_fleet_is_grown_or_shrunk_to_its_size_and_stops_scaling(tmp_path: Path) -> None:
    # The write-heavy ramp holds the stack's largest fleet: started one process at a time,
    # each under its own budget, and kept whatever the CPU says.
    scaler, topology = _scaler(1, 0.0, tmp_path)
    scaler.fix(3)
    assert [a.name for a in topology.apps] == ["app-0", "app-1", "app-2"]
    assert [n for _, n in scaler.instances] == [1, 2, 3] and not scaler.enabled
    assert scaler.budgets.groups["app-2"].cpus == SCALED.app_cpus
    scaler.check()  # idle, but held
    assert len(topology.apps) == 3


class _SlowStart(_Topology):
    """A topology whose next process starts only when the test lets it."""

    def __init__(self, apps: int) -> None:
        super().__init__(apps)
        import threading

        self.go = threading.Event()
        self.starting = threading.Event()

    def start_app(self, index: int, group: str) -> _App:
        self.starting.set()
        assert self.go.wait(5)
        return super().start_app(index, group)


def test_fixing_the_fleet_while_a_process_starts_waits_for_it_and_reuses_no_name(
    tmp_path: Path,
) -> None:
    # The ladder's stage-8 smoke: the autoscaler was starting a process when the write-heavy
    # ramp fixed the fleet; the fix started another under the same name (log, budget group)
    # while the first was not yet a member. Every process gets a name of its own, and the fix
    # counts the one starting.
    import threading

    scaler, _ = _scaler(1, 0.19, tmp_path)
    topology = _SlowStart(1)
    scaler.topology = topology  # type: ignore[assignment]
    scaler.check()
    assert topology.starting.wait(5)
    assert scaler._next() == 2  # app-1 is starting: not a member, but its name is taken
    fixing = threading.Thread(target=scaler.fix, args=(3,))
    fixing.start()
    fixing.join(0.3)
    assert fixing.is_alive()  # the fix waits for the process being started
    topology.go.set()
    fixing.join(5)
    names = [a.name for a in topology.apps]
    assert len(names) == 3 and len(set(names)) == 3 and names[:2] == ["app-0", "app-1"]


def test_the_fleet_size_of_a_slice_is_its_mean_over_the_slice(tmp_path: Path) -> None:
    scaler, _ = _scaler(1, 0.0, tmp_path)
    scaler.instances = [(100.0, 1), (110.0, 2), (130.0, 3)]
    assert scaler.mean_count(100, 110) == 1
    assert scaler.mean_count(105, 115) == pytest.approx(1.5)
    assert scaler.mean_count(100, 140) == pytest.approx((10 * 1 + 20 * 2 + 10 * 3) / 40)
    assert scaler.mean_count(135, 145) == 3  # past the last change


class _Workers(_Topology):
    """A topology whose workers start and stop without processes."""

    def __init__(self, workers: int) -> None:
        super().__init__(0)
        self.workers = [_App(f"worker-{n}") for n in range(workers)]

    def start_worker(self, index: int, group: str) -> _App:
        worker = _App(f"worker-{index}")
        self.workers.append(worker)
        return worker


WORKERS = replace(STAGES[7], worker_processes=1, write_workers=4, worker_backlog=100)


def _workers(count: int, backlog: float | None, tmp_path: Path):  # type: ignore[no-untyped-def]
    from loadtests.ladder.runner import WorkerScaler

    topology = _Workers(count)
    scaler = WorkerScaler(
        topology,  # type: ignore[arg-type]
        Budgets("t", root=tmp_path),
        WORKERS,
        backlog=lambda: backlog,
        ceiling=WORKERS.write_workers,
        cooldown_s=0,
    )
    return scaler, topology


def _settle(scaler) -> None:  # type: ignore[no-untyped-def]
    if scaler._grower is not None:
        scaler._grower.join(5)


def test_the_worker_group_grows_one_worker_at_a_time_on_the_backlog_per_worker(
    tmp_path: Path,
) -> None:
    # 1,394 messages behind one worker (a stage-7 ramp's backlog): the stack's policy asks for
    # 14 workers at 100 each, which its group caps at 4; each change adds one worker, under a
    # budget of its own.
    scaler, topology = _workers(1, 1394.0, tmp_path)
    assert scaler.desired(1394.0) == 4 and scaler.desired(150.0) == 2
    for expected in (2, 3, 4, 4):
        scaler.check()
        _settle(scaler)
        assert len(topology.workers) == expected
    assert [n for _, n in scaler.instances] == [1, 2, 3, 4]
    assert scaler.budgets.groups["worker-3"].cpus == WORKERS.worker_cpus


def test_the_worker_group_shrinks_to_its_minimum_and_waits_for_a_sample(tmp_path: Path) -> None:
    import time

    scaler, topology = _workers(3, 20.0, tmp_path)
    started = list(topology.workers)
    for _ in range(3):
        scaler.check()
    deadline = time.time() + 5
    while not started[1].stopped and time.time() < deadline:  # stopped on a thread
        time.sleep(0.01)
    assert len(topology.workers) == 1 and [w.stopped for w in started] == [False, True, True]
    scaler, topology = _workers(1, None, tmp_path)  # no backlog sampled yet: no change
    scaler.check()
    assert len(topology.workers) == 1 and scaler.instances == scaler.instances[:1]


def test_a_disabled_worker_group_stays_as_it_is(tmp_path: Path) -> None:
    scaler, topology = _workers(1, 1000.0, tmp_path)
    scaler.enabled = False
    scaler.check()
    assert len(topology.workers) == 1


def test_the_budgets_of_a_slice_count_the_workers_that_ran_during_it() -> None:
    stage = WORKERS
    assert stage.budgets()["worker"] == stage.worker_cpus
    assert stage.budgets(workers=2.5)["worker"] == round(2.5 * stage.worker_cpus, 3)


def test_a_stage_that_could_not_run_keeps_its_row_with_the_reason(tmp_path: Path) -> None:
    from loadtests import report
    from loadtests.ladder.runner import Load, write_missing

    write_missing(STAGES[4], Load(), tmp_path, "could not run here: nginx is not installed")
    (result,) = report.load_results(tmp_path)
    assert result["stage"] == 4 and result["steps"] == []
    assert result["missing"] == "could not run here: nginx is not installed"
    assert result["budgets"] == STAGES[4].budgets()


def test_throttling_is_read_from_cpu_stat_in_both_cgroup_versions(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "v1.stat", tmp_path / "v2.stat"
    v1.write_text("nr_periods 200\nnr_throttled 50\nthrottled_time 1500000000\n")
    v2.write_text("usage_usec 9\nnr_periods 10\nnr_throttled 4\nthrottled_usec 250000\n")
    assert read_throttling(v1) == Throttling(200, 50, 1.5)
    assert read_throttling(v2) == Throttling(10, 4, 0.25)
    assert read_throttling(tmp_path / "gone") == Throttling(0, 0, 0.0)


def test_a_step_says_how_often_each_component_hit_its_quota(tmp_path: Path) -> None:
    """Two app processes, one stopped in half its periods and one never: the app component was
    stopped in a quarter of its periods, 0.3 s a second; a group that appears later counts
    from zero."""
    samples = [
        (100.0, {"app-0": Throttling(100, 10, 1.0), "app-1": Throttling(100, 0, 0.0)}),
        (
            110.0,
            {
                "app-0": Throttling(200, 60, 4.0),
                "app-1": Throttling(200, 0, 0.0),
                "postgres": Throttling(50, 5, 0.5),
            },
        ),
    ]
    groups = {"app-0": "app", "app-1": "app", "postgres": "postgres"}
    found = throttling_per_component(samples, groups, 100.0, 110.0)
    assert found["app"] == {"throttled": 0.25, "stalled_s": 0.3}
    assert found["postgres"] == {"throttled": 0.1, "stalled_s": 0.05}


def test_a_budgets_throttling_reads_each_quota_group(tmp_path: Path) -> None:
    for hierarchy, marker in (("cpu", "cpu.cfs_quota_us"), ("cpuacct", "cpuacct.usage")):
        (tmp_path / hierarchy).mkdir()
        (tmp_path / hierarchy / marker).write_text("0\n")
    budgets = Budgets("t3", root=tmp_path)
    group = budgets.group("postgres", "postgres", 0.14)
    budgets.group("moto", "moto", 0)  # measured only: no quota, never throttled
    (group.folders[0] / "cpu.stat").write_text("nr_periods 8\nnr_throttled 2\nthrottled_time 0\n")
    assert budgets.throttling() == {"postgres": Throttling(8, 2, 0.0)}


def test_a_workers_fulfilment_lag_is_read_from_its_metrics_port() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from loadtests.ladder.runner import _last_event_age

    bodies = iter(
        [
            "# TYPE shop_worker_last_event_age_seconds gauge\n"
            "shop_worker_last_event_age_seconds 1.25\nshop_worker_batches_total 3.0\n",
            "shop_worker_last_event_age_seconds 0.0\n",  # no order finished yet
        ]
    )

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = next(bodies).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert _last_event_age(port) == 1.25
        assert _last_event_age(port) is None
    finally:
        server.shutdown()
        server.server_close()
    assert _last_event_age(port) is None  # nothing listens any more


def test_cpu_and_the_scaling_policies_are_sampled_every_second_while_a_scrape_hangs(
    tmp_path: Path,
) -> None:
    """On a saturated machine one round of /metrics scrapes can take seconds; the CPU of the
    steps past a knee (which name the bottleneck) and the autoscalers must not wait for it."""
    import socket
    import threading
    import time
    from types import SimpleNamespace

    from loadtests.ladder.cgroups import CpuSampler
    from loadtests.ladder.runner import Sampler

    with socket.socket() as silent:  # accepts, never answers: each scrape waits its timeout
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        app = SimpleNamespace(port=silent.getsockname()[1])
        topology = SimpleNamespace(apps=[app], workers=[], replica=None, queue_url=None)
        budgets = Budgets("t", root=tmp_path)
        budgets.group("app-0", "app", 0.2)
        sampler = Sampler(topology, CpuSampler(budgets), cache=False)  # type: ignore[arg-type]
        checks: list[float] = []
        sampler.hooks.append(lambda: checks.append(time.time()))
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        time.sleep(4.5)
        sampler.stop.set()
        thread.join(10)
    assert len(sampler.metrics) <= 3  # the scrapes: about one round per 2-s timeout
    assert len(sampler.cpu.samples) >= 4 and len(checks) >= 4


def test_a_process_that_stalls_before_listening_fails_with_where_it_stood(tmp_path: Path) -> None:
    # A shop process that neither answers nor exits: the error carries its threads' stacks
    # (SIGABRT with PYTHONFAULTHANDLER), not an empty log.
    import os
    import subprocess
    import sys

    from loadtests.ladder.components import ComponentFailed, free_port, wait_http

    log = tmp_path / "stalled.log"
    code = "import time\ndef stuck_in_start_up():\n    time.sleep(60)\nstuck_in_start_up()\n"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONFAULTHANDLER": "1"},
        )
    try:
        with pytest.raises(ComponentFailed) as failed:
            wait_http(f"http://127.0.0.1:{free_port()}/readyz", process, log, timeout=1)
        assert "did not answer in 1 s" in str(failed.value)
        assert "stuck_in_start_up" in str(failed.value)
        assert process.poll() is not None
    finally:
        process.kill()
        process.wait()


def test_the_replica_lag_probe_keeps_one_connection_to_the_primary() -> None:
    # The probe runs every second against the primary whose CPU the ladder measures: a new
    # connection each time (a backend forked and authenticated) would be charged to it.
    from types import SimpleNamespace

    from loadtests.ladder.runner import Sampler
    from tests.pg_cluster import private_cluster, why_unavailable

    if why_unavailable():
        pytest.skip(why_unavailable())
    with private_cluster() as primary:
        topology = SimpleNamespace(
            primary=primary, replica=object(), workers=[], queue_url=None, apps=[]
        )
        sampler = Sampler(topology, cpu=None, cache=False)  # type: ignore[arg-type]
        backends = set()
        for _ in range(3):
            sampler.once()
            assert sampler._probe is not None
            backends.add(sampler._probe.info.backend_pid)
        assert sampler.lag is not None and [lag for _, lag in sampler.lag] == [0.0, 0.0, 0.0]
        assert len(backends) == 1
        sampler._close_probe()
        assert sampler._probe is None
