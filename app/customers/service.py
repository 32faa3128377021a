"""The customers module's public API: accounts, sign-in, and the admin role."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Integer, bindparam, exists, insert, select, update
from sqlalchemy.exc import IntegrityError

from app.adapters.db import Database, Queued, Tx, send
from app.adapters.ratelimit import Budget, RateLimit
from app.customers.domain import normalise_email, password_problem
from app.customers.models import Customer
from app.customers.schemas import CustomerRead, SignUp, TokenRead
from app.kernel.errors import Conflict, InvalidRequest, NotFound, TooManyRequests, Unauthenticated
from app.kernel.models import utcnow
from app.kernel.security import Passwords, Principal, Role, TokenIssuer
from app.kernel.settings import Settings

_READ = select(Customer.id, Customer.email, Customer.full_name, Customer.role, Customer.created_at)
# A constant, so that the fast read path compiles it once, not once per request.
_READ_BY_ID = _READ.where(Customer.id == bindparam("customer_id"))
_EMAIL = select(Customer.email).where(Customer.id == bindparam("customer_id"))


async def sign_up(
    db: Database, passwords: Passwords, *, data: SignUp, role: Role = Role.CUSTOMER
) -> CustomerRead:
    """Create an account; raises InvalidRequest for a weak password, Conflict for a taken email."""
    email = normalise_email(data.email)
    problem = password_problem(data.password, email=email)
    if problem:
        raise InvalidRequest("password", problem)
    password_hash = await passwords.hash(data.password)
    try:
        async with db.write() as conn:
            customer_id = (
                await conn.execute(
                    insert(Customer)
                    .values(
                        email=email,
                        full_name=data.full_name,
                        password_hash=password_hash,
                        role=role.value,
                        created_at=utcnow(),
                    )
                    .returning(Customer.id)
                )
            ).scalar_one()
            row = (await conn.execute(_READ.where(Customer.id == customer_id))).one()
    except IntegrityError as exc:
        raise Conflict("an account with this email exists", field="email") from exc
    return CustomerRead.model_validate(row._mapping)


@dataclass(frozen=True, slots=True)
class SignInLimits:
    """Failed sign-ins allowed per window, per e-mail and per client address."""

    limit: RateLimit
    per_email: int
    per_client: int

    @classmethod
    def configured(cls, limit: RateLimit, settings: Settings) -> SignInLimits:
        """The limits SHOP_SIGN_IN_FAILURES_PER_EMAIL / _PER_CLIENT set, counted by `limit`."""
        return cls(
            limit=limit,
            per_email=settings.sign_in_failures_per_email,
            per_client=settings.sign_in_failures_per_client,
        )


async def sign_in(
    db: Database,
    passwords: Passwords,
    tokens: TokenIssuer,
    *,
    email: str,
    password: str,
    limits: SignInLimits | None = None,
    client: str = "unknown",
) -> TokenRead:
    """A bearer token for the account.

    Raises Unauthenticated without saying which part was wrong, and TooManyRequests (429)
    once the e-mail or the client address has failed too often in the current window. A hash
    made with older cost settings is replaced by one made with the current ones.
    """
    email = normalise_email(email)
    keys = [f"email:{email}", f"client:{client}"]
    if limits is not None:
        wait = await limits.limit.retry_after(
            [Budget(keys[0], limits.per_email), Budget(keys[1], limits.per_client)]
        )
        if wait is not None:
            raise TooManyRequests("too many failed sign-ins; try again later", retry_after_s=wait)
    # From the primary: a sign-in right after a sign-up (on another instance, without the
    # read-after token) must not answer 401 from a lagging replica, nor count that failure.
    async with db.read(primary=True) as conn:
        row = (
            await conn.execute(
                select(Customer.id, Customer.role, Customer.password_hash).where(
                    Customer.email == email
                )
            )
        ).one_or_none()
    if row is None:
        await passwords.verify_nothing(password)
    if row is None or not await passwords.verify(row.password_hash, password):
        if limits is not None:
            await limits.limit.record_failure(keys)
        raise Unauthenticated("wrong email or password")
    if passwords.needs_rehash(row.password_hash):
        await _rehash(
            db, passwords, customer_id=row.id, old_hash=row.password_hash, password=password
        )
    token, ttl = tokens.issue(Principal(customer_id=row.id, role=Role(row.role)))
    return TokenRead(access_token=token, expires_in=ttl)


async def _rehash(
    db: Database, passwords: Passwords, *, customer_id: int, old_hash: str, password: str
) -> None:
    new_hash = await passwords.hash(password)
    async with db.write() as conn:
        # Only over the hash that was checked: a password changed meanwhile is kept.
        await conn.execute(
            update(Customer)
            .where(Customer.id == customer_id, Customer.password_hash == old_hash)
            .values(password_hash=new_hash)
        )


_ROLE = select(Customer.role).where(Customer.id == bindparam("customer_id"))


class Accounts:
    """Whether an account exists and its role, as the token check needs it on every request.

    Each process keeps what it read for `ttl_s` seconds, so a deleted account or a changed
    role takes effect within that bound (plus replica lag) at the cost of one primary-key read
    per account and process per `ttl_s`. An account a replica does not know is read again on
    the primary, so a token used right after its sign-up is not refused for replica lag.
    """

    max_entries = 100_000

    def __init__(self, db: Database, *, ttl_s: float) -> None:
        self._db = db
        self._ttl_s = ttl_s
        self._known: dict[int, tuple[Role | None, float]] = {}

    async def current_role(self, customer_id: int) -> Role | None:
        now = time.monotonic()
        known = self._known.get(customer_id)
        if known is not None and known[1] > now:
            return known[0]
        row = await self._db.fetch_one(_ROLE, customer_id=customer_id)
        if row is None:
            # A token is only issued for an account that exists: a replica that knows none
            # may just lag behind the sign-up, so the primary has the last word.
            row = await self._db.fetch_one(_ROLE, primary=True, customer_id=customer_id)
        role = Role(row["role"]) if row is not None else None
        # "No such account" is not kept: read from a lagging replica, it may be an account
        # that is only seconds old.
        if self._ttl_s > 0 and role is not None:
            if len(self._known) >= self.max_entries:
                self._known.clear()
            self._known[customer_id] = (role, now + self._ttl_s)
        return role


async def get_customer(db: Database, *, customer_id: int) -> CustomerRead:
    """An account, from a replica that may answer this request (or the primary); NotFound."""
    row = await db.fetch_one(_READ_BY_ID, customer_id=customer_id)
    if row is None:
        raise NotFound("customer", customer_id)
    return CustomerRead.model_validate(row)


def exists_clause(param: str = "customer_id") -> ColumnElement[bool]:
    """ "The customer named by the bind parameter `param` exists": for another module's
    statement that must not act for an account that is gone (stage 8's reservation, in the
    database that holds the customers, where the orders' shard cannot check it)."""
    return exists().where(Customer.id == bindparam(param, type_=Integer()))


async def send_email_read(conn: Tx, *, customer_id: int) -> Queued:
    """Queue the read of an account's e-mail address in the caller's transaction (pipelined
    blocks included; see `send`): its one row has the column `email`, none if no account."""
    return await send(conn, _EMAIL, {"customer_id": customer_id})


async def set_role(db: Database, *, email: str, role: Role) -> CustomerRead:
    """Give an existing account a role (the `shop admin` command uses this)."""
    async with db.write() as conn:
        customer_id = (
            await conn.execute(
                update(Customer)
                .where(Customer.email == normalise_email(email))
                .values(role=role.value)
                .returning(Customer.id)
            )
        ).scalar_one_or_none()
        if customer_id is None:
            raise NotFound("customer", email)
        row = (await conn.execute(_READ.where(Customer.id == customer_id))).one()
    return CustomerRead.model_validate(row._mapping)


async def bulk_create_customers(
    db: Database, *, rows: list[dict[str, str]], password_hash: str
) -> int:
    """Insert many customers sharing one password hash (demo seeding); returns the count."""
    now = utcnow()
    async with db.write() as conn:
        for first in range(0, len(rows), 1000):
            await conn.execute(
                insert(Customer),
                [
                    {
                        "email": normalise_email(r["email"]),
                        "full_name": r["full_name"],
                        "password_hash": password_hash,
                        "role": Role.CUSTOMER.value,
                        "created_at": now,
                    }
                    for r in rows[first : first + 1000]
                ],
            )
    return len(rows)
