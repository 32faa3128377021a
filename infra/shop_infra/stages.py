"""The stage catalog: what exists at each stage of the ladder, and how big it is.

One frozen dataclass per stage, numbered and named exactly as in STAGES.md. A stack is composed
from this data alone, so moving up one stage is a few lines here (plus, where a new component
appears, one construct). The cost table in the README is computed from the same data (cost.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GRACEFUL_SHUTDOWN_S = 20
"""Seconds the app drains in-flight requests on SIGTERM (SHOP_GRACEFUL_SHUTDOWN_S); the load
balancer's deregistration delay is set to the same figure."""

APP_PORT = 8000
"""Port the app's container listens on (the container contract)."""

METRICS_PATH = "/metrics"
"""The app's Prometheus endpoint. No stage serves it to the internet: the load balancer (stages
3-7) and the single box's reverse proxy (stages 1-2) answer 404 for it; it is scraped from the
instance itself (README, "Deploy a stage to AWS")."""

LOAD_BALANCER_IDLE_TIMEOUT_S = 60
"""Seconds the load balancer keeps an idle connection to a target open (its idle timeout)."""

HTTP_KEEPALIVE_S = LOAD_BALANCER_IDLE_TIMEOUT_S + 15
"""Seconds the app keeps an idle keep-alive connection open (SHOP_HTTP_KEEPALIVE_S).

Longer than the load balancer's idle timeout, so that the load balancer, not the app, closes an
idle connection: if the app closed first, a request the load balancer sends on that connection
at the same moment is answered with a 502."""

VCPUS: dict[str, int] = {
    "c7i.large": 2,
    "c7i.xlarge": 4,
    "c7i.2xlarge": 8,
    "m7i.large": 2,
    "m7i.xlarge": 4,
    "m7i.2xlarge": 8,
    "t3.micro": 2,
    "t3.small": 2,
    "t3.medium": 2,
}
"""vCPUs per EC2 instance type (AWS's published figures). The app runs one process per vCPU, so
an instance type missing here is refused rather than given a guess."""


def vcpus(instance_type: str) -> int:
    """vCPUs of `instance_type`; raises ValueError for a type the catalog does not know."""
    try:
        return VCPUS[instance_type]
    except KeyError:
        raise ValueError(
            f"unknown instance type {instance_type!r}: add its vCPU count to VCPUS in "
            "infra/shop_infra/stages.py (the app runs one process per vCPU)"
        ) from None


@dataclass(frozen=True, kw_only=True)
class Fleet:
    """The web tier: a fixed group when min_size == max_size, else an Auto Scaling group."""

    instance_type: str
    min_size: int
    max_size: int
    requests_per_worker_per_minute: int | None = None
    """Requests a minute one app process is expected to serve at the target utilisation; the
    set point of target tracking on ALBRequestCountPerTarget is this times the processes per
    instance. None for a fixed group."""
    blue_green: bool = False
    """Two colours (target groups and groups of instances) behind one weighted listener."""
    volume_gib: int = 20

    def __post_init__(self) -> None:
        vcpus(self.instance_type)
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError("a fleet needs 1 <= min_size <= max_size")
        if self.auto_scaling != (self.requests_per_worker_per_minute is not None):
            raise ValueError("a scaling fleet needs a target, a fixed one must not have one")
        if self.blue_green and not self.auto_scaling:
            raise ValueError("blue/green is built on Auto Scaling groups")

    @property
    def auto_scaling(self) -> bool:
        return self.max_size > self.min_size

    @property
    def workers(self) -> int:
        """App processes per instance: one per vCPU, so the app can use the whole instance."""
        return vcpus(self.instance_type)

    @property
    def requests_per_target_per_minute(self) -> int | None:
        """The target tracking set point per instance: every process at its expected rate."""
        if self.requests_per_worker_per_minute is None:
            return None
        return self.requests_per_worker_per_minute * self.workers


