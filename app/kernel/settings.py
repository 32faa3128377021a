"""One settings object for the whole shop, read from SHOP_* environment variables (or a .env file).

Every component the app can use at some stage of the ladder has its address here, so that a stage is
configuration, not code: what is unset is simply absent, and the app works (more slowly) without it.
The CDK stacks in infra/ and the docker compose file set exactly these names.
"""

from __future__ import annotations

import os
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOCAL_JWT_SECRET = "local-development-secret-change-me-0123456789"


class Environment(StrEnum):
    LOCAL = "local"
    TEST = "test"
    PRODUCTION = "production"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHOP_", env_file=".env", extra="ignore", frozen=True
    )
    issues_tokens: ClassVar[bool] = True
    """Whether this process signs or checks tokens: see WorkerSettings."""

    env: Environment = Field(
        Environment.LOCAL,
        description="local, test or production; outside local, default secrets are refused.",
    )

    # --- primary database -------------------------------------------------------------------
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the primary (read-write) database, e.g. "
        "postgresql+psycopg://shop:pw@127.0.0.1:5432/shop. Unset: the embedded SQLite file.",
    )
    sqlite_path: Path | None = Field(
        None,
        description="File of the embedded SQLite default (when no database_url); a relative "
        "path is taken from the folder the command starts in. Unset: shop.db beside the "
        "project when the shop runs from a source checkout, else "
        "$XDG_DATA_HOME/shop/shop.db (~/.local/share/shop/shop.db).",
    )
    database_secret_arn: str | None = Field(
        None,
        description="Secrets Manager secret in the RDS format (host, port, username, password, "
        "dbname). When set, the primary and replica URLs are built from it at start-up, so that "
        "no password is ever in an environment variable, template or user data.",
    )
    database_pool_size: int = Field(
        10, ge=1, le=200, description="Connections each pool keeps per process."
    )
    database_max_overflow: int = Field(
        10, ge=0, le=200, description="Extra connections a write pool may open under load."
    )
    database_pool_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to wait for a free connection before answering 503."
    )
    database_statement_timeout_ms: int = Field(
        15_000,
        ge=0,
        description="PostgreSQL statement_timeout of every connection (0: none). A statement "
        "that runs longer is cancelled and the request answers 503.",
    )
    database_lock_timeout_ms: int = Field(
        5_000,
        ge=0,
        description="PostgreSQL lock_timeout of every connection (0: none): how long a "
        "statement may wait for a row lock before it gives up.",
    )
    database_prepared_statements: bool = Field(
        True,
        description="Run the hottest statements as server-side prepared statements. Turn off "
        "behind a transaction-pooling proxy (PgBouncer in transaction mode, RDS Proxy), which "
        "cannot keep a prepared statement on one server connection.",
    )

    # --- federated databases (stage 8) -----------------------------------------------------
    accounting_database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the accounting database (stage 8's federation): the "
        "ledger, written by `shop worker` from the queue's events. Unset: the primary. Needs "
        "SHOP_QUEUE_URL and SHOP_DATABASE_URL.",
    )
    delivery_database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the delivery database (stage 8's federation): shipments "
        "and their tracking, opened by `shop worker` from the queue's events. Unset: the "
        "primary. Needs SHOP_QUEUE_URL and SHOP_DATABASE_URL.",
    )
    order_shard_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated SQLAlchemy URLs of the order shards (stage 8): each "
        "customer's orders, their lines, Idempotency-Keys and events live in one of them, "
        "found through the directory of logical shards in the primary. Empty: orders live in "
        "the primary. Needs SHOP_QUEUE_URL and SHOP_DATABASE_URL; a shard is a fresh database "
        "(orders already in the primary are not moved).",
    )
    order_shard_secret_arns: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated Secrets Manager secrets in the RDS format of the order "
        "shards (stage 8 on AWS), in shard order, read at start-up like database_secret_arn; "
        "they take the place of order_shard_urls.",
    )
    order_shard_replica_urls: Annotated[list[list[str]], NoDecode] = Field(
        default_factory=list,
        description="The read replicas of the order shards (stage 8): semicolon-separated "
        "groups in shard order, each a comma-separated list of SQLAlchemy URLs of that "
        "shard's streaming replicas (a group may be empty). A customer's order reads go to "
        "them as main's reads go to database_replica_urls, with read-your-writes kept per "
        "shard. Empty: a shard's reads go to its primary.",
    )
    order_shard_replica_hosts: Annotated[list[list[str]], NoDecode] = Field(
        default_factory=list,
        description="As order_shard_replica_urls, as host names (or host:port) that share "
        "the credentials of that shard's secret in order_shard_secret_arns (RDS read "
        "replicas, stage 8 on AWS).",
    )
    order_hold_s: float = Field(
        60,
        ge=1,
        le=3600,
        description="With order shards (stage 8): seconds the stock of an order being placed "
        "stays held before `shop worker` settles it by looking for the order (a request that "
        "fails settles its hold at once, and the worker confirms the holds of committed orders "
        "in batches every worker_purge_every_s; this bounds what a request that died leaves "
        "held).",
    )
    accounting_database_secret_arn: str | None = Field(
        None,
        description="Secrets Manager secret in the RDS format of the accounting database (stage "
        "8 on AWS), read at start-up like database_secret_arn; it takes the place of "
        "accounting_database_url.",
    )
    delivery_database_secret_arn: str | None = Field(
        None,
        description="Secrets Manager secret in the RDS format of the delivery database (stage 8 "
        "on AWS), read at start-up like database_secret_arn; it takes the place of "
        "delivery_database_url.",
    )

    # --- read replicas (stage 4) -----------------------------------------------------------
    database_replica_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated SQLAlchemy URLs of read replicas; reads are spread over "
        "them. Empty: reads go to the primary.",
    )
    database_replica_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated replica host names (or host:port) that share the "
        "credentials of database_secret_arn (RDS read replicas).",
    )
    database_replica_max_lag_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="A replica further behind the primary than this many seconds, at its last "
        "health check, takes no reads until it catches up. A read without a read-after token "
        "(an anonymous visitor's) can therefore be this plus database_replica_check_s old: "
        "the lag may grow between two checks.",
    )
    database_replica_check_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Seconds between two health checks of the replicas (position, lag, "
        "reachable); a stopped replica is skipped within about this long.",
    )

    # --- cache (stage 5) --------------------------------------------------------------------
    redis_url: str | None = Field(
        None, description="redis:// or rediss:// URL of the cache. Unset: no cache."
    )
    redis_auth_secret_arn: str | None = Field(
        None,
        description="Secrets Manager secret holding the Redis AUTH token (ElastiCache), plain "
        "string or JSON with a 'token' key.",
    )
    cache_stock_staleness_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Time to live of every cached catalog answer (product, page). Price and "
        "catalog changes are visible at once (they invalidate); stock taken by orders is not "
        "invalidated, so the stock a visitor sees is at most this many seconds old without "
        "replicas, and with replicas at most this plus database_replica_max_lag_s plus "
        "database_replica_check_s (the answer cached may have been read from a replica that "
        "far behind): see stock_staleness_bound_s.",
    )
    cache_local_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="Longest a process keeps a cached catalog answer in its own memory, in front "
        "of Redis (0: off). A copy never outlives the Redis entry it came from, so "
        "cache_stock_staleness_s still bounds the stock a visitor sees, and at most that much "
        "is used. A change is heard at once over Redis pub/sub and drops those copies "
        "fleet-wide; the layer is off while that subscription or Redis is down, and for a "
        "request carrying its own write's position.",
    )
    cache_local_entries: int = Field(
        10_000, ge=1, le=1_000_000, description="Most answers one process keeps in memory."
    )
    cache_timeout_ms: int = Field(
        50,
        ge=1,
        le=5000,
        description="Longest wait for any Redis call. Past it a cached read is served from the "
        "database and the cache is left alone for cache_backoff_s; sign-in counts its "
        "failures in the process instead.",
    )
    cache_backoff_s: float = Field(
        2.0,
        gt=0,
        le=300,
        description="Seconds between background reconnect attempts after a cache failure; "
        "requests skip the cache until one succeeds.",
    )

    # --- AWS side services (stages 5 and 7) -------------------------------------------------
    aws_region: str | None = Field(None, description="Region for AWS clients.")
    aws_endpoint_url: str | None = Field(
        None, description="Endpoint override for AWS clients (a local moto server)."
    )
    # Set by the stage 5 and 7 stacks already; the app reads them from the issues that add
    # carts, static files and queued order work.
    carts_table: str | None = Field(
        None,
        description="DynamoDB table of carts (stage 5; partition key cart_id, time to live on "
        "expires_at). Unset: carts are kept in the shop's database.",
    )
    cart_ttl_days: int = Field(
        30,
        ge=2,
        le=365,
        description="Days a cart is kept after its last change; an older one reads as empty "
        "(and DynamoDB deletes it). Longer than idempotency_ttl_h, so that a checkout's "
        "Idempotency-Key is forgotten before its cart is.",
    )
    assets_bucket: str | None = Field(None, description="S3 bucket of static files (stage 5).")
    assets_base_url: str | None = Field(
        None, description="Public base URL of static files, e.g. the CloudFront domain."
    )
    queue_url: str | None = Field(
        None, description="SQS queue URL for order side effects (stage 7). Unset: in-request."
    )
    mail_sender: str | None = Field(None, description="SES sender address (stage 7).")

    # --- static files and images (stage 5) --------------------------------------------------
    assets_dir: Path | None = Field(
        None,
        description="Folder of uploaded product images when no assets_bucket is set (the app "
        "serves them under /static/images/). Unset: shop-assets beside the project in a source "
        "checkout, else $XDG_DATA_HOME/shop/assets.",
    )
    image_max_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1024,
        le=50 * 1024 * 1024,
        description="Largest product image an admin may upload; larger answers 413.",
    )
    catalog_max_age_s: int = Field(
        10,
        ge=0,
        le=3600,
        description="Cache-Control max-age of the public catalog answers (GET /products, GET "
        "/products/{id}): how long a CDN or browser may reuse one without asking.",
    )
    outbox_sweep_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="With a queue: every this many seconds, each server process publishes the "
        "order events older than this that are still unpublished (a process that died between "
        "its commit and its publish, a queue that did not answer).",
    )
    worker_batch_size: int = Field(
        10, ge=1, le=10, description="Messages `shop worker` receives per call (SQS: 1-10)."
    )
    worker_wait_s: int = Field(
        10,
        ge=0,
        le=20,
        description="Long-polling wait of `shop worker` for its next messages; on SIGTERM it "
        "finishes this wait and the batch it brings, then exits.",
    )
    worker_metrics_port: int = Field(
        9102,
        ge=0,
        le=65535,
        description="Port of the Prometheus metrics of `shop worker` (0: none).",
    )

    # --- auth -----------------------------------------------------------------------------
    jwt_secret: str = Field(
        LOCAL_JWT_SECRET, min_length=32, description="HS256 signing key of issued tokens."
    )
    jwt_secret_arn: str | None = Field(
        None, description="Secrets Manager secret holding jwt_secret (overrides it)."
    )
    jwt_secret_file: Path | None = Field(
        None,
        description="File holding jwt_secret (overrides it), e.g. a secret mounted by docker "
        "compose; ignored when jwt_secret_arn is set.",
    )
    jwt_issuer: str = Field("shop", description="iss claim of issued tokens.")
    jwt_ttl_s: int = Field(3600, ge=60, le=7 * 24 * 3600, description="Token lifetime.")
    password_time_cost: int = Field(
        3, ge=1, le=10, description="argon2 time cost; lower only for tests and seeding."
    )
    password_memory_kib: int = Field(
        65536, ge=1024, le=1048576, description="argon2 memory cost in KiB."
    )
    password_hash_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="Threads that hash passwords, apart from every other thread: a flood of "
        "sign-ins queues there instead of starving other work.",
    )
    account_check_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a process trusts what it last read of an account (exists, role). "
        "A deleted account or a changed role takes effect within this many seconds (plus "
        "replica lag); 0 reads the account on every request.",
    )
    sign_in_failures_per_email: int = Field(
        10,
        ge=1,
        description="Failed sign-ins allowed per e-mail per window; then 429 with Retry-After.",
    )
    sign_in_failures_per_client: int = Field(
        100,
        ge=1,
        description="Failed sign-ins allowed per client address per window; then 429.",
    )
    sign_in_window_s: int = Field(
        900, ge=1, le=86_400, description="The window of the sign-in limits, in seconds."
    )

    # --- HTTP and business knobs -------------------------------------------------------------
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Larger bodies answer 413.")
    tax_rate_bp: int = Field(2000, ge=0, le=10000, description="Sales tax in basis points.")
    idempotency_ttl_h: int = Field(
        24, ge=24, description="Hours an Idempotency-Key is kept (at least 24)."
    )
    graceful_shutdown_s: int = Field(
        20, ge=1, le=300, description="Seconds uvicorn waits for in-flight requests on stop."
    )
    drain_s: float = Field(
        0,
        ge=0,
        le=300,
        description="Seconds between SIGTERM and closing the listening socket. /readyz answers "
        "503 from the first of them while every other request is still served, so that a load "
        "balancer takes the instance out before it stops accepting connections.",
    )
    http_keepalive_s: int = Field(
        75,
        ge=1,
        le=3600,
        description="Seconds an idle client connection is kept open; keep it above the load "
        "balancer's idle timeout (60 s on an ALB), or the balancer reuses closed connections "
        "and answers 502.",
    )
    workers: int = Field(
        1, ge=1, le=64, description="Server processes `shop serve` starts (one per vCPU)."
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Comma-separated addresses or networks of the proxies in front (load "
        "balancer, CDN origin, reverse proxy) whose X-Forwarded-For and X-Forwarded-Proto are "
        "believed. The client address, which the sign-in limit counts by, is the last one in "
        "X-Forwarded-For that is not one of them.",
    )
    metrics: bool = Field(
        True, description="Serve Prometheus metrics at /metrics and record them per request."
    )
    access_log: bool = Field(
        True, description="One JSON log line per request (request id, route, status, durations)."
    )

    # --- traces -----------------------------------------------------------------------------
    otlp_endpoint: str | None = Field(
        None,
        description="Base URL of an OTLP/HTTP receiver of traces (spans go to its /v1/traces), "
        "e.g. http://127.0.0.1:4318 (a collector, Jaeger). Unset: OpenTelemetry's standard "
        "OTEL_EXPORTER_OTLP_ENDPOINT from the environment, if set (SHOP_OTLP_ENDPOINT wins, an "
        "empty one included); neither: tracing is off, with no tracer provider, "
        "instrumentation or exporter thread at all. See Traces in docs/performance.md.",
    )
    trace_sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of new traces (requests, the relay's sweeps, reconciliations) that "
        "are recorded and exported, 0 to 1; a span with a caller (a worker's message) follows "
        "its caller's decision. Decided before any instrumentation runs: an unrecorded request "
        "runs with the instrumentations suppressed; a recorded one costs CPU in this process "
        "and the collector: measured figures in docs/performance.md.",
    )

    @model_validator(mode="before")
    @classmethod
    def _csv_lists(cls, data: object) -> object:
        if isinstance(data, dict):
            for name in (
                "database_replica_urls",
                "database_replica_hosts",
                "order_shard_urls",
                "order_shard_secret_arns",
            ):
                if name in data:
                    data[name] = _split_csv(data[name])
            for name in ("order_shard_replica_urls", "order_shard_replica_hosts"):
                if isinstance(data.get(name), str):
                    groups = data[name].split(";") if data[name].strip() else []
                    data[name] = [_split_csv(group) for group in groups]
        return data

    @model_validator(mode="before")
    @classmethod
    def _standard_otlp_endpoint(cls, data: object) -> object:
        # OpenTelemetry's own variable is honoured, from the environment only (not .env), when
        # the shop's is not given at all.
        if isinstance(data, dict) and "otlp_endpoint" not in data:
            standard = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            if standard:
                data["otlp_endpoint"] = standard
        return data

    @model_validator(mode="after")
    def _otlp_endpoint_is_a_url(self) -> Self:
        endpoint = self.otlp_endpoint
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise ValueError(
                f"SHOP_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT) must be an http:// or "
                f"https:// base URL of an OTLP/HTTP receiver, e.g. http://127.0.0.1:4318; got "
                f"{endpoint!r}"
            )
        return self

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Self:
        # The default key is published in this repository: a token signed with it is an admin
        # anywhere that accepts it. Only a local shop on its embedded database may use it; a
        # configured database (compose, a stage, a shared server) counts as not local.
        uses_default = (
            self.jwt_secret == LOCAL_JWT_SECRET
            and self.jwt_secret_arn is None
            and self.jwt_secret_file is None
        )
        if uses_default and not self.is_local and self.issues_tokens:
            raise ValueError(
                "SHOP_JWT_SECRET still has its published default, which is only accepted when "
                "SHOP_ENV is 'local' and the shop runs on its embedded database; set "
                "SHOP_JWT_SECRET (e.g. `openssl rand -hex 32`), SHOP_JWT_SECRET_FILE or "
                "SHOP_JWT_SECRET_ARN"
            )
        return self

    @model_validator(mode="after")
    def _federation_needs_a_queue(self) -> Self:
        # A federated database is written by the worker from events, never in the request:
        # in-request mode would need one transaction across two databases.
        federated = [
            name
            for name, where in (
                ("SHOP_ACCOUNTING_DATABASE_URL", self.accounting_database_url),
                ("SHOP_ACCOUNTING_DATABASE_SECRET_ARN", self.accounting_database_secret_arn),
                ("SHOP_DELIVERY_DATABASE_URL", self.delivery_database_url),
                ("SHOP_DELIVERY_DATABASE_SECRET_ARN", self.delivery_database_secret_arn),
                ("SHOP_ORDER_SHARD_URLS", self.order_shard_urls),
                ("SHOP_ORDER_SHARD_SECRET_ARNS", self.order_shard_secret_arns),
            )
            if where
        ]
        if self.order_shard_urls and self.order_shard_secret_arns:
            raise ValueError(
                "give the order shards as SHOP_ORDER_SHARD_URLS or as "
                "SHOP_ORDER_SHARD_SECRET_ARNS, not both: their order numbers the shards"
            )
        for name, replicas, shards in (
            ("SHOP_ORDER_SHARD_REPLICA_URLS", self.order_shard_replica_urls, "URLS"),
            ("SHOP_ORDER_SHARD_REPLICA_HOSTS", self.order_shard_replica_hosts, "SECRET_ARNS"),
        ):
            given = self.order_shard_urls if shards == "URLS" else self.order_shard_secret_arns
            if len(replicas) > 64:  # app/adapters/replicas.py: TOKEN_SHARDS
                raise ValueError(
                    f"{name}: at most 64 shards may have replicas (a read-after token carries "
                    "64 shards' positions)"
                )
            if len(replicas) > len(given):
                raise ValueError(
                    f"{name} names the replicas of {len(replicas)} shards, but "
                    f"SHOP_ORDER_SHARD_{shards} names {len(given)}: one group per shard, in "
                    "shard order"
                )
        if federated and (not self.queue_url or self.is_embedded):
            raise ValueError(
                f"{' and '.join(federated)} (stage 8) need SHOP_QUEUE_URL, whose worker "
                "writes across the databases, and a configured primary (SHOP_DATABASE_URL or "
                "SHOP_DATABASE_SECRET_ARN), not the embedded database"
            )
        return self

    @model_validator(mode="after")
    def _carts_outlive_idempotency_keys(self) -> Self:
        # A forgotten cart starts again at version 1: "cart id + version" must not name a
        # checkout whose key the orders module still remembers.
        if self.cart_ttl_days * 24 <= self.idempotency_ttl_h:
            raise ValueError(
                "SHOP_CART_TTL_DAYS must be longer than SHOP_IDEMPOTENCY_TTL_H (in days)"
            )
        return self

    @property
    def cache_local_copy_s(self) -> float:
        """The in-process layer's longest copy: cache_local_s within the staleness bound."""
        return min(self.cache_local_s, self.cache_stock_staleness_s)

    @property
    def stock_staleness_bound_s(self) -> float:
        """How old the stock a visitor sees can be: the cache's time to live, plus, with
        replicas, the oldest a replica may be when it answers the read that fills the cache
        (its lag bound, plus the check interval over which that lag may grow unnoticed)."""
        if not self.database_replica_urls and not self.database_replica_hosts:
            return self.cache_stock_staleness_s
        return (
            self.cache_stock_staleness_s
            + self.database_replica_max_lag_s
            + self.database_replica_check_s
        )

    @property
    def is_embedded(self) -> bool:
        return self.database_url is None and self.database_secret_arn is None

    @property
    def is_local(self) -> bool:
        """A developer's own shop: local mode on the embedded database."""
        return self.env is Environment.LOCAL and self.is_embedded

    @cached_property
    def embedded_path(self) -> Path:
        """The absolute path of the embedded SQLite file (see sqlite_path)."""
        if self.sqlite_path is not None:
            return self.sqlite_path.expanduser().resolve()
        return default_sqlite_path()

    @cached_property
    def assets_path(self) -> Path:
        """The absolute folder of uploaded images kept on local disk (see assets_dir)."""
        if self.assets_dir is not None:
            return self.assets_dir.expanduser().resolve()
        return default_assets_path()

    @cached_property
    def primary_url(self) -> str:
        """The async SQLAlchemy URL of the primary database (embedded SQLite when unset)."""
        if self.database_url:
            return to_async_url(self.database_url)
        return f"sqlite+aiosqlite:///{self.embedded_path}"

    @property
    def pool_options(self) -> dict[str, Any]:
        """The keyword arguments of every write database's pools (app/adapters/db.py)."""
        return {
            "pool_size": self.database_pool_size,
            "max_overflow": self.database_max_overflow,
            "pool_timeout": self.database_pool_timeout_s,
            "statement_timeout_ms": self.database_statement_timeout_ms,
            "lock_timeout_ms": self.database_lock_timeout_ms,
            "prepared_statements": self.database_prepared_statements,
        }

    @property
    def shard_urls(self) -> list[str]:
        """The async URLs of stage 8's order shards given as URLs, in order (none before it);
        app/adapters/aws.py reads those given as secrets."""
        return [to_async_url(url) for url in self.order_shard_urls]

    @property
    def shard_replica_urls(self) -> list[list[str]]:
        """The async URLs of each order shard's replicas given as URLs, in shard order;
        app/adapters/aws.py adds those given as hosts."""
        return [[to_async_url(url) for url in group] for group in self.order_shard_replica_urls]

    @property
    def replica_options(self) -> dict[str, Any]:
        """The keyword arguments of every replica set's health checks (app/adapters/db.py)."""
        return {
            "replica_max_lag_s": self.database_replica_max_lag_s,
            "replica_check_s": self.database_replica_check_s,
        }

    @property
    def function_urls(self) -> dict[str, str]:
        """The async URLs of stage 8's federated databases given as URLs, by function (none
        before it); app/adapters/aws.py adds those given as secrets."""
        return {
            name: to_async_url(url)
            for name, url in (
                ("accounting", self.accounting_database_url),
                ("delivery", self.delivery_database_url),
            )
            if url
        }


def default_sqlite_path() -> Path:
    """shop.db beside the project in a source checkout, else in the user's data folder."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "app" / "main.py").is_file():
        return checkout / "shop.db"
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).resolve() / "shop" / "shop.db"


def default_assets_path() -> Path:
    """shop-assets beside the project in a source checkout, else in the user's data folder."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "app" / "main.py").is_file():
        return checkout / "shop-assets"
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).resolve() / "shop" / "assets"


