"""Realistic demo data: products with names, prices, stock and a placeholder image; customers
who can sign in."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import select

from app.adapters.assets import static_name
from app.adapters.db import Database
from app.catalog import service as catalog
from app.catalog.models import Product
from app.customers import service as customers
from app.customers.models import Customer
from app.kernel.security import Passwords

DEMO_PASSWORD = "demo-password-1"
CHUNK = 2000

_ADJECTIVES = (
    "Compact",
    "Rugged",
    "Classic",
    "Ergonomic",
    "Lightweight",
    "Heavy-duty",
    "Vintage",
    "Modern",
    "Wireless",
    "Handmade",
    "Organic",
    "Recycled",
    "Premium",
    "Everyday",
    "Foldable",
)
_MATERIALS = (
    "Oak",
    "Steel",
    "Cotton",
    "Bamboo",
    "Leather",
    "Ceramic",
    "Wool",
    "Glass",
    "Copper",
    "Linen",
    "Aluminium",
    "Walnut",
    "Cork",
    "Canvas",
    "Granite",
)
_NOUNS = (
    "Desk Lamp",
    "Backpack",
    "Coffee Mug",
    "Notebook",
    "Chair",
    "Water Bottle",
    "Headphones",
    "Cutting Board",
    "Blanket",
    "Plant Pot",
    "Keyboard",
    "Wallet",
    "Tea Kettle",
    "Bookshelf",
    "Bike Bell",
    "Umbrella",
    "Picture Frame",
    "Alarm Clock",
    "Apron",
    "Serving Bowl",
)
_FIRST = (
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Edsger",
    "Frances",
    "Donald",
    "Radia",
    "Tim",
    "Hedy",
    "Dennis",
    "Katherine",
    "John",
    "Sophie",
    "Niklaus",
)
_LAST = (
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Dijkstra",
    "Allen",
    "Knuth",
    "Perlman",
    "Berners-Lee",
    "Lamarr",
    "Ritchie",
    "Johnson",
    "Backus",
    "Wilson",
    "Wirth",
)

# The colour of each material's placeholder image (app/static/placeholders/<material>.png).
PLACEHOLDER_COLOURS: dict[str, tuple[int, int, int]] = {
    "Oak": (176, 131, 79),
    "Steel": (128, 136, 144),
    "Cotton": (240, 236, 226),
    "Bamboo": (196, 178, 108),
    "Leather": (122, 72, 40),
    "Ceramic": (222, 214, 200),
    "Wool": (200, 190, 176),
    "Glass": (170, 210, 220),
    "Copper": (184, 115, 51),
    "Linen": (230, 220, 196),
    "Aluminium": (190, 196, 200),
    "Walnut": (94, 62, 40),
    "Cork": (200, 160, 110),
    "Canvas": (210, 196, 160),
    "Granite": (110, 110, 112),
}
PLACEHOLDER_SIZE = 64


def placeholder_pixels(rgb: tuple[int, int, int], *, size: int = PLACEHOLDER_SIZE) -> bytes:
    """The raw RGB rows of a placeholder: the colour, with a darker frame of 4 pixels."""
    dark = bytes(c * 3 // 4 for c in rgb)
    fill = bytes(rgb)
    frame_row = dark * size
    inner_row = dark * 4 + fill * (size - 8) + dark * 4
    return b"".join(frame_row if y < 4 or y >= size - 4 else inner_row for y in range(size))


def placeholder_png(rgb: tuple[int, int, int], *, size: int = PLACEHOLDER_SIZE) -> bytes:
    """A small PNG of one colour (no imaging library: PNG is zlib-compressed rows in chunks)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    pixels = placeholder_pixels(rgb, size=size)
    stride = size * 3
    rows = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def placeholder_file(material: str) -> str:
    """The logical name of a material's placeholder among the app's static files."""
    return f"placeholders/{material.lower()}.png"


Progress = Callable[[str, int, int], None]


def product_row(n: int, rng: random.Random) -> dict[str, Any]:
    adjective, material, noun = rng.choice(_ADJECTIVES), rng.choice(_MATERIALS), rng.choice(_NOUNS)
    price = round(rng.lognormvariate(7.8, 0.9))  # cents: a median of about 25 units
    return {
        "sku": f"DEMO-{n:07d}",
        "name": f"{adjective} {material} {noun}",
        "description": f"A {adjective.lower()} {noun.lower()} made of {material.lower()}.",
        "price_cents": max(99, min(price, 5_000_00)),
        # A fingerprinted static file: served by the app, or by the CDN once published.
        "image_key": static_name(placeholder_file(material)),
        "initial_stock": rng.choice((0, 5, 20, 50, 100, 250, 1000)),
    }


def customer_row(n: int, rng: random.Random) -> dict[str, str]:
    return {
        "email": f"customer{n}@example.com",
        "full_name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
    }


def _missing(wanted: int, existing: set[int]) -> Iterator[list[int]]:
    numbers = [n for n in range(1, wanted + 1) if n not in existing]
    for first in range(0, len(numbers), CHUNK):
        yield numbers[first : first + CHUNK]


async def seed(
    db: Database,
    passwords: Passwords,
    *,
    products: int,
    customers_count: int,
    progress: Progress,
    random_seed: int = 42,
) -> tuple[int, int]:
    """Make sure demo products 1..N and customers 1..M exist; returns how many were added.

    Running it again adds nothing, so `make run` can call it every time.
    """
    async with db.read() as conn:
        skus = (await conn.execute(select(Product.sku).where(Product.sku.like("DEMO-%")))).scalars()
        have_products = {int(s[5:]) for s in skus if s[5:].isdigit()}
        emails = (
            await conn.execute(select(Customer.email).where(Customer.email.like("customer%")))
        ).scalars()
        have_customers = {int(e[8 : e.index("@")]) for e in emails if e[8 : e.index("@")].isdigit()}
    added_products = added_customers = 0
    for numbers in _missing(products, have_products):
        rows = [product_row(n, random.Random(random_seed * 1_000_003 + n)) for n in numbers]
        added_products += await catalog.bulk_create_products(db, rows=rows)
        progress("products", added_products, products - len(have_products))
    if customers_count > len(have_customers):
        shared_hash = await passwords.hash(DEMO_PASSWORD)
        for numbers in _missing(customers_count, have_customers):
            rows = [customer_row(n, random.Random(random_seed * 7_919 + n)) for n in numbers]
            added_customers += await customers.bulk_create_customers(
                db, rows=rows, password_hash=shared_hash
            )
            progress("customers", added_customers, customers_count - len(have_customers))
    return added_products, added_customers
