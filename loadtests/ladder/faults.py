"""Faults under load (`python -m loadtests.ladder --faults`, `make faults`): a stage's topology
built as the ladder builds it, a steady Locust load at about 70 % of the stage's knee, and one
fault at a time injected and restored, as AWS Fault Injection Service's instance-termination and
RDS-reboot actions or Netflix's Chaos Monkey do to a fleet. For each fault: requests by status
and error kind before, during and after it, p95 in 5-s slices, the seconds until the objective
holds again, the suite's invariants, and a check against the database that every order the suite
saw acknowledged (a 201) exists exactly once, one per Idempotency-Key (Jepsen's "acknowledged
writes survive", applied to orders). Writes ladder-results/faults/stage-<n>.json; the report is
loadtests/faults_report.py.

A supervisor stands for systemd's `Restart=always` (or an Auto Scaling group replacing an
instance): an app or worker process that exits without being asked is started again, on the
same port, under the same budget.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from loadtests.ladder.cgroups import Budgets, CpuSampler, descendants
from loadtests.ladder.components import (
    ROOT,
    ComponentFailed,
    Process,
    Topology,
    wait_http,
)
from loadtests.ladder.provenance import provenance
from loadtests.ladder.runner import ADMIN_EMAIL, LOCUSTFILE, Autoscaler, build, say
from loadtests.ladder.stages import Stage

KNEE_REPORT = ROOT / "docs" / "ladder" / "README.md"
LOAD_SHARE = 0.7
"""The steady load of a fault run: this share of the users at the stage's knee."""
SLICE_S = 5.0
BEFORE_S = 15.0
"""The window before a fault whose p95 says whether the objective held before it: the steady
load's last 15 s. Its first seconds, while every user signs up (a password hash each) and the
queues settle, are left out, as the ladder leaves out its warm-up."""
HOLD_S = 30.0
"""How long a stopped replica or a killed Redis stays down before it is started again."""
FREEZE_S = 10.0
QUEUE_DOWN_S = 60.0
RECOVERY_LIMIT_S = 30.0
"""A row passes only if the objective holds again, and errors stop, within this many seconds
of the fault's end (the restore, or the supervisor's replacement answering)."""
ACCEPTED_ERRORS = ("502", "503", "refused")
"""The only errors a fault may cause: a balancer's 502, the app's 503 (with Retry-After), or a
refused connection. Never a 500."""


KNEE_COLUMN = "users at knee"


def knee_users(stage: int, report: Path = KNEE_REPORT) -> int | None:
    """Users at the stage's knee in the committed ladder report: the column headed
    KNEE_COLUMN of its first table that has one (the report's other tables also start with
    the stage's number)."""
    if not report.is_file():
        return None
    column: int | None = None
    for line in report.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            if column is not None:
                return None  # the end of the knees' table
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if column is None:
            if KNEE_COLUMN in cells:
                column = cells.index(KNEE_COLUMN)
            continue
        if cells[0] == str(stage) and len(cells) > column:
            users = cells[column].replace(",", "")
            return int(users) if users.isdigit() else None
    return None


def steady_users(stage: Stage, override: int | None, share: float = LOAD_SHARE) -> tuple[int, str]:
    """The users of the steady load and where the figure comes from."""
    if override:
        return override, f"{override} users (--users)"
    knee = knee_users(stage.number)
    if knee is None:
        raise ComponentFailed(f"no knee for stage {stage.number} in {KNEE_REPORT}: pass --users")
    users = max(1, round(knee * share))
    return users, f"{users} users: {share:.0%} of the {knee} users at the knee ({KNEE_REPORT.name})"


