"""Who is calling: password hashing, token issuing, and token verification behind one interface.

`TokenVerifier` is the only thing routes depend on, so tokens from another issuer (Amazon Cognito
via JWKS, say) can be accepted by adding a verifier, without touching any domain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol, TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.kernel.errors import Unauthenticated

T = TypeVar("T")


MAX_ACCOUNT_ID = 2_147_483_647
"""Account ids are 32-bit integers in the database."""


class Role(StrEnum):
    CUSTOMER = "customer"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    customer_id: int
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


class AccountLookup(Protocol):
    async def current_role(self, customer_id: int) -> Role | None:
        """The account's role now, or None when there is no such account."""
        ...


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Principal:
        """Return the caller, or raise Unauthenticated."""
        ...


class TokenIssuer(Protocol):
    def issue(self, principal: Principal) -> tuple[str, int]:
        """Return a bearer token and its lifetime in seconds."""
        ...


class LocalTokens:
    """HS256 tokens signed with the shop's own key: issuer and verifier."""

    algorithm = "HS256"

    cache_size = 10_000

    def __init__(self, *, secret: str, issuer: str, ttl_s: int) -> None:
        self._secret = secret
        self._issuer = issuer
        self._ttl_s = ttl_s
        # Verified tokens and their expiry: a signature check costs more than a product read,
        # and a client sends the same token with every request until it expires.
        self._verified: dict[str, tuple[Principal, float]] = {}

    def issue(self, principal: Principal) -> tuple[str, int]:
        now = datetime.now(UTC)
        claims = {
            "sub": str(principal.customer_id),
            "role": principal.role.value,
            "iss": self._issuer,
            "iat": now,
            "exp": now + timedelta(seconds=self._ttl_s),
        }
        return jwt.encode(claims, self._secret, algorithm=self.algorithm), self._ttl_s

    def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None and known[1] > time.time():
            return known[0]
        principal, expires = self._verify(token)
        if len(self._verified) >= self.cache_size:
            self._verified.clear()
        self._verified[token] = (principal, expires)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self.algorithm],
                issuer=self._issuer,
                options={"require": ["sub", "exp", "iss"]},
            )
            principal = Principal(
                customer_id=account_id(claims["sub"]), role=Role(str(claims.get("role")))
            )
            return principal, float(claims["exp"])
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            raise Unauthenticated("invalid or expired token") from exc


def account_id(subject: object) -> int:
    """The account id in a token's subject: decimal digits naming an id the tables can hold.

    Raises ValueError otherwise, so that a subject like "99999999999999999999" is a bad token
    (401), not a database error.
    """
    if not isinstance(subject, str) or not (subject.isascii() and subject.isdigit()):
        raise ValueError("the subject is not an account id")
    value = int(subject)
    if not 1 <= value <= MAX_ACCOUNT_ID:
        raise ValueError("the subject is out of range")
    return value


class Passwords:
    """argon2id hashing on a small pool of threads of its own.

    Hashing is deliberately slow; on threads of its own, a flood of sign-ins queues behind
    itself instead of taking the event loop's default threads from every other task.
    """

    def __init__(self, *, time_cost: int = 3, memory_kib: int = 65536, threads: int = 2) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="passwords")
        # Built now, not on the first unknown e-mail: that first sign-in would otherwise take
        # twice as long as the others and tell an attacker the e-mail has no account.
        self._decoy_hash = self._hasher.hash("not-a-real-password")

    async def _in_thread(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, work)

    async def hash(self, password: str) -> str:
        return await self._in_thread(lambda: self._hasher.hash(password))

    async def verify(self, stored_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(stored_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        return await self._in_thread(check)

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the hash was made with other cost settings than the current ones."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True

    async def verify_nothing(self, password: str) -> None:
        """Spend as long as a real check, for an unknown account: sign-in then takes the same
        time whether or not the email has an account, so timing does not reveal which do."""
        await self.verify(self._decoy_hash, password)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
