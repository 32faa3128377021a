"""CPU budgets with cgroups: one group per component (per process for app and worker), a quota
of `cpus` cores, and its CPU use read back every second.

cgroup v1 (a `cpu` hierarchy with cpu.cfs_quota_us, usage in the `cpuacct` hierarchy's
cpuacct.usage) and v2 (cpu.max, usage_usec in cpu.stat) are told apart at run time. Without a
writable controller (not root, a read-only /sys/fs/cgroup) the ladder runs without budgets and
says so: `Budgets.enforced` is False and CPU use is read from /proc per process tree instead.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 10_000
"""The quota's period. The kernel's default, 100 ms, lets a group burn its whole quota at once
and then freezes it for the rest of the period: a 0.1-CPU database would stall for 90 ms at a
time, and p95 would measure the stalls. 10 ms spreads the same budget evenly."""
MIN_QUOTA_US = 1_000
"""The kernel refuses a quota below 1 ms: a small budget gets a longer period instead."""


def quota_and_period(cpus: float) -> tuple[int, int]:
    """(quota, period) in microseconds for a budget of `cpus` cores."""
    period = max(PERIOD_US, -(-MIN_QUOTA_US * 1000 // round(cpus * 1000)))
    return max(MIN_QUOTA_US, round(cpus * period)), period


@dataclass(frozen=True)
class Controller:
    """Where groups are made: v1 needs a `cpu` folder (quota) and a `cpuacct` one (usage)."""

    version: int
    cpu: Path
    usage: Path

    def quota_file(self, group: Path) -> Path:
        return group / ("cpu.max" if self.version == 2 else "cpu.cfs_quota_us")


def detect(root: Path = ROOT) -> tuple[Controller | None, str]:
    """The writable CPU controller under `root`, or None and why there is none."""
    if (root / "cgroup.controllers").is_file():
        controllers = (root / "cgroup.controllers").read_text().split()
        if "cpu" not in controllers:
            return None, "cgroup v2 without the cpu controller"
        if not os.access(root / "cgroup.subtree_control", os.W_OK):
            return None, f"cgroup v2 at {root} is not writable (run as root)"
        return Controller(2, root, root), "cgroup v2 (cpu.max)"
    cpu = next((p for p in (root / "cpu", root / "cpu,cpuacct") if p.is_dir()), None)
    if cpu is None or not (cpu / "cpu.cfs_quota_us").is_file():
        return None, f"no cgroup cpu controller under {root}"
    usage = next(
        (
            p
            for p in (root / "cpuacct", root / "cpu,cpuacct", cpu)
            if (p / "cpuacct.usage").is_file()
        ),
        None,
    )
    if usage is None:
        return None, "cgroup v1 without cpuacct.usage"
    if not os.access(cpu, os.W_OK) or not os.access(usage, os.W_OK):
        return None, f"cgroup v1 at {cpu} is not writable (run as root)"
    return Controller(1, cpu, usage), "cgroup v1 (cpu.cfs_quota_us)"


@dataclass
class Group:
    """One budgeted group: `component` is the name in the results (app-0 counts as app)."""

    name: str
    component: str
    cpus: float
    folders: list[Path] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    """Without cgroups: the process trees whose CPU time is summed from /proc."""


class Budgets:
    """The groups of one ladder run, under a parent group named after the run; `close` moves
    what is left back to the root and removes them."""

    def __init__(self, run: str, *, root: Path = ROOT, enforce: bool = True) -> None:
        self.controller, self.how = detect(root) if enforce else (None, "budgets turned off")
        self.run = run
        self.groups: dict[str, Group] = {}
        self._parents: list[Path] = []
        if self.controller is not None:
            try:
                self._parents = self._make_parents()
            except OSError as exc:
                self.controller, self.how = None, f"cannot make a cgroup: {exc}"

    @property
    def enforced(self) -> bool:
        return self.controller is not None

    def _make_parents(self) -> list[Path]:
        assert self.controller is not None
        parents = [self.controller.cpu / f"shop-ladder-{self.run}"]
        if self.controller.usage != self.controller.cpu:
            parents.append(self.controller.usage / f"shop-ladder-{self.run}")
        for parent in parents:
            parent.mkdir(exist_ok=True)
        if self.controller.version == 2:
            (parents[0] / "cgroup.subtree_control").write_text("+cpu")
        return parents

    def group(self, name: str, component: str, cpus: float) -> Group:
        """A group of `cpus` cores (made once per name); 0: measured only, no quota."""
        if name in self.groups:
            return self.groups[name]
        made = Group(name=name, component=component, cpus=cpus)
        if self.controller is not None:
            for parent in self._parents:
                folder = parent / name
                folder.mkdir(exist_ok=True)
                made.folders.append(folder)
            quota, period = quota_and_period(cpus) if cpus > 0 else (-1, PERIOD_US)
            if self.controller.version == 2:
                limit = "max" if quota < 0 else str(quota)
                (made.folders[0] / "cpu.max").write_text(f"{limit} {period}")
            else:
                # Period first: the quota must stay valid against the period in force.
                (made.folders[0] / "cpu.cfs_period_us").write_text(str(period))
                (made.folders[0] / "cpu.cfs_quota_us").write_text(str(quota))
        self.groups[name] = made
        return made

    def add(self, name: str, pid: int) -> None:
        """Put process `pid` and all its descendants into group `name`."""
        group = self.groups[name]
        group.pids.add(pid)
        for member in [pid, *descendants(pid)]:
            for folder in group.folders:
                with contextlib.suppress(OSError):  # gone in the meantime
                    (folder / "cgroup.procs").write_text(str(member))

    def usage_s(self) -> dict[str, float]:
        """CPU seconds used so far, per group."""
        found: dict[str, float] = {}
        for name, group in list(self.groups.items()):
            if self.controller is None:
                found[name] = sum(process_cpu_s(p) for p in _trees(group.pids))
            elif self.controller.version == 2:
                found[name] = read_v2_usage(group.folders[0] / "cpu.stat")
            else:
                found[name] = int((group.folders[-1] / "cpuacct.usage").read_text()) / 1e9
        return found

    def throttling(self) -> dict[str, Throttling]:
        """How often each group's quota stopped it so far (cumulative): the saturation a CPU
        average hides. Empty without a controller (nothing is throttled then)."""
        if self.controller is None:
            return {}
        # A snapshot of the groups: an autoscaler's thread may add one meanwhile.
        return {
            name: read_throttling(group.folders[0] / "cpu.stat")
            for name, group in list(self.groups.items())
            if group.cpus > 0 and group.folders
        }

    def close(self) -> None:
        """Move stragglers back to the root groups, then remove every group folder."""
        if self.controller is None:
            return
        roots = [self.controller.cpu, self.controller.usage]
        for group in self.groups.values():
            for folder, root in zip(group.folders, roots, strict=False):
                for pid in _members(folder):
                    with contextlib.suppress(OSError):
                        (root / "cgroup.procs").write_text(str(pid))
                _remove(folder)
        for parent in self._parents:
            _remove(parent)


def _remove(folder: Path) -> None:
    for _ in range(50):
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def _members(folder: Path) -> list[int]:
    try:
        return [int(line) for line in (folder / "cgroup.procs").read_text().split()]
    except OSError:
        return []


@dataclass(frozen=True)
class Throttling:
    """A group's cpu.stat counters: quota periods it ran in, periods in which it used its whole
    quota and was stopped until the next one, and the time its threads spent stopped."""

    periods: int
    throttled: int
    throttled_s: float


def read_throttling(stat: Path) -> Throttling:
    """The counters of a cpu.stat, v1 (throttled_time, ns) or v2 (throttled_usec)."""
    values: dict[str, int] = {}
    try:
        for line in stat.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                values[key] = int(value)
    except OSError:
        pass
    if "throttled_usec" in values:
        seconds = values["throttled_usec"] / 1e6
    else:
        seconds = values.get("throttled_time", 0) / 1e9
    return Throttling(values.get("nr_periods", 0), values.get("nr_throttled", 0), seconds)


def throttling_per_component(
    samples: list[tuple[float, dict[str, Throttling]]],
    components: dict[str, str],
    started_at: float,
    ended_at: float,
) -> dict[str, dict[str, float]]:
    """Per component between `started_at` and `ended_at`: the share of its quota periods in
    which it was stopped (`throttled`), and its threads' stopped time per second (`stalled_s`,
    summed over its groups), from the samples nearest the two ends."""
    inside = [s for s in samples if started_at - 0.75 <= s[0] <= ended_at + 0.75]
    if len(inside) < 2:
        return {}
    (t0, first), (t1, last) = inside[0], inside[-1]
    if t1 <= t0:
        return {}
    sums: dict[str, list[float]] = {}
    for group, now in last.items():
        before = first.get(group, Throttling(0, 0, 0.0))
        component = sums.setdefault(components.get(group, group), [0.0, 0.0, 0.0])
        component[0] += max(0, now.periods - before.periods)
        component[1] += max(0, now.throttled - before.throttled)
        component[2] += max(0.0, now.throttled_s - before.throttled_s)
    return {
        name: {
            "throttled": round(throttled / periods, 4) if periods else 0.0,
            "stalled_s": round(stalled / (t1 - t0), 4),
        }
        for name, (periods, throttled, stalled) in sums.items()
    }


def read_v2_usage(stat: Path) -> float:
    """usage_usec of a v2 cpu.stat, in seconds."""
    for line in stat.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    return 0.0


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _trees(pids: Iterable[int]) -> set[int]:
    return {member for pid in pids for member in (pid, *descendants(pid))}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclass
class CpuSampler:
    """CPU seconds per group, sampled every `interval_s` with a timestamp (unix seconds)."""

    budgets: Budgets
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    throttling: list[tuple[float, dict[str, Throttling]]] = field(default_factory=list)

    def sample(self) -> None:
        now = time.time()
        self.samples.append((now, self.budgets.usage_s()))
        self.throttling.append((now, self.budgets.throttling()))


def cpu_per_component(
    samples: list[tuple[float, dict[str, float]]],
    components: dict[str, str],
    started_at: float,
    ended_at: float,
) -> dict[str, float]:
    """CPUs used per component between `started_at` and `ended_at`, averaged: the difference
    of the cumulative CPU seconds at the samples nearest the two ends over the time between
    them. `components` maps a group name to its component (app-0 and app-1 sum into app).
    A group that appears only later (a process the autoscaler added) counts from zero."""
    inside = [s for s in samples if started_at - 0.75 <= s[0] <= ended_at + 0.75]
    if len(inside) < 2:
        return {}
    (t0, first), (t1, last) = inside[0], inside[-1]
    if t1 <= t0:
        return {}
    used: dict[str, float] = {}
    for group, seconds in last.items():
        component = components.get(group, group)
        spent = max(0.0, seconds - first.get(group, 0.0))
        used[component] = used.get(component, 0.0) + spent / (t1 - t0)
    return {name: round(cpus, 4) for name, cpus in used.items()}
