"""Product images: admins upload them, the shop stores them under their content hash (S3 at
stage 5, its own folder otherwise), and product answers carry their URL from the next read on."""

from __future__ import annotations

import hashlib
import socket
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from fastapi import FastAPI

from app.adapters.assets import IMMUTABLE, Assets, static_files
from app.adapters.resources import Resources
from app.seed import (
    PLACEHOLDER_COLOURS,
    placeholder_file,
    placeholder_pixels,
    placeholder_png,
    seed,
)
from tests.conftest import test_settings
from tests.integration.conftest import User, make_product

PNG = placeholder_png((200, 40, 40))
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 100
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 100
BUCKET = "shop-assets-test"
CDN = "https://cdn.example.test"


def hashed(data: bytes, extension: str) -> str:
    return f"images/{hashlib.sha256(data).hexdigest()[:16]}.{extension}"


@pytest.fixture
def local_assets(resources: Resources, tmp_path: Path) -> Iterator[Assets]:
    """The session's app stores images in a folder of this test's own."""
    original = resources.assets
    resources.assets = Assets(base_url=None, folder=tmp_path / "assets")
    yield resources.assets
    resources.assets = original


async def upload(
    client: httpx.AsyncClient, product_id: int, data: bytes, headers: dict[str, str]
) -> httpx.Response:
    return await client.put(
        f"/admin/products/{product_id}/image",
        content=data,
        headers={**headers, "Content-Type": "application/octet-stream"},
    )


async def test_an_uploaded_image_is_kept_under_its_hash_and_served_by_the_app(
    client: httpx.AsyncClient, resources: Resources, admin: User, local_assets: Assets
) -> None:
    product = await make_product(resources)

    response = await upload(client, product.id, PNG, admin.headers)

    assert response.status_code == 200, response.text
    key = hashed(PNG, "png")
    assert response.json()["image_key"] == key
    assert response.json()["image_url"] == f"/static/{key}"
    assert local_assets.folder is not None
    assert (local_assets.folder / key).read_bytes() == PNG
    assert (local_assets.folder / key).stat().st_mode & 0o777 == 0o644  # a web server reads it
    served = await client.get(f"/static/{key}")
    assert served.status_code == 200
    assert served.content == PNG
    assert served.headers["content-type"] == "image/png"
    assert served.headers["cache-control"] == IMMUTABLE


async def test_the_url_in_product_answers_changes_at_once(
    client: httpx.AsyncClient, resources: Resources, admin: User, local_assets: Assets
) -> None:
    product = await make_product(resources, name="Framed Print")
    # Both answers are in the cache before the upload.
    for _ in range(2):
        assert (await client.get(f"/products/{product.id}")).json()["image_url"] is None
        await client.get("/products", params={"q": "framed"})

    assert (await upload(client, product.id, PNG, admin.headers)).status_code == 200
    one = (await client.get(f"/products/{product.id}")).json()
    page = (await client.get("/products", params={"q": "framed"})).json()
    assert one["image_url"] == page["items"][0]["image_url"] == f"/static/{hashed(PNG, 'png')}"

    assert (await upload(client, product.id, JPEG, admin.headers)).status_code == 200
    again = (await client.get(f"/products/{product.id}")).json()
    assert again["image_url"] == f"/static/{hashed(JPEG, 'jpg')}"


@pytest.mark.parametrize(
    ("data", "extension", "media_type"),
    [(PNG, "png", "image/png"), (JPEG, "jpg", "image/jpeg"), (WEBP, "webp", "image/webp")],
)
async def test_png_jpeg_and_webp_are_recognised_by_their_first_bytes(
    client: httpx.AsyncClient,
    resources: Resources,
    admin: User,
    local_assets: Assets,
    data: bytes,
    extension: str,
    media_type: str,
) -> None:
    product = await make_product(resources)
    response = await upload(client, product.id, data, admin.headers)
    assert response.json()["image_key"] == hashed(data, extension)
    served = await client.get(response.json()["image_url"])
    assert served.headers["content-type"] == media_type


@pytest.mark.parametrize(
    "data",
    [b"GIF89a" + b"\x00" * 50, b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"", PNG[:5]],
    ids=["gif", "svg", "empty", "truncated-signature"],
)
async def test_anything_else_answers_422_and_changes_nothing(
    client: httpx.AsyncClient, resources: Resources, admin: User, local_assets: Assets, data: bytes
) -> None:
    product = await make_product(resources)
    response = await upload(client, product.id, data, admin.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "body"]
    assert "PNG, JPEG or WebP" in response.json()["detail"][0]["msg"]
    assert (await client.get(f"/products/{product.id}")).json()["image_key"] is None
    assert local_assets.folder is not None
    assert not local_assets.folder.exists()