@dataclass(frozen=True, kw_only=True)
class Database:
    """RDS PostgreSQL: the primary, its Multi-AZ standby and its read replicas."""

    instance_type: str
    """Without the db. prefix, e.g. m7g.large."""
    multi_az: bool
    read_replicas: int = 0
    storage_gib: int = 20
    backup_retention_days: int = 1
    """At least 1: RDS read replicas need automated backups on the primary."""


@dataclass(frozen=True, kw_only=True)
class Cache:
    """ElastiCache Redis replication group: one primary plus replicas, Multi-AZ failover."""

    node_type: str
    """Without the cache. prefix, e.g. m7g.large."""
    nodes: int = 2


@dataclass(frozen=True, kw_only=True)
class Workers:
    """Queue consumers: the same image running `shop worker`, scaled on the backlog per
    worker."""

    instance_type: str
    min_size: int
    max_size: int
    messages_per_instance: int = 100
    """The backlog per in-service worker (messages queued plus in flight) that target tracking
    holds: the longest acceptable wait for an order divided by the time a worker takes for one
    message."""

    def __post_init__(self) -> None:
        vcpus(self.instance_type)


@dataclass(frozen=True, kw_only=True)
class Stage:
    number: int
    name: str
    users: str
    summary: str
    bottleneck: str
    fleet: Fleet
    nat_gateways: int
    database: Database | None = None
    """None: PostgreSQL and Redis run on the single box itself (stage 1)."""
    cache: Cache | None = None
    edge: bool = False
    """S3 + CloudFront for static files and cacheable pages, carts in DynamoDB."""
    workers: Workers | None = None
    """An SQS queue (with a dead-letter queue), SES sending and a worker group."""
    federated: Database | None = None
    """Databases per function (stage 8): accounting's ledger and delivery's shipments each in a
    database of its own, both of this size. None: they live in the main database."""
    order_shards: int = 0
    """Order shards (stage 8): orders split by customer over this many primaries, each of the
    size `shard`; the main database keeps the directory. 0: orders live in the main database."""
    shard: Database | None = None
    """The size of each order shard: its primary and its read replicas (a customer's order
    reads go to the replicas of the customer's shard, with read-your-writes per shard)."""

    def __post_init__(self) -> None:
        if self.database is None and self.fleet.max_size > 1:
            raise ValueError("only a single box can hold its own database")
        if self.load_balanced and self.nat_gateways < 1:
            raise ValueError("instances in private subnets need a NAT gateway to pull the image")
        if self.order_shards < 0:
            raise ValueError("a stage cannot have a negative number of order shards")
        if (self.order_shards > 0) != (self.shard is not None):
            raise ValueError("order shards need a shard size, and a shard size needs shards")
        if (self.federated or self.order_shards) and (
            self.database is None or self.workers is None
        ):
            # The app writes the federated databases from the queue's events, never in the
            # request, and keeps the catalog, the stock and the shard directory in main.
            raise ValueError(
                "federated databases and order shards need a main database and workers"
            )
        if self.federated is not None and self.federated.read_replicas:
            # Accounting's and delivery's reads go to their primaries: the app has no replicas
            # for them, so a replica would be paid for and never read. Order shards may have
            # replicas: a customer's order reads go to those of the customer's shard.
            raise ValueError(
                "the app reads the federated databases from their primaries: only order shards "
                "take read replicas"
            )

    @property
    def stack_id(self) -> str:
        return f"Shop-{self.number}-{self.name}"

    @property
    def on_box_data(self) -> bool:
        return self.database is None

    @property
    def load_balanced(self) -> bool:
        return self.fleet.max_size > 1


_APP = "c7i.large"
_DB = "m7g.large"

