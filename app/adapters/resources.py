"""Everything a process makes in its lifespan (engines, pools, clients, the mailer), in one
object: app.state.resources in the web app, built by app/main.py's `open_resources`."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

from app.adapters.assets import Assets
from app.adapters.cache import Cache
from app.adapters.db import Database, Databases
from app.adapters.dynamodb import VersionedTable
from app.adapters.mail import LogMailer, Mailer
from app.adapters.outbox import Relay
from app.adapters.ratelimit import RateLimit
from app.adapters.replicas import PositionTokens
from app.kernel.security import AccountLookup, Passwords, TokenIssuer, TokenVerifier
from app.kernel.settings import Settings


@dataclass(slots=True)
class Resources:
    """Everything made in the lifespan; one per process, kept on app.state.resources."""

    settings: Settings
    db: Database
    databases: Databases
    """The write databases by function: `db` in every role before stage 8's federation."""
    tokens: TokenIssuer
    verifier: TokenVerifier
    passwords: Passwords
    accounts: AccountLookup
    sign_in_limit: RateLimit
    assets: Assets
    """Where uploaded images go (S3 or a local folder) and the URLs of /static/ files."""
    redis: Redis | None = None
    positions: PositionTokens | None = None
    """Signs the read-after tokens of read-your-writes; None without replicas."""
    cache: Cache | None = None
    """The response cache (stage 5): None without SHOP_REDIS_URL."""
    carts_table: VersionedTable | None = None
    """The carts' DynamoDB table (stage 5), with its client and threads: None without
    SHOP_CARTS_TABLE."""
    relay: Relay | None = None
    """Publishes outbox events to the queue (stage 7): None without SHOP_QUEUE_URL."""
    mailer: Mailer = field(default_factory=LogMailer)
    """Outgoing e-mail: SES with SHOP_MAIL_SENDER, the log otherwise."""
    draining: bool = False
    """Set on SIGTERM: /readyz answers 503 while the process finishes what it has."""
