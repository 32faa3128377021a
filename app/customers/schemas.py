"""Customer request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import EmailStr, Field

from app.customers.domain import MAX_PASSWORD, MIN_PASSWORD
from app.kernel.schemas import Name, ReadSchema, Schema
from app.kernel.security import Role


class SignUp(Schema):
    email: EmailStr
    password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)
    full_name: Name


class SignIn(Schema):
    email: EmailStr
    password: str = Field(max_length=MAX_PASSWORD)


class TokenRead(ReadSchema):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class CustomerRead(ReadSchema):
    id: int
    email: str
    full_name: str
    role: Role
    created_at: datetime