# --- the supervisor -------------------------------------------------------------------------
@dataclass
class Supervisor:
    """Restarts an app or worker process that exited unasked, on the same port and budget."""

    topology: Topology
    budgets: Budgets
    workers: list[Process] = field(default_factory=list)
    restarts: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            for app in list(self.topology.apps):
                if app.popen.poll() is not None and not self.stop.is_set():
                    self._restart(app, self.topology.apps)
            for worker in list(self.workers):
                if worker.popen.poll() is not None and not self.stop.is_set():
                    self._restart(worker, self.workers)

    def _restart(self, old: Process, members: list[Process]) -> None:
        died_at = time.time()
        if old.name.startswith("worker"):
            extra = {"SHOP_WORKER_METRICS_PORT": str(old.port), "SHOP_WORKER_WAIT_S": "2"}
            ready = f"http://127.0.0.1:{old.port}/metrics"
        else:
            extra, ready = {}, f"http://127.0.0.1:{old.port}/readyz"
        command = [str(part) for part in old.popen.args]  # type: ignore[union-attr]
        new = self.topology.spawn(
            old.name, old.group, command, env=self.topology.shop_env(extra), port=old.port
        )
        # The replacement's stop runs first on the way out: the supervisor must stop before it,
        # or it would start again what the teardown stops.
        self.topology.stack.callback(self.stop.set)
        record: dict[str, Any] = {"name": old.name, "died_at": died_at, "back_at": None}
        self.restarts.append(record)
        try:
            wait_http(ready, new.popen, new.log, timeout=90)
        except ComponentFailed as exc:
            say(f"    supervisor: {old.name} did not come back: {str(exc).splitlines()[0]}")
        with suppress(ValueError):
            members[members.index(old)] = new
        self.budgets.add(old.group, new.pid)
        record["back_at"] = time.time()

    def back_after(self, name: str, since: float, timeout: float = 120) -> float:
        """When the replacement of `name` (dead after `since`) answered; raises on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.restarts:
                if record["name"] == name and record["died_at"] >= since and record["back_at"]:
                    return float(record["back_at"])
            time.sleep(0.1)
        raise ComponentFailed(f"the supervisor did not bring {name} back in {timeout:.0f} s")


@dataclass
class Harness:
    """A running stage under faults: its topology, budgets and supervisor."""

    stage: Stage
    topology: Topology
    budgets: Budgets
    supervisor: Supervisor


# --- the faults ---------------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    return [pid, *descendants(pid)]


def _signal_tree(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


def _named(topology: Topology, prefix: str) -> Process:
    return next(p for p in reversed(topology.processes) if p.name.startswith(prefix))


def kill_app(h: Harness) -> dict[str, Any]:
    app = h.topology.apps[0]
    killed_at = time.time()
    os.kill(app.pid, signal.SIGKILL)
    return {"restored_at": h.supervisor.back_after(app.name, killed_at - 1), "killed": app.name}


def stop_replica(h: Harness) -> dict[str, Any]:
    replica = h.topology.replica
    assert replica is not None
    replica.stop()
    time.sleep(HOLD_S)
    replica.start()
    h.budgets.add("replica", h.topology.postmaster_pid(replica))
    return {"restored_at": time.time(), "down_s": HOLD_S}


def kill_redis(h: Harness) -> dict[str, Any]:
    redis = _named(h.topology, "redis")
    os.kill(redis.pid, signal.SIGKILL)
    redis.popen.wait()
    time.sleep(HOLD_S)
    command = [str(part) for part in redis.popen.args]  # type: ignore[union-attr]
    new = h.topology.spawn("redis", redis.group, command, port=redis.port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", redis.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    h.budgets.add(redis.group, new.pid)
    return {"restored_at": time.time(), "down_s": HOLD_S}


def kill_worker(h: Harness) -> dict[str, Any]:
    """kill -9 a worker while messages are received and not yet deleted (in a batch)."""
    worker = h.supervisor.workers[0]
    in_flight = 0
    deadline = time.monotonic() + 20
    sqs = _sqs(h.topology)
    while time.monotonic() < deadline:
        with suppress(Exception):
            attributes = sqs.get_queue_attributes(
                QueueUrl=h.topology.queue_url,
                AttributeNames=["ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            in_flight = int(attributes["ApproximateNumberOfMessagesNotVisible"])
        if in_flight:
            break
        time.sleep(0.05)
    killed_at = time.time()
    os.kill(worker.pid, signal.SIGKILL)
    back = h.supervisor.back_after(worker.name, killed_at - 1)
    return {"restored_at": back, "killed": worker.name, "in_flight_at_kill": in_flight}


def restart_primary(h: Harness) -> dict[str, Any]:
    primary = h.topology.primary
    assert primary is not None
    primary.restart()
    h.budgets.add("postgres", h.topology.postmaster_pid(primary))
    return {"restored_at": time.time()}


def freeze_primary(h: Harness) -> dict[str, Any]:
    primary = h.topology.primary
    assert primary is not None
    pids = _tree(h.topology.postmaster_pid(primary))
    _signal_tree(pids, signal.SIGSTOP)
    time.sleep(FREEZE_S)
    _signal_tree(pids, signal.SIGCONT)
    return {"restored_at": time.time(), "frozen_s": FREEZE_S}


def cut_queue(h: Harness) -> dict[str, Any]:
    """The AWS endpoint stops answering for QUEUE_DOWN_S (its process frozen: connections hang,
    as behind a network partition). One local server stands for SQS, SES and DynamoDB, so the
    carts' table goes with the queue: a harsher fault than the queue alone."""
    moto = _named(h.topology, "moto")
    pids = _tree(moto.pid)
    _signal_tree(pids, signal.SIGSTOP)
    time.sleep(QUEUE_DOWN_S)
    _signal_tree(pids, signal.SIGCONT)
    return {"restored_at": time.time(), "down_s": QUEUE_DOWN_S}


