"""Customer HTTP routes: sign-up, sign-in, and who am I."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from fastapi import APIRouter, Body, Depends, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, EmailStr, Field, ValidationError

from app.customers import service
from app.customers.domain import MAX_PASSWORD
from app.customers.schemas import CustomerRead, SignIn, SignUp, TokenRead
from app.web.deps import DatabaseDep, PrincipalDep, ResourcesDep
from app.web.openapi import conflict, errors

router = APIRouter(tags=["customers"])

FORM = "application/x-www-form-urlencoded"
_DEMO = {"email": "customer1@example.com", "password": "demo-password-1"}


class PasswordForm(BaseModel):
    """The OAuth2 password grant's form (RFC 6749, section 4.3), which the Authorize button of
    /docs sends. Fields other than these are ignored, as OAuth2 asks."""

    grant_type: Literal["password"] | None = None
    username: EmailStr = Field(description="Your e-mail.")
    password: str = Field(max_length=MAX_PASSWORD)
    scope: str = ""
    client_id: str | None = None
    client_secret: str | None = None


def _invalid(error: ValidationError | None = None, **one: Any) -> RequestValidationError:
    """A 422 naming the field, in the shape of FastAPI's own validation errors."""
    found = error.errors() if error is not None else [one]
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in found])


def _form_fields(body: bytes) -> dict[str, str]:
    try:
        return dict(
            parse_qsl(
                body.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=20
            )
        )
    except ValueError:  # not ASCII, bad percent-encoded UTF-8, or too many fields
        raise _invalid(loc=(), msg="not a URL-encoded form", type="value_error") from None


async def _credentials(request: Request) -> SignIn:
    """E-mail and password from a JSON body, or from the OAuth2 password form."""
    body = await request.body()
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    try:
        if media_type == FORM:
            form = PasswordForm.model_validate(_form_fields(body))
            return SignIn(email=form.username, password=form.password)
        return SignIn.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc) from None


_SIGN_IN_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": SignIn.model_json_schema(),
            "examples": {
                "demo customer": {"summary": "A customer `make run` seeds", "value": _DEMO}
            },
        },
        FORM: {
            "schema": PasswordForm.model_json_schema(),
            "examples": {
                "demo customer": {
                    "summary": "The OAuth2 password form (the Authorize button of /docs)",
                    "value": {
                        "grant_type": "password",
                        "username": _DEMO["email"],
                        "password": _DEMO["password"],
                    },
                }
            },
        },
    },
}


@router.post(
    "/auth/sign-up",
    response_model=CustomerRead,
    status_code=status.HTTP_201_CREATED,
    responses=errors(413, 422, 503) | conflict("An account with this e-mail exists."),
)
async def sign_up(
    res: ResourcesDep,
    body: Annotated[
        SignUp,
        Body(
            openapi_examples={
                "new customer": {
                    "summary": "A new customer",
                    "value": {
                        "email": "ada@example.com",
                        "password": "analytical-engine-1843",
                        "full_name": "Ada Lovelace",
                    },
                }
            }
        ),
    ],
) -> CustomerRead:
    """Create a customer account. 409 when the email has an account."""
    return await service.sign_up(res.db, res.passwords, data=body)


@router.post(
    "/auth/token",
    response_model=TokenRead,
    responses=errors(401, 413, 422, 429, 503),
    openapi_extra={"requestBody": _SIGN_IN_BODY},
)
async def sign_in(
    request: Request, res: ResourcesDep, credentials: Annotated[SignIn, Depends(_credentials)]
) -> TokenRead:
    """Exchange email and password for a bearer token. 401 when either is wrong; 429 with
    `Retry-After` after too many failures for the e-mail or from the client's address.

    Send JSON (`email`, `password`) or the OAuth2 password form (`username` is the e-mail),
    as the Authorize button of these docs does."""
    return await service.sign_in(
        res.db,
        res.passwords,
        res.tokens,
        email=credentials.email,
        password=credentials.password,
        limits=service.SignInLimits.configured(res.sign_in_limit, res.settings),
        client=request.client.host if request.client else "unknown",
    )


@router.get("/customers/me", response_model=CustomerRead, responses=errors(401, 503))
async def me(db: DatabaseDep, principal: PrincipalDep) -> CustomerRead:
    """The signed-in account."""
    return await service.get_customer(db, customer_id=principal.customer_id)
