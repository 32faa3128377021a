"""The local stage ladder as data: what runs at each stage of STAGES.md, and its CPU budget.

Declared once and used by every runner: the native ladder (`python -m loadtests.ladder`), the
docker compose profiles (`stage-N`, whose `cpus:` a test checks against these figures) and the
smoke test. A budget is in CPUs (0.25 = a quarter of one core, enforced by a cgroup CPU quota).

No budget is chosen here. Each stage declares what runs (its components, the load's shape, the
component STAGES.md predicts to saturate first) and `sizes.from_stacks` gives every component a
budget in proportion to its vCPUs in the stage's stack, one scale factor per stage, so that the
scaled components share 0.9 CPU at the stage's minimum size (the stand-ins of the load balancer
and the CDN get 0.1 each, an autoscaled fleet grows to 1.3 in all) and the load generator keeps
most of a core. Stage 8, stage 7 plus databases, takes stage 7's factor instead (each of its
primaries gets stage 7's primary's budget), and so holds more (sizes.SCALED_AS).
Whether the predicted component saturates first is then what the run finds out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtests.ladder.sizes import from_stacks

COMPONENTS = (
    "box", "app", "postgres", "replica", "redis", "nginx", "cdn", "moto", "worker", "shard",
    "federated",
)  # fmt: skip
"""Component names of the per-stage results (the interface the report reads)."""


FEDERATED = ("accounting", "delivery")
"""The databases of stage 8's federation, one PostgreSQL primary each."""
STAGE_8_SETTINGS = {"SHOP_ORDER_HOLD_S": "10", "SHOP_WORKER_PURGE_EVERY_S": "5"}
"""A hold of 10 s (not 60) and a worker pass every 5 s (not 60): an order that failed after its
hold gives its stock back within 15 s, which the closing stock check of each pass can wait for
(60 + 60 s after every pass would add minutes to the run); an order's shard transaction takes
well under a second, far inside either hold."""


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One rung: its processes, their CPU budgets and the app's SHOP_* settings."""

    number: int
    name: str
    predicted: str
    """The component STAGES.md says saturates first at this stage (for the report's check)."""
    app_processes: int = 1
    app_cpus: float = 0.0
    """Budget of each app process (one uvicorn worker each)."""
    postgres_cpus: float = 0.0
    replica_cpus: float = 0.0
    redis_cpus: float = 0.0
    nginx_cpus: float = 0.0
    cdn_cpus: float = 0.0
    aws: bool = False
    """moto's server for DynamoDB carts and (stage 7) SQS and SES. It stands for AWS's managed
    services, which do not saturate at this scale: it runs beside the load generator, outside
    the budgets, and its CPU is measured (component `moto`) but never named the bottleneck."""
    worker_processes: int = 0
    worker_cpus: float = 0.0
    """Budget of each `shop worker` process."""
    box_cpus: float = 0.0
    """Stage 1 only: app, PostgreSQL and Redis share this one budget."""
    shards: int = 0
    """Stage 8: order shards, each a PostgreSQL primary of `shard_cpus` (component `shard`,
    their sum); 0: orders live in the main database."""
    shard_cpus: float = 0.0
    federated_cpus: float = 0.0
    """Stage 8: accounting and delivery, each a PostgreSQL primary of this budget (component
    `federated`, their sum); 0: both live in the main database."""
    write_fleet: int = 0
    """App processes the write-heavy ramp runs on, held there: the stack's largest fleet. Its
    question is where the write primaries saturate, which a fleet held to this machine's slice,
    or growing during the ramp, would hide (on AWS the fleet has 8 times the primary's vCPUs);
    0: the fleet as the autoscaler left it."""
    write_workers: int = 0
    """`shop worker` processes the write-heavy ramp may grow to (the stack's largest group),
    one at a time on the stack's rule: the backlog per worker held at `worker_backlog`. The
    worker writes each order's ledger and shipment, a share of the primaries' work that one
    worker falling behind would leave unmeasured; 0: the workers stay as started."""
    worker_backlog: int = 0
    pool_size: int = 4
    max_overflow: int = 4
    max_app_processes: int = 0
    """Stages 6-7: the local autoscaler adds app processes up to this many during the ramp
    (0: a fixed fleet)."""
    probe: str = ""
    """What runs after the ramp to test the stage's own claim (loadtests/ladder/runner.py),
    beside the signals every step records (stage 4's reads by target and replicas passed
    over): `popularity` (stage 5: the knee's users under the suite's skew, uniform and Zipf
    picks), `day` (stage 6: a compressed day autoscaled, then on the fixed fleet) or
    `write-heavy` (stages 7 and 8: a ramp of buyers who only place orders)."""
    cpus_per_vcpu: float = 0.0
    """Local CPUs per AWS vCPU of this stage (sizes.from_stacks): a knee over it is the same
    proportions' knee at the stack's minimum size."""
    settings: dict[str, str] = field(default_factory=dict)
    """Extra SHOP_* settings beyond the addresses the runner fills in."""
    settle_s: float = 12.0
    """How long the suite's closing stock check waits for work left in flight (a request cut
    off by the end of a pass; stage 8: stock held for an order that failed, which the worker
    gives back once its hold expires)."""

    @property
    def single_box(self) -> bool:
        return self.box_cpus > 0

    @property
    def replica(self) -> bool:
        return self.replica_cpus > 0

    @property
    def cache(self) -> bool:
        """A Redis cache used by the app (stage 1 runs Redis inside its box, as the talk's
        single instance does)."""
        return self.redis_cpus > 0 or self.single_box

    @property
    def balancer(self) -> bool:
        return self.nginx_cpus > 0

    @property
    def cdn(self) -> bool:
        return self.cdn_cpus > 0

    @property
    def queue(self) -> bool:
        return self.worker_processes > 0

    @property
    def federated(self) -> bool:
        return self.federated_cpus > 0

    def budgets(
        self, app_processes: float | None = None, workers: float | None = None
    ) -> dict[str, float]:
        """CPUs per component, as the results name them; the app's is the sum of its
        processes (`app_processes` when an autoscaler changed their number), the worker's the
        sum of its (`workers` when the write-heavy ramp changed theirs)."""
        processes = self.app_processes if app_processes is None else app_processes
        workers = self.worker_processes if workers is None else workers
        if self.single_box:
            return {"box": self.box_cpus}
        found = {
            "app": round(self.app_cpus * processes, 3),
            "postgres": self.postgres_cpus,
            "replica": self.replica_cpus,
            "redis": self.redis_cpus,
            "nginx": self.nginx_cpus,
            "cdn": self.cdn_cpus,
            "worker": round(self.worker_cpus * workers, 3),
            "shard": round(self.shard_cpus * self.shards, 3),
            "federated": round(self.federated_cpus * len(FEDERATED), 3),
        }
        return {name: cpus for name, cpus in found.items() if cpus > 0}

    def total_cpus(self) -> float:
        """The whole system under test at its largest (stage 6: every process it may add)."""
        processes = max(self.app_processes, self.max_app_processes)
        return round(sum(self.budgets(processes).values()), 3)


