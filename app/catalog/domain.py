"""Catalog rules: what a stock level may become, what a shortage reports, what an image is."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from app.kernel.errors import Conflict, InvalidRequest, ShopError

MAX_STOCK = 1_000_000_000


class OutOfStock(Conflict):
    def __init__(self, *, product_id: int, requested: int, available: int) -> None:
        super().__init__(
            f"product {product_id}: {requested} requested, {available} in stock",
            product_id=product_id,
            requested=requested,
            available=available,
        )


class StockLimit(Conflict):
    def __init__(self, *, product_id: int, current: int, adding: int) -> None:
        super().__init__(
            f"product {product_id}: restocking {adding} would exceed {MAX_STOCK} (now {current})",
            product_id=product_id,
            current=current,
            max_stock=MAX_STOCK,
        )


def normalise_sku(sku: str) -> str:
    """SKUs compare case-insensitively: 'ab-1' and 'AB-1' are one product."""
    return sku.strip().upper()


def reservation_order(lines: dict[int, int]) -> list[tuple[int, int]]:
    """Lines sorted by product id: every transaction locks stock rows in one order, so two
    orders for the same products can never deadlock."""
    return sorted(lines.items())


class ReservedItem:
    """What a reservation tells the caller about one line: the price to charge."""

    __slots__ = ("name", "product_id", "quantity", "sku", "unit_price_cents")

    def __init__(
        self, *, product_id: int, sku: str, name: str, unit_price_cents: int, quantity: int
    ) -> None:
        self.product_id = product_id
        self.sku = sku
        self.name = name
        self.unit_price_cents = unit_price_cents
        self.quantity = quantity


@dataclass(frozen=True, slots=True)
class ImageKind:
    extension: str
    media_type: str


PNG = ImageKind("png", "image/png")
JPEG = ImageKind("jpg", "image/jpeg")
WEBP = ImageKind("webp", "image/webp")


class ImageTooLarge(ShopError):
    status_code = 413

    def __init__(self, *, size: int, max_bytes: int) -> None:
        super().__init__(f"the image has {size} bytes; at most {max_bytes} are accepted")


def image_kind(data: bytes) -> ImageKind | None:
    """PNG, JPEG or WebP by their first bytes (what the file is, whatever its name claims)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    return None


def checked_image(data: bytes, *, max_bytes: int) -> tuple[str, ImageKind]:
    """The content-hashed name of an upload (`images/<16 hex of sha256>.<ext>`) and its kind.

    Raises ImageTooLarge (413) past `max_bytes`, InvalidRequest (422) for anything that is not
    a PNG, JPEG or WebP image."""
    if len(data) > max_bytes:
        raise ImageTooLarge(size=len(data), max_bytes=max_bytes)
    kind = image_kind(data)
    if kind is None:
        raise InvalidRequest("body", "not a PNG, JPEG or WebP image (checked by its first bytes)")
    return f"images/{hashlib.sha256(data).hexdigest()[:16]}.{kind.extension}", kind
