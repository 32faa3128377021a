"""The storefront's cookies: who is signed in, the CSRF token, and a visitor's cart.

Three cookies, all `HttpOnly` and `SameSite=Lax`, and `Secure` whenever the request reached the
shop over HTTPS (directly, or as a trusted proxy says in `X-Forwarded-Proto`: see
SHOP_FORWARDED_ALLOW_IPS). Over plain HTTP (a stage deployed without a domain) they are not
Secure, or a browser would drop them and nobody could sign in:

- `shop_session`: the bearer token `POST /auth/token` would give (the shop's own signed JWT,
  from `TokenIssuer`), checked on every request exactly as the API checks an `Authorization`
  header: signature, expiry, and the account's current role. Nothing else needs signing.
- `shop_csrf`: a random token that every form repeats in a hidden field (double submit). A
  cross-site form cannot read the cookie, so it cannot send the field; SameSite=Lax keeps the
  cookie off cross-site POSTs as a second line.
- `shop_cart`: the cart of a visitor who has not signed in yet, as `id:qty,id:qty`. It holds no
  price; a forged one only changes the visitor's own cart, and every line is checked again
  (product exists, 1..10000 units, at most 50 products) when it is priced or merged at sign-in.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request, Response

from app.adapters.resources import Resources
from app.kernel.errors import ShopError, Unauthenticated
from app.kernel.security import Principal

SESSION = "shop_session"
CSRF = "shop_csrf"
CART = "shop_cart"
CSRF_FIELD = "csrf_token"
CART_MAX_ITEMS = 50
CART_MAX_QUANTITY = 10_000
_CART_COOKIE_DAYS = 30


class CsrfRefused(ShopError):
    """A form came without the CSRF token of this browser's session (403)."""

    status_code = 403


def set_cookie(response: Response, name: str, value: str, max_age: int, *, secure: bool) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", httponly=True, samesite="lax", secure=secure
    )


def clear_cookie(response: Response, name: str, *, secure: bool) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="lax", secure=secure)


@dataclass(slots=True)
class Visit:
    """What the cookies of one request say, and what its answer must set."""

    principal: Principal | None
    token: str | None
    csrf: str
    cart: dict[int, int]
    new_csrf: bool = False
    cart_changed: bool = False
    signed_out: bool = False
    issued: tuple[str, int] | None = None
    https: bool = False
    """The request reached the shop over HTTPS (as the trusted proxy headers say): the cookies
    this visit sets are then Secure."""

    @property
    def signed_in(self) -> bool:
        return self.principal is not None

    @property
    def is_admin(self) -> bool:
        return self.principal is not None and self.principal.is_admin

    def sign_in(self, token: str, ttl_s: int, principal: Principal) -> None:
        self.issued = (token, ttl_s)
        self.token = token
        self.principal = principal
        # A new token for a new session: a token seen before sign-in is worth nothing after.
        self.csrf = secrets.token_urlsafe(32)
        self.new_csrf = True

    def sign_out(self) -> None:
        self.principal = None
        self.token = None
        self.signed_out = True
        self.csrf = secrets.token_urlsafe(32)
        self.new_csrf = True

    def set_cart(self, cart: dict[int, int]) -> None:
        self.cart = cart
        self.cart_changed = True

    def check_csrf(self, sent: object) -> None:
        """Raises CsrfRefused unless `sent` is this session's token."""
        if (
            self.new_csrf
            or not isinstance(sent, str)
            or not hmac.compare_digest(sent.encode(), self.csrf.encode())
        ):
            raise CsrfRefused("this form has expired or did not come from this shop; reload it")

    def write(self, response: Response, resources: Resources) -> None:
        """Put on `response` the cookies this visit changed."""
        secure = self.https
        if self.issued is not None:
            set_cookie(response, SESSION, self.issued[0], self.issued[1], secure=secure)
        elif self.signed_out:
            clear_cookie(response, SESSION, secure=secure)
        if self.new_csrf:
            ttl = resources.settings.jwt_ttl_s * 24
            set_cookie(response, CSRF, self.csrf, ttl, secure=secure)
        if self.cart_changed:
            if self.cart:
                ttl = _CART_COOKIE_DAYS * 86400
                set_cookie(response, CART, format_cart(self.cart), ttl, secure=secure)
            else:
                clear_cookie(response, CART, secure=secure)


def parse_cart(text: str | None) -> dict[int, int]:
    """`id:qty,id:qty` -> {id: qty}; anything malformed or out of range is dropped."""
    cart: dict[int, int] = {}
    if not text:
        return cart
    for part in text.split(",")[:CART_MAX_ITEMS]:
        ident, _, quantity = part.partition(":")
        if not (ident.isascii() and ident.isdigit() and quantity.isascii() and quantity.isdigit()):
            continue
        if len(ident) > 10 or len(quantity) > 5:
            continue
        product_id, units = int(ident), int(quantity)
        if 1 <= product_id <= 2_147_483_647 and 1 <= units <= CART_MAX_QUANTITY:
            cart[product_id] = units
    return cart


def format_cart(cart: dict[int, int]) -> str:
    return ",".join(f"{p}:{q}" for p, q in sorted(cart.items()))


async def visit_of(request: Request, resources: Resources) -> Visit:
    """The visit behind a request's cookies. A bad or expired session, or one whose account
    is gone, is an anonymous visit (and its cookie is cleared)."""
    principal: Principal | None = None
    token = request.cookies.get(SESSION)
    signed_out = False
    if token:
        try:
            claimed = resources.verifier.verify(token)
        except Unauthenticated:
            claimed = None
        if claimed is not None:
            role = await resources.accounts.current_role(claimed.customer_id)
            if role is not None:
                principal = (
                    claimed if role is claimed.role else Principal(claimed.customer_id, role)
                )
        if principal is None:
            token = None
            signed_out = True
    csrf = request.cookies.get(CSRF)
    new_csrf = not csrf or len(csrf) > 100
    return Visit(
        principal=principal,
        token=token,
        csrf=secrets.token_urlsafe(32) if new_csrf or csrf is None else csrf,
        new_csrf=new_csrf,
        cart=parse_cart(request.cookies.get(CART)),
        signed_out=signed_out,
        https=request.url.scheme == "https",
    )