async def test_the_upload_has_its_own_size_limit_above_the_bodies_of_other_routes(
    client: httpx.AsyncClient, resources: Resources, admin: User, local_assets: Assets
) -> None:
    product = await make_product(resources)
    limit = resources.settings.image_max_bytes
    assert limit > resources.settings.max_body_bytes
    large = PNG + b"\x00" * (limit - len(PNG))  # exactly at the limit: accepted
    assert (await upload(client, product.id, large, admin.headers)).status_code == 200

    too_large = large + b"\x00"
    response = await upload(client, product.id, too_large, admin.headers)
    assert response.status_code == 413
    assert str(limit) in response.json()["detail"]

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for offset in range(0, len(too_large), 256 * 1024):
            yield too_large[offset : offset + 256 * 1024]

    chunked = await client.put(
        f"/admin/products/{product.id}/image", content=streamed(), headers=admin.headers
    )
    assert chunked.status_code == 413
    assert (await client.get(f"/products/{product.id}")).json()["image_key"] == hashed(large, "png")


async def test_only_admins_upload_and_an_unknown_product_stores_nothing(
    client: httpx.AsyncClient,
    resources: Resources,
    admin: User,
    alice: User,
    local_assets: Assets,
) -> None:
    product = await make_product(resources)
    assert (await upload(client, product.id, PNG, alice.headers)).status_code == 403
    assert (await upload(client, product.id, PNG, {})).status_code == 401
    assert (await upload(client, 424242, PNG, admin.headers)).status_code == 404
    assert local_assets.folder is not None
    assert not local_assets.folder.exists()


async def test_seeded_products_show_placeholder_images_the_app_serves(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    await seed(
        resources.db,
        resources.passwords,
        products=5,
        customers_count=0,
        progress=lambda *_: None,
    )
    items = (await client.get("/products", params={"q": "demo-"})).json()["items"]
    assert len(items) == 5
    for item in items:
        assert item["image_key"].startswith("placeholders/")
        served = await client.get(item["image_url"])
        assert served.status_code == 200
        assert served.content.startswith(b"\x89PNG")
        assert served.headers["cache-control"] == IMMUTABLE


def test_the_placeholder_files_are_the_ones_the_seed_generates() -> None:
    files = static_files()
    for material, colour in PLACEHOLDER_COLOURS.items():
        data = files[placeholder_file(material)].path.read_bytes()
        assert data == placeholder_png(colour) or _pixels(data) == placeholder_pixels(colour)
        assert len(data) < 1024


def _pixels(png: bytes) -> bytes:
    """The RGB rows of one of the seed's PNGs (filter byte 0 on every row, one IDAT chunk)."""
    start = png.index(b"IDAT") + 4
    length = int.from_bytes(png[start - 8 : start - 4], "big")
    rows = zlib.decompress(png[start : start + length])
    width = int.from_bytes(png[16:20], "big")
    stride = width * 3 + 1
    return b"".join(rows[y + 1 : y + stride] for y in range(0, len(rows), stride))


# --- stage 5: the same upload, stored in S3 (moto's server) ----------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        client = boto3.client(
            "s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}"
        )
        client.create_bucket(Bucket=BUCKET)
        yield client
    server.stop()


@pytest.fixture(scope="module")
async def s3_app(s3: Any, database_url: str) -> AsyncIterator[FastAPI]:
    """A second instance of the shop, on the same database, with the stage 5 settings. It has
    no Redis: the session app's cache would otherwise hold answers with the other base URL."""
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    settings = test_settings(
        database_url=database_url,
        assets_bucket=BUCKET,
        assets_base_url=CDN,
        aws_region="us-east-1",
        aws_endpoint_url=s3.meta.endpoint_url,
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        application = create_app(settings)
        async with LifespanManager(application, startup_timeout=30):
            yield application


@pytest.fixture
async def s3_client(s3_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=s3_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:
        yield c


async def test_with_a_bucket_the_image_is_an_s3_object_under_its_hash_behind_the_cdn_url(
    s3: Any, s3_client: httpx.AsyncClient, resources: Resources, admin: User
) -> None:
    product = await make_product(resources)

    response = await upload(s3_client, product.id, PNG, admin.headers)

    assert response.status_code == 200, response.text
    key = hashed(PNG, "png")
    stored = s3.get_object(Bucket=BUCKET, Key=f"static/{key}")
    assert stored["Body"].read() == PNG
    assert stored["ContentType"] == "image/png"
    assert stored["CacheControl"] == IMMUTABLE
    read = (await s3_client.get(f"/products/{product.id}")).json()
    assert read["image_url"] == f"{CDN}/static/{key}"
    # The CDN serves it from the bucket; the app keeps no copy.
    assert (await s3_client.get(f"/static/{key}")).status_code == 404


async def test_with_a_bucket_a_refused_upload_writes_no_object(
    s3: Any, s3_client: httpx.AsyncClient, resources: Resources, admin: User, alice: User
) -> None:
    product = await make_product(resources)
    before = s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0)
    assert (await upload(s3_client, product.id, b"GIF89a....", admin.headers)).status_code == 422
    assert (await upload(s3_client, product.id, WEBP, alice.headers)).status_code == 403
    assert (await upload(s3_client, 424242, WEBP, admin.headers)).status_code == 404
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == before


def test_every_static_file_has_a_fingerprinted_name() -> None:
    files = static_files()
    assert "css/shop.css" in files
    for logical, item in files.items():
        stem, _, suffix = logical.rpartition(".")
        assert item.name == f"{stem}.{item.digest[:12]}.{suffix}"
