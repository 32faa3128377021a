"""The local stage ladder as data: what runs at each stage of STAGES.md, and its CPU budget.

Declared once and used by every runner: the native ladder (`python -m loadtests.ladder`), the
docker compose profiles (`stage-N`, whose `cpus:` a test checks against these figures) and the
smoke test. A budget is in CPUs (0.25 = a quarter of one core, enforced by a cgroup CPU quota).
The whole system under test of a stage stays well under one CPU, so that on a 2-core machine the
load generator keeps a core of its own and the shop, not Locust, saturates first.

Why these figures: one app process costs several times the CPU of the PostgreSQL work it asks
for (SQLAlchemy and the HTTP stack per request; FACTS.md). So the primary's budget is chosen
small enough that one app process (stage 2) saturates before it, and two (stage 3) after it;
the replica takes the reads at stage 4; the cache and the caching proxy take the hot reads off
both at stage 5, and the fixed pair of app processes is the limit again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

COMPONENTS = ("box", "app", "postgres", "replica", "redis", "nginx", "cdn", "moto", "worker")
"""Component names of the per-stage results (the interface the report reads)."""


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One rung: its processes, their CPU budgets and the app's SHOP_* settings."""

    number: int
    name: str
    predicted: str
    """The component STAGES.md says saturates first at this stage (for the report's check)."""
    app_processes: int
    app_cpus: float
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
    pool_size: int = 4
    max_overflow: int = 4
    shape: str = "step"
    """The Locust load shape of the run: step (find the knee) or daily (stage 6)."""
    max_app_processes: int = 0
    """Stage 6: the local autoscaler adds app processes up to this many (0: a fixed fleet)."""
    settings: dict[str, str] = field(default_factory=dict)
    """Extra SHOP_* settings beyond the addresses the runner fills in."""

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

    def budgets(self, app_processes: float | None = None) -> dict[str, float]:
        """CPUs per component, as the results name them; the app's is the sum of its
        processes (`app_processes` when an autoscaler changed their number)."""
        processes = self.app_processes if app_processes is None else app_processes
        if self.single_box:
            return {"box": self.box_cpus}
        found = {
            "app": round(self.app_cpus * processes, 3),
            "postgres": self.postgres_cpus,
            "replica": self.replica_cpus,
            "redis": self.redis_cpus,
            "nginx": self.nginx_cpus,
            "cdn": self.cdn_cpus,
            "worker": round(self.worker_cpus * self.worker_processes, 3),
        }
        return {name: cpus for name, cpus in found.items() if cpus > 0}

    def total_cpus(self) -> float:
        """The whole system under test at its largest (stage 6: every process it may add)."""
        processes = max(self.app_processes, self.max_app_processes)
        return round(sum(self.budgets(processes).values()), 3)


APP_CPUS = 0.25
"""One app process: a quarter of a core (FACTS.md: two of them behind nginx scale 1.7-2x)."""
PRIMARY_CPUS = 0.14
"""The primary: more than one app process can use, less than two do. Measured with the suite's
mix: one saturated app process (0.25) keeps the primary at about 0.1 CPU (stage 2: 0.09 at 0.23),
so two would need about 0.2; 0.14 sits between. (The app used to cost more per request: the
primary was then 0.1, between 0.07 and 0.14; at that figure the app of stage 2 and the primary
saturated together once the app had got cheaper.)"""

STAGES: dict[int, Stage] = {
    stage.number: stage
    for stage in (
        Stage(
            number=1,
            name="single-box",
            predicted="box",
            app_processes=1,
            app_cpus=APP_CPUS,
            box_cpus=0.3,
        ),
        Stage(
            number=2,
            name="separate-db",
            predicted="app",
            app_processes=1,
            app_cpus=APP_CPUS,
            postgres_cpus=PRIMARY_CPUS,
        ),
        Stage(
            number=3,
            name="horizontal",
            predicted="postgres",
            app_processes=2,
            app_cpus=APP_CPUS,
            postgres_cpus=PRIMARY_CPUS,
            nginx_cpus=0.1,
        ),
        Stage(
            number=4,
            name="read-replicas",
            predicted="replica",
            app_processes=2,
            app_cpus=APP_CPUS,
            postgres_cpus=PRIMARY_CPUS,
            replica_cpus=PRIMARY_CPUS,
            nginx_cpus=0.1,
        ),
        Stage(
            number=5,
            name="cache-cdn",
            predicted="app",
            app_processes=2,
            app_cpus=APP_CPUS,
            postgres_cpus=PRIMARY_CPUS,
            replica_cpus=PRIMARY_CPUS,
            redis_cpus=0.05,
            nginx_cpus=0.05,
            cdn_cpus=0.05,
            aws=True,
        ),
        Stage(
            number=6,
            name="auto-scaling",
            predicted="app",
            app_processes=1,
            max_app_processes=3,
            app_cpus=0.2,
            postgres_cpus=PRIMARY_CPUS,
            replica_cpus=PRIMARY_CPUS,
            redis_cpus=0.03,
            nginx_cpus=0.03,
            cdn_cpus=0.05,  # at 0.03 the caching proxy saturated at 85 req/s
            aws=True,
            shape="daily",
        ),
        Stage(
            number=7,
            name="service-oriented",
            predicted="postgres",
            app_processes=2,
            app_cpus=0.2,
            postgres_cpus=PRIMARY_CPUS,
            replica_cpus=PRIMARY_CPUS,
            redis_cpus=0.03,
            nginx_cpus=0.03,
            cdn_cpus=0.05,  # at 0.03 the caching proxy saturated at 85 req/s
            aws=True,
            # Workers scale on queue depth (STAGES.md): two of them keep up with what the
            # fleet sends at its knee; one at 0.05 CPU fell behind at 20 users.
            worker_processes=2,
            worker_cpus=0.08,
        ),
    )
}


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
