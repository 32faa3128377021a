"""The errors a service may raise; each maps to one HTTP status in web.http.

Plain Python on purpose: domain rules raise these without importing any framework.
"""

from __future__ import annotations

from collections.abc import Sequence


class ShopError(Exception):
    """Base of every error a client can cause; never a 500."""

    status_code = 400

    def __init__(self, message: str, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class NotFound(ShopError):
    status_code = 404

    def __init__(self, what: str, ident: object) -> None:
        super().__init__(f"{what} {ident} not found", resource=what, id=ident)


class Conflict(ShopError):
    """The request is well formed but the current state forbids it."""

    status_code = 409


class IllegalTransition(Conflict):
    def __init__(self, what: str, current: str, target: str, allowed: Sequence[str]) -> None:
        allowed_text = ", ".join(allowed) if allowed else "none"
        super().__init__(
            f"{what} cannot go from {current!r} to {target!r}; allowed from {current!r}: "
            f"{allowed_text}",
            current=current,
            requested=target,
            allowed=list(allowed),
        )


class InvalidRequest(ShopError):
    """Semantically invalid input that schemas alone cannot catch (answers 422)."""

    status_code = 422

    def __init__(self, field: str, reason: str, *, location: str = "body") -> None:
        super().__init__(reason, field=field)
        self.field = field
        self.location = location


class Unauthenticated(ShopError):
    status_code = 401


class Forbidden(ShopError):
    status_code = 403


class TooManyRequests(ShopError):
    """Too many attempts; the client may try again after `retry_after_s` seconds."""

    status_code = 429

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class Unavailable(ShopError):
    """Not now, through no fault of the client's: it may retry after `retry_after_s` seconds
    (answers 503)."""

    status_code = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
