"""The customers module's public API: accounts, sign-in, and the admin role."""

from __future__ import annotations

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from app.core.db import Database
from app.core.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from app.core.models import utcnow
from app.core.security import Passwords, Principal, Role, TokenIssuer
from app.customers.domain import normalise_email, password_problem
from app.customers.models import Customer
from app.customers.schemas import CustomerRead, SignUp, TokenRead

_READ = select(Customer.id, Customer.email, Customer.full_name, Customer.role, Customer.created_at)


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


async def sign_in(
    db: Database, passwords: Passwords, tokens: TokenIssuer, *, email: str, password: str
) -> TokenRead:
    """A bearer token for the account; raises Unauthenticated, without saying which part was
    wrong."""
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(Customer.id, Customer.role, Customer.password_hash).where(
                    Customer.email == normalise_email(email)
                )
            )
        ).one_or_none()
    if row is None:
        await passwords.verify_nothing(password)
        raise Unauthenticated("wrong email or password")
    if not await passwords.verify(row.password_hash, password):
        raise Unauthenticated("wrong email or password")
    token, ttl = tokens.issue(Principal(customer_id=row.id, role=Role(row.role)))
    return TokenRead(access_token=token, expires_in=ttl)


async def get_customer(db: Database, *, customer_id: int) -> CustomerRead:
    async with db.read() as conn:
        row = (await conn.execute(_READ.where(Customer.id == customer_id))).one_or_none()
    if row is None:
        raise NotFound("customer", customer_id)
    return CustomerRead.model_validate(row._mapping)


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