def to_async_url(url: str) -> str:
    """Map the URLs people paste (postgres://, postgresql://, sqlite://) onto async drivers."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


def to_sync_url(url: str) -> str:
    """The synchronous twin of an async URL, for Alembic."""
    if url.startswith("sqlite+aiosqlite://"):
        return "sqlite://" + url[len("sqlite+aiosqlite://") :]
    return url


class WorkerSettings(Settings):
    """The settings of `shop worker`, which neither signs nor checks a token: the stack gives
    workers no JWT key, so the published default is not refused here, and the worker never
    makes a token issuer or verifier with it.

    Retention, done by the worker between two batches (app/worker.py):

    - `SHOP_WORKER_RETENTION_H` (360, 15 days): handled `outbox_event` rows and
      `processed_event` rows older than this are deleted. It must outlive every copy of an
      event a queue may still hold (SQS keeps a message, dead-lettered ones included, at most
      14 days): a message received after its `processed_event` rows are gone would be
      handled again, and its e-mail sent twice. Unhandled events are never deleted.
    - `SHOP_WORKER_REDRIVE_AFTER_S` (900; 0: never): an event no worker has finished this
      long after it was recorded (an order still pending: its message lost, dead-lettered or
      never published) is applied by the worker itself, on the same `processed_event` claims,
      so each step still happens once. Keep it above the time the queue itself takes to
      give up on a message (five receives of a 60 s visibility timeout in the stacks), or
      the worker races the queue's own retries (harmless, but wasted work). Checked on the
      same schedule as the purge. `shop worker redrive` moves dead-lettered messages back.
    - `SHOP_WORKER_PURGE_EVERY_S` (60; 0: never): how often the worker purges those rows and
      the Idempotency-Keys older than `SHOP_IDEMPOTENCY_TTL_H`, in batches of
      `SHOP_WORKER_PURGE_BATCH` (1000) rows, one transaction each, at most 10 batches per
      table and pass, so a backlog is worked off over several passes without holding up the
      queue.
    """

    issues_tokens: ClassVar[bool] = False

    worker_retention_h: float = Field(
        360,
        ge=0.1,
        le=24 * 365,
        description="Hours handled outbox events and processed-event records are kept. Keep "
        "it longer than the queue keeps a message (14 days on the stacks, hence 15): a message "
        "delivered again after its record is gone is applied again. At least 0.1 (six "
        "minutes, past a message's five receives of 60 s), for short local runs such as the soak.",
    )
    worker_redrive_after_s: float = Field(
        900,
        ge=0,
        le=14 * 86_400,
        description="Seconds after which an event no worker has finished is applied by the "
        "worker itself (0: never).",
    )
    worker_purge_every_s: float = Field(
        60,
        ge=0,
        le=86_400,
        description="Seconds between two purges by `shop worker` (0: never); stage 8's stock "
        "holds are confirmed and settled on the same schedule.",
    )
    worker_purge_batch: int = Field(
        1000, ge=1, le=100_000, description="Rows deleted per purge transaction."
    )
