"""Who is calling: password hashing, token issuing, and token verification behind one interface.

`TokenVerifier` is the only thing routes depend on, so tokens from another issuer (Amazon Cognito
via JWKS, say) can be accepted by adding a verifier, without touching any domain.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.core.errors import Unauthenticated


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
                customer_id=int(claims["sub"]), role=Role(str(claims.get("role")))
            )
            return principal, float(claims["exp"])
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise Unauthenticated("invalid or expired token") from exc


class Passwords:
    """argon2id hashing; verification runs in a thread so it never blocks the event loop."""

    def __init__(self, *, time_cost: int = 3, memory_kib: int = 65536) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(stored_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)

    async def verify_nothing(self, password: str) -> None:
        """Spend as long as a real check, for an unknown account: sign-in then takes the same
        time whether or not the email has an account, so timing does not reveal which do."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash("not-a-real-password")
        await self.verify(self._dummy_hash, password)