# Each stage is written as the one before it plus what the next step of the talk changes, so the
# catalog reads like STAGES.md ("as 4, plus ...") and a difference is one `replace` away.
_SINGLE_BOX = Stage(
    number=1,
    name="single-box",
    users="1+",
    summary="one EC2 instance with an Elastic IP; app, PostgreSQL and Redis on it",
    bottleneck="the box itself: app and database compete for the same CPU",
    fleet=Fleet(instance_type="m7i.large", min_size=1, max_size=1, volume_gib=40),
    nat_gateways=0,
)
_SEPARATE_DB = replace(
    _SINGLE_BOX,
    number=2,
    name="separate-db",
    users=">1",
    summary="EC2 instance + RDS PostgreSQL (single AZ, private subnets)",
    bottleneck="the single app instance's CPU (vertical scaling only)",
    fleet=Fleet(instance_type=_APP, min_size=1, max_size=1),
    database=Database(instance_type=_DB, multi_az=False),
)
_HORIZONTAL = replace(
    _SEPARATE_DB,
    number=3,
    name="horizontal",
    users=">1,000",
    summary="ALB across 2 AZs, a fixed group of 2 instances, RDS Multi-AZ",
    bottleneck="the database primary: every read and write lands on it",
    fleet=Fleet(instance_type=_APP, min_size=2, max_size=2),
    nat_gateways=1,
    database=Database(instance_type=_DB, multi_az=True),
)
_READ_REPLICAS = replace(
    _HORIZONTAL,
    number=4,
    name="read-replicas",
    users=">10,000",
    summary="as 3, plus 2 RDS read replicas taking the reads",
    bottleneck="hot repeated reads still cost a query each; replica lag; static files",
    database=Database(instance_type=_DB, multi_az=True, read_replicas=2),
)
_CACHE_CDN = replace(
    _READ_REPLICAS,
    number=5,
    name="cache-cdn",
    users=">10,000",
    summary="as 4, plus ElastiCache Redis, S3 + CloudFront, carts in DynamoDB",
    bottleneck="a fixed fleet against a changing traffic curve",
    cache=Cache(node_type="m7g.large", nodes=2),
    edge=True,
)
_AUTO_SCALING = replace(
    _CACHE_CDN,
    number=6,
    name="auto-scaling",
    users=">500,000",
    summary="as 5, with Auto Scaling groups (target tracking), blue/green, alarms",
    bottleneck="the synchronous order path: side effects inside the request",
    fleet=Fleet(
        instance_type=_APP,
        min_size=2,
        max_size=8,
        # 15,000 a minute was the set point of one process per instance; each process keeps it.
        requests_per_worker_per_minute=15_000,
        blue_green=True,
    ),
    nat_gateways=2,
)
_SERVICE_ORIENTED = replace(
    _AUTO_SCALING,
    number=7,
    name="service-oriented",
    users=">1,000,000",
    summary="as 6, plus SQS (+ dead-letter queue), workers scaling on backlog per worker, SES",
    bottleneck="the single write primary (order writes)",
    workers=Workers(instance_type=_APP, min_size=1, max_size=4),
)

_FEDERATED = replace(
    _SERVICE_ORIENTED,
    number=8,
    name="federated",
    users=">10,000,000",
    summary="as 7, plus accounting and delivery in databases of their own, orders sharded by "
    "customer over 2 primaries",
    bottleneck="measured: whatever limits after the write primary (stock rows, the directory)",
    # Main keeps stage 7's primary and 2 replicas: catalog, stock, customers, the shard
    # directory. Accounting and delivery are Multi-AZ primaries without replicas (see Stage);
    # each order shard is a Multi-AZ primary with one replica for its customers' order reads.
    federated=Database(instance_type=_DB, multi_az=True),
    order_shards=2,
    shard=Database(instance_type=_DB, multi_az=True, read_replicas=1),
)

STAGES: tuple[Stage, ...] = (
    _SINGLE_BOX,
    _SEPARATE_DB,
    _HORIZONTAL,
    _READ_REPLICAS,
    _CACHE_CDN,
    _AUTO_SCALING,
    _SERVICE_ORIENTED,
    _FEDERATED,
)


def stage(key: int | str) -> Stage:
    """The stage with this number or name; raises KeyError when there is none."""
    for candidate in STAGES:
        if key in (candidate.number, candidate.name, str(candidate.number)):
            return candidate
    raise KeyError(f"no stage {key!r}; known: {[s.name for s in STAGES]}")