@dataclass(frozen=True)
class Fault:
    name: str
    title: str
    applies: Callable[[Stage], bool]
    act: Callable[[Harness], dict[str, Any]]
    """Injects the fault and restores it; returns when it is over, with `restored_at`."""


FAULTS: dict[str, Fault] = {
    fault.name: fault
    for fault in (
        Fault("app-kill", "kill -9 one app process", lambda s: True, kill_app),
        Fault("replica-stop", "stop the replica 30 s", lambda s: s.replica, stop_replica),
        Fault("redis-kill", "kill -9 Redis, start it 30 s later", lambda s: s.cache, kill_redis),
        Fault("worker-kill", "kill -9 a worker in a batch", lambda s: s.queue, kill_worker),
        Fault("primary-restart", "restart the primary (fast)", lambda s: True, restart_primary),
        Fault("primary-freeze", "freeze the primary 10 s", lambda s: True, freeze_primary),
        Fault("queue-unreachable", "queue endpoint gone 60 s", lambda s: s.queue, cut_queue),
    )
}


def parse_faults(text: str | None) -> list[Fault]:
    if not text:
        return list(FAULTS.values())
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAULTS]
    if unknown:
        raise ValueError(f"no fault {unknown[0]!r}: one of {', '.join(FAULTS)}")
    return [FAULTS[name] for name in names]


def _sqs(topology: Topology) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "sqs",
        endpoint_url=topology.moto_url,
        region_name="us-east-1",
        aws_access_key_id="ladder-local",
        aws_secret_access_key="ladder-local",
        config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}),
    )


# --- the steady load ----------------------------------------------------------------------
@dataclass
class Journals:
    folder: Path

    @property
    def requests(self) -> Path:
        return self.folder / "requests.jsonl"

    @property
    def acked(self) -> Path:
        return self.folder / "acked.jsonl"

    @property
    def invariants(self) -> Path:
        return self.folder / "invariants.json"


