"""Building blocks for request and response models: safe text, ids, money, pages."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# No control characters (PostgreSQL refuses NUL in text; the rest is never legitimate input).
_NO_CONTROL = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
_NO_CONTROL_ONE_LINE = r"^[^\x00-\x1f\x7f]*$"

MAX_INT32 = 2_147_483_647
MAX_ORDER_ID = 2**53 - 1
"""The largest order id the API takes or gives: order ids are 64-bit (stage 8's carry their
logical shard), and 2^53 - 1 is the largest integer every JSON client reads exactly."""

Name = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=200, pattern=_NO_CONTROL_ONE_LINE
    ),
]
LongText = Annotated[str, StringConstraints(max_length=5000, pattern=_NO_CONTROL)]
SearchText = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=100, pattern=_NO_CONTROL_ONE_LINE)
]
Id = Annotated[int, Field(ge=1, le=MAX_INT32)]
MAX_CENTS = 100_000_000
"""The largest amount (a price) the shop takes, EUR 1,000,000.00: the API's schemas and the
storefront's forms both check it."""
Cents = Annotated[int, Field(ge=0, le=MAX_CENTS, description="Amount in integer cents.")]
Quantity = Annotated[int, Field(ge=1, le=10_000)]


class Schema(BaseModel):
    """Strict input: unknown fields are refused rather than silently dropped, and a value must
    have its field's JSON type (`true`, `"2"` or `2.0` is not the integer 2)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ReadSchema(BaseModel):
    model_config = ConfigDict(from_attributes=True)


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list; `next_offset` is null on the last page."""

    items: list[T]
    limit: int
    offset: int
    next_offset: int | None