def _declared() -> tuple[Stage, ...]:
    """What runs at each stage; budgets, process counts and the autoscaler's ceiling are left
    to `sizes.from_stacks`, which derives them from the stage's AWS sizes."""
    return (
        Stage(number=1, name="single-box", predicted="box"),
        Stage(number=2, name="separate-db", predicted="app"),
        Stage(number=3, name="horizontal", predicted="postgres"),
        Stage(number=4, name="read-replicas", predicted="replica"),
        Stage(number=5, name="cache-cdn", predicted="app", aws=True, probe="popularity"),
        Stage(number=6, name="auto-scaling", predicted="app", aws=True, probe="day"),
        Stage(
            number=7, name="service-oriented", predicted="postgres", aws=True, probe="write-heavy"
        ),
        # The design's prediction (docs/stage-8.md): with orders on two shards, main's one
        # reservation write per order limits first.
        Stage(
            number=8,
            name="federated",
            predicted="postgres",
            aws=True,
            probe="write-heavy",
            settings=STAGE_8_SETTINGS,
            # A failed order's stock comes back within its hold plus one worker pass.
            settle_s=float(STAGE_8_SETTINGS["SHOP_ORDER_HOLD_S"])
            + float(STAGE_8_SETTINGS["SHOP_WORKER_PURGE_EVERY_S"])
            + 5,
        ),
    )


STAGES: dict[int, Stage] = {stage.number: from_stacks(stage) for stage in _declared()}
"""Every stage with the budgets derived from its stack's sizes (loadtests/ladder/sizes.py)."""


def parse_stages(text: str | None) -> list[Stage]:
    """`"3,4"` (or `"3-5"`, or empty for all) as stages; ValueError naming a bad one."""
    if not text or not text.strip():
        return list(STAGES.values())
    numbers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                low, high = (int(bound) for bound in part.split("-", 1))
                numbers += range(low, high + 1)
            else:
                numbers.append(int(part))
        except ValueError:
            raise ValueError(f"not a stage number: {part!r} (expected e.g. 3,4 or 2-5)") from None
    unknown = [n for n in numbers if n not in STAGES]
    if unknown:
        raise ValueError(f"no stage {unknown[0]}: the ladder has stages 1-{max(STAGES)}")
    return [STAGES[n] for n in dict.fromkeys(numbers)]