def start_locust(
    topology: Topology,
    users: int,
    folder: Path,
    *,
    seconds: float = 3600,
    think_s: float | None = None,
    locustfile: Path = LOCUSTFILE,
) -> tuple[subprocess.Popen[bytes], Journals]:
    """The suite at a constant `users`, journaling every request and acknowledged order."""
    folder.mkdir(parents=True, exist_ok=True)
    journals = Journals(folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env |= {
        "SHOP_LOAD_ADMIN_EMAIL": ADMIN_EMAIL,
        "SHOP_LOAD_ADMIN_PASSWORD": topology.env["_ADMIN_PASSWORD"],
        "SHOP_LOAD_REQUESTS_OUT": str(journals.requests),
        "SHOP_LOAD_ACKED_OUT": str(journals.acked),
        "SHOP_LOAD_INVARIANTS_OUT": str(journals.invariants),
    }
    if think_s is not None:
        env["SHOP_LOAD_THINK_S"] = str(think_s)
    command = [
        str(Path(sys.executable).parent / "locust"),
        "-f", str(locustfile), "--headless", "--host", topology.target,
        "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "30",
        "-u", str(users), "-r", str(max(1, min(users, 25))), "-t", f"{seconds:.0f}s",
    ]  # fmt: skip
    log = (folder / "locust.log").open("ab")
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    return process, journals


def stop_locust(process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    """SIGTERM: users finish their request, pending orders are replayed, invariants checked."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def read_jsonl(path: Path) -> Iterator[Any]:
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as lines:
        for text in lines:
            with suppress(json.JSONDecodeError):
                yield json.loads(text)


# --- what a run shows ---------------------------------------------------------------------
def percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(share * len(ordered)) - 1)])


def error_kind(status: int, kind: str, retry_after: bool) -> str:
    """A failed request's kind: its status (503 without Retry-After apart), else `refused` for
    a refused connection, else the exception's name."""
    if status:
        if status == 503 and not retry_after:
            return "503 without Retry-After"
        return str(status)
    cause = kind.removeprefix("no answer: ")
    if cause == "ConnectionRefusedError":
        return "refused"
    if kind == "CatchResponseError":
        return "no answer"  # runs journaled before the cause was: reset or timed out
    return f"no answer: {cause}" if cause else "unknown"


def summarise(
    lines: Sequence[Sequence[Any]],
    *,
    injected_at: float,
    restored_at: float,
    p95_ms: float,
    before_s: float = BEFORE_S,
) -> dict[str, Any]:
    """Slices of SLICE_S seconds from the injection and phases (before, during, after the
    fault), both by when a request ended (its answer or its error was seen); errors by phase
    and kind; the recovery; p95 over the steady load's last `before_s` before the fault."""
    slices: dict[int, list[Sequence[Any]]] = {}
    phases: dict[str, Counter[str]] = {"before": Counter(), "during": Counter(), "after": Counter()}
    requests: Counter[str] = Counter()
    for line in lines:
        started, _name, status, ms, failed, kind, retry_after = line[:7]
        # By its end: a request sent just before the fault and answered in it is the fault's.
        ended = started + ms / 1000
        phase = "before" if ended < injected_at else "during" if ended < restored_at else "after"
        requests[phase] += 1
        if failed:
            phases[phase][error_kind(int(status), str(kind), bool(retry_after))] += 1
        slices.setdefault(math.floor((ended - injected_at) / SLICE_S), []).append(line)
    rows = []
    # The first and last slices are cut by the load's start and stop: not shown.
    for index in sorted(slices)[1:-1]:
        members = slices[index]
        failures = sum(1 for m in members if m[4])
        rows.append(
            {
                "t_s": index * SLICE_S,
                "requests": len(members),
                "rps": round(len(members) / SLICE_S, 2),
                "failures": failures,
                "p95_ms": round(percentile([float(m[3]) for m in members], 0.95), 1),
            }
        )
    last_bad = None
    for line in lines:
        ended = float(line[0]) + float(line[3]) / 1000
        if line[4] and ended >= injected_at:
            last_bad = ended if last_bad is None else max(last_bad, ended)
    for row in rows:
        if row["t_s"] >= -SLICE_S and row["p95_ms"] >= p95_ms:
            ended = injected_at + row["t_s"] + SLICE_S
            last_bad = ended if last_bad is None else max(last_bad, ended)
    recovery_s = 0.0 if last_bad is None else max(0.0, last_bad - restored_at)
    before = [
        float(line[3])
        for line in lines
        if injected_at - before_s <= float(line[0]) + float(line[3]) / 1000 < injected_at
    ]
    load_end = max((float(line[0]) for line in lines), default=restored_at)
    errors = Counter[str]()
    for counter in (phases["during"], phases["after"]):
        errors.update(counter)
    return {
        "slices": rows,
        "requests": dict(requests),
        "errors": {phase: dict(counter) for phase, counter in phases.items()},
        "errors_500": sum(n for kind, n in errors.items() if kind.startswith("500")),
        "unaccepted_errors": {k: n for k, n in errors.items() if k not in ACCEPTED_ERRORS},
        "p95_before_ms": round(percentile(before, 0.95), 1),
        "recovery_s": round(recovery_s, 1),
        "recovered": last_bad is None or last_bad < load_end - SLICE_S,
    }


def check_acknowledged(
    database_url: str, acked: Sequence[dict[str, Any]], *, orders_before: int
) -> dict[str, Any]:
    """Every acknowledged order exists exactly once; every Idempotency-Key has one row that
    names the order acknowledged for it; every order of the run was acknowledged."""
    ids = {int(a["order"]) for a in acked}
    keys: dict[str, set[int]] = {}
    for a in acked:
        if a.get("key"):
            keys.setdefault(str(a["key"]), set()).add(int(a["order"]))
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        in_db = {
            int(row[0])
            for row in conn.execute(
                "SELECT id FROM customer_order WHERE id > %s", (orders_before,)
            ).fetchall()
        }
        stored = {
            str(row[0]): (int(row[1]), row[2])
            for row in conn.execute(
                "SELECT key, count(*), min(response_body->>'id') FROM idempotency_key"
                " WHERE key = ANY(%s) GROUP BY key",
                (list(keys),),
            ).fetchall()
        }
    lost = sorted(ids - in_db)
    extra = sorted(in_db - ids)
    bad_keys = sorted(
        key
        for key, orders in keys.items()
        if len(orders) != 1
        or key not in stored
        or stored[key][0] != 1
        or str(stored[key][1]) != str(next(iter(orders)))
    )
    return {
        "acknowledged": len(ids),
        "in_database": len(in_db),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "duplicated": len(extra),
        "duplicated_ids": extra[:20],
        "keys": len(keys),
        "keys_not_one_row": len(bad_keys),
    }


FULFILMENT_WAIT_S = 90.0
"""How long the checks wait for the workers to finish the orders of a run (stage 7's queue
drains after the load; a message received by a killed worker comes back after its visibility
timeout, 60 s)."""


def check_fulfilled_once(
    database_url: str, order_ids: Sequence[int], *, wait_s: float = FULFILMENT_WAIT_S
) -> dict[str, Any]:
    """Every order placed and not cancelled ends fulfilled once: its sale in the ledger once
    (the order_placed debits equal its total) and one shipment; a cancelled one has its sale at
    most once. Waits up to `wait_s` for the unfulfilled to be finished (queued fulfilment)."""
    query = (
        "SELECT o.id, o.status, o.fulfilled_at IS NOT NULL, o.total_cents,"
        " (SELECT count(*) FROM shipment s WHERE s.order_id = o.id),"
        " (SELECT COALESCE(sum(l.debit_cents), 0) FROM ledger_entry l"
        "   WHERE l.order_id = o.id AND l.event = 'order_placed')"
        " FROM customer_order o WHERE o.id = ANY(%s)"
    )
    deadline = time.monotonic() + wait_s
    while True:
        with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute(query, (list(order_ids),)).fetchall()
        unfulfilled = [r[0] for r in rows if r[1] != "cancelled" and not r[2]]
        if not unfulfilled or time.monotonic() >= deadline:
            break
        time.sleep(1)
    twice = [r[0] for r in rows if int(r[5]) > int(r[3])]
    incomplete = [
        r[0] for r in rows if r[1] != "cancelled" and r[2] and (r[4] != 1 or int(r[5]) != r[3])
    ]
    return {
        "unfulfilled": len(unfulfilled),
        "unfulfilled_ids": sorted(unfulfilled)[:20],
        "fulfilled_twice": len(twice),
        "fulfilled_twice_ids": sorted(twice)[:20],
        "fulfilled_incompletely": len(incomplete),
        "fulfilled_incompletely_ids": sorted(incomplete)[:20],
    }


def verdict(row: dict[str, Any]) -> list[str]:
    """Why a row fails the bar (empty: it passes)."""
    why = []
    orders = row["orders"]
    if orders["lost"]:
        why.append(f"{orders['lost']} acknowledged orders lost")
    if orders["duplicated"]:
        why.append(f"{orders['duplicated']} orders in the database never acknowledged")
    if orders["keys_not_one_row"]:
        why.append(f"{orders['keys_not_one_row']} Idempotency-Keys without exactly one row")
    for key, said in (
        ("unfulfilled", "orders never fulfilled"),
        ("fulfilled_twice", "orders fulfilled twice"),
        ("fulfilled_incompletely", "orders fulfilled without their sale or shipment"),
    ):
        if orders.get(key):
            why.append(f"{orders[key]} {said}")
    if not row["invariants"].get("ok"):
        broken = [n for n, c in row["invariants"].get("checks", {}).items() if not c["ok"]]
        why.append("invariants broken: " + (", ".join(broken) or "not checked"))
    summary = row["summary"]
    before = sum(summary["errors"]["before"].values())
    if before:
        why.append(f"{before} errors before the fault")
    if summary["unaccepted_errors"]:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(summary["unaccepted_errors"].items()))
        why.append(f"errors other than 502/503/refused ({kinds})")
    if summary.get("p95_before_ms", 0) >= row.get("p95_objective_ms", math.inf):
        why.append(
            f"objective missed before the fault (p95 {summary['p95_before_ms']:.0f} ms; "
            f"load average {row['load_average'][0]:.1f})"
        )
    if not summary["recovered"]:
        why.append("not recovered by the end of the run")
    elif summary["recovery_s"] > RECOVERY_LIMIT_S:
        why.append(f"recovery {summary['recovery_s']:.0f} s > {RECOVERY_LIMIT_S:.0f} s")
    return why


def _orders_so_far(topology: Topology) -> int:
    assert topology.primary is not None
    return int(
        topology.primary.query("SELECT COALESCE(max(id), 0) FROM customer_order", "shop") or 0
    )


def run_fault(
    h: Harness,
    fault: Fault,
    users: int,
    folder: Path,
    *,
    baseline_s: float,
    after_s: float,
    p95_ms: float,
    think_s: float | None = None,
) -> dict[str, Any]:
    """The steady load, the fault in its middle, then the checks; one row of the report."""
    orders_before = _orders_so_far(h.topology)
    process, journals = start_locust(h.topology, users, folder, think_s=think_s)
    try:
        time.sleep(users / max(1, min(users, 25)) + baseline_s)
        if process.poll() is not None:
            raise ComponentFailed(f"Locust ended early (see {folder / 'locust.log'})")
        injected_at = time.time()
        load_average = os.getloadavg()
        say(f"  {fault.name}: injected ({fault.title}); load average {load_average[0]:.1f}")
        detail = fault.act(h)
        restored_at = float(detail.pop("restored_at"))
        say(f"  {fault.name}: over after {restored_at - injected_at:.1f} s")
        time.sleep(after_s)
    finally:
        stop_locust(process)
    lines = [line for line in read_jsonl(journals.requests) if isinstance(line, list)]
    summary = summarise(lines, injected_at=injected_at, restored_at=restored_at, p95_ms=p95_ms)
    acked = [a for a in read_jsonl(journals.acked) if isinstance(a, dict)]
    assert h.topology.primary is not None
    database_url = h.topology.primary.libpq_url(h.topology.database)
    orders = check_acknowledged(database_url, acked, orders_before=orders_before)
    orders |= check_fulfilled_once(database_url, [int(a["order"]) for a in acked])
    invariants: dict[str, Any] = {"ok": False, "checks": {}}
    if journals.invariants.is_file():
        with suppress(json.JSONDecodeError):
            invariants = json.loads(journals.invariants.read_text())
    row = {
        "fault": fault.name,
        "title": fault.title,
        "applies": True,
        "users": users,
        "p95_objective_ms": p95_ms,
        "load_average": [round(x, 2) for x in load_average],
        "injected_at": injected_at,
        "restored_at": restored_at,
        "window_s": round(restored_at - injected_at, 1),
        "detail": detail,
        "summary": summary,
        "orders": orders,
        "invariants": invariants,
        "locust_exit": process.returncode,
        "journals": str(folder),
    }
    fails = verdict(row)
    row["fails"] = fails
    during: dict[str, int] = summary["errors"]["during"]
    errors = ", ".join(f"{k} {n}" for k, n in sorted(during.items())) or "none"
    say(
        f"  {fault.name}: window {row['window_s']:.1f} s, errors in it: {errors}; "
        f"recovery {summary['recovery_s']:.1f} s; {orders['acknowledged']} orders acknowledged, "
        f"{orders['lost']} lost, {orders['duplicated']} unacknowledged in the database; "
        + ("PASS" if not fails else "FAIL: " + "; ".join(fails))
    )
    return row


def open_stage(
    stage: Stage,
    stack: ExitStack,
    run_id: str,
    *,
    enforce: bool,
    products: int,
    settings: dict[str, str] | None = None,
) -> Harness:
    """Build the stage as the ladder does, under its budgets, with a supervisor watching;
    `settings`: more SHOP_* settings for every app and worker process."""
    folder = Path(f"/tmp/shop-faults-{run_id}")
    folder.mkdir(parents=True)
    budgets = Budgets(run_id, enforce=enforce)
    stack.callback(budgets.close)
    topology = Topology(folder=folder, stack=stack)
    topology.env |= settings or {}
    how = ("enforced, " if budgets.enforced else "NOT enforced: ") + budgets.how
    say(f"stage {stage.number} ({stage.name}): building; budgets {stage.budgets()} ({how})")
    build(stage, topology, budgets, products=products)
    supervisor = Supervisor(topology, budgets)
    supervisor.workers = [p for p in topology.processes if p.name.startswith("worker-")]
    supervisor.start()
    stack.callback(supervisor.stop.set)  # first on the way out: nothing restarts at teardown
    if stage.max_app_processes:
        cpu = CpuSampler(budgets)
        scaler = Autoscaler(topology, budgets, stage, cpu)
        stop = threading.Event()

        def scale() -> None:
            while not stop.wait(1.0):
                cpu.sample()
                scaler.check()

        threading.Thread(target=scale, daemon=True).start()
        stack.callback(stop.set)
    return Harness(stage, topology, budgets, supervisor)


def run_stage_faults(
    stage: Stage,
    faults: Sequence[Fault],
    out: Path,
    *,
    users: int | None = None,
    baseline_s: float = 30,
    after_s: float = 60,
    p95_ms: float = 500,
    products: int = 1000,
    think_s: float | None = None,
    enforce: bool = True,
) -> dict[str, Any]:
    """Every fault that the stage has, one after another on one topology; writes and returns
    the stage's result (ladder-results/faults/stage-<n>.json)."""
    count, load_from = steady_users(stage, users)
    run_id = f"{stage.number}-{uuid.uuid4().hex[:8]}"
    rows: list[dict[str, Any]] = []
    began = time.time()
    source = provenance()  # the code that runs, before anything changes the checkout
    with ExitStack() as stack:
        h = open_stage(stage, stack, run_id, enforce=enforce, products=products)
        say(f"  steady load: {load_from}")
        for fault in faults:
            if not fault.applies(stage):
                rows.append({"fault": fault.name, "title": fault.title, "applies": False})
                continue
            folder = h.topology.folder / fault.name
            rows.append(
                run_fault(
                    h,
                    fault,
                    count,
                    folder,
                    baseline_s=baseline_s,
                    after_s=after_s,
                    p95_ms=p95_ms,
                    think_s=think_s,
                )
            )
        budgets_enforced = h.budgets.enforced
    result = {
        "stage": stage.number,
        "name": stage.name,
        "users": count,
        "load_from": load_from,
        "baseline_s": baseline_s,
        "after_s": after_s,
        "p95_objective_ms": p95_ms,
        "recovery_limit_s": RECOVERY_LIMIT_S,
        "budgets_enforced": budgets_enforced,
        "budgets": stage.budgets(),
        "minutes": round((time.time() - began) / 60, 1),
        "faults": rows,
        "provenance": source,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"stage-{stage.number}.json").write_text(json.dumps(result, indent=1))
    return result


BASELINE_S = 20.0
"""Steady load before each fault."""
AFTER_S = 45.0
"""Steady load after each fault's end, in which the objective must hold again."""
FAULTS_REPORT = ROOT / "docs" / "faults"


def main(args: Any) -> int:
    """`python -m loadtests.ladder --faults [--stages 3-7] [--fault a,b] [--users N]`, or
    `--soak [--stages 7] [--soak-min 30]`: run, write the results, regenerate docs/faults/."""
    from loadtests.ladder.stages import parse_stages

    out = Path(args.out) / "faults"
    try:
        stages = parse_stages(args.stages or ("7" if args.soak else "3-7"))
        chosen = parse_faults(args.fault)
    except ValueError as exc:
        say(str(exc))
        return 2
    signal.signal(signal.SIGTERM, _interrupted)
    failed = False
    began = time.monotonic()
    try:
        if args.soak:
            from loadtests.ladder import soak

            result = soak.run_soak(
                stages[-1],
                out,
                users=args.users or None,
                minutes=args.soak_min,
                enforce=not args.no_budgets,
            )
            failed = bool(result["fails"])
        else:
            for number, stage in enumerate(stages, 1):
                say(f"[{number}/{len(stages)}] faults at stage {stage.number} {stage.name}")
                try:
                    result = run_stage_faults(
                        stage,
                        chosen,
                        out,
                        users=args.users or None,
                        baseline_s=BASELINE_S,
                        after_s=AFTER_S,
                        p95_ms=args.p95_ms,
                        enforce=not args.no_budgets,
                    )
                except (ComponentFailed, OSError, subprocess.SubprocessError) as exc:
                    say(f"stage {stage.number} could not run: {str(exc).strip()[:2000]}")
                    failed = True
                    continue
                failed |= any(row.get("fails") for row in result["faults"])
    except KeyboardInterrupt:
        say("interrupted: every component of the stage was stopped")
        return 130
    say(f"done in {(time.monotonic() - began) / 60:.1f} min; results in {out}")
    made = subprocess.run(
        [sys.executable, "-m", "loadtests.faults_report", str(out), str(FAULTS_REPORT)], cwd=ROOT
    )
    return 1 if failed or made.returncode else 0


def summarise_again(result: dict[str, Any], why: str) -> dict[str, Any]:
    """The rows of a stage's result counted again from their journals (kept under
    /tmp/shop-faults-<stage>-*), after a change to how rows are counted: their summaries and
    verdicts are replaced, and the result says why (`summarised_by`). Rows whose journals are
    gone are left as they were."""
    found = sorted(Path("/tmp").glob(f"shop-faults-{result['stage']}-*"), key=os.path.getmtime)
    again = 0
    for row in result["faults"]:
        if not row.get("applies"):
            continue
        folder = Path(row.get("journals") or (found[-1] / row["fault"] if found else ""))
        journals = Journals(folder)
        if not journals.requests.is_file():
            continue
        lines = [line for line in read_jsonl(journals.requests) if isinstance(line, list)]
        row["summary"] = summarise(
            lines,
            injected_at=row["injected_at"],
            restored_at=row["restored_at"],
            p95_ms=row["p95_objective_ms"],
        )
        row["fails"] = verdict(row)
        row["journals"] = str(folder)
        again += 1
    if again:
        result["summarised_by"] = why
    return result


def _interrupted(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
