"""Customer HTTP routes: sign-up, sign-in, and who am I."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.core.deps import DatabaseDep, PrincipalDep, ResourcesDep
from app.customers import service
from app.customers.schemas import CustomerRead, SignIn, SignUp, TokenRead

router = APIRouter(tags=["customers"])


@router.post("/auth/sign-up", response_model=CustomerRead, status_code=status.HTTP_201_CREATED)
async def sign_up(res: ResourcesDep, body: SignUp) -> CustomerRead:
    """Create a customer account. 409 when the email has an account."""
    return await service.sign_up(res.db, res.passwords, data=body)


@router.post("/auth/token", response_model=TokenRead)
async def sign_in(res: ResourcesDep, body: SignIn) -> TokenRead:
    """Exchange email and password for a bearer token. 401 when either is wrong."""
    return await service.sign_in(
        res.db, res.passwords, res.tokens, email=body.email, password=body.password
    )


@router.get("/customers/me", response_model=CustomerRead)
async def me(db: DatabaseDep, principal: PrincipalDep) -> CustomerRead:
    """The signed-in account."""
    return await service.get_customer(db, customer_id=principal.customer_id)
