"""Static files and uploaded images: where they are stored, under which names, at which URLs.

Every file the shop hands out by URL lives under one path, `/static/`:

- the app's own static files (`app/static/`: a stylesheet, the placeholder images) under
  fingerprinted names, `css/shop.css` -> `css/shop.<12 hex of its sha256>.css`;
- uploaded product images under content-hashed names, `images/<16 hex of its sha256>.png`.

A name changes whenever the content does, so every one of these files can be cached for a year
(`IMMUTABLE`): a new version is a new URL. With `SHOP_ASSETS_BUCKET` set (stage 5) they live in
S3 under the key `static/<name>`, which is where CloudFront's `/static/*` behaviour looks; the app's
own files get there with `shop assets publish`, images when they are uploaded. Without a bucket,
images are written to a local folder (`SHOP_ASSETS_DIR`) and the app serves both kinds itself.
URLs are `SHOP_ASSETS_BASE_URL` + `/static/<name>` (a path on the app itself when unset); the
route that serves them from the app is app/web/assets.py.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import mimetypes
import os
import re
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import boto3

from app.kernel.settings import Settings

IMMUTABLE = "public, max-age=31536000, immutable"
"""Cache-Control of every fingerprinted or content-hashed file."""
MANIFEST_CACHE_CONTROL = "no-cache"
"""The manifest keeps its name, so a cache must ask again before reusing it."""
PREFIX = "static/"
"""Bucket key prefix of every file: CloudFront's `/static/*` behaviour maps to it."""
MANIFEST = "manifest.json"
_FINGERPRINT = 12
_FINGERPRINTED = re.compile(r"^(?P<stem>.+)\.(?P<hash>[0-9a-f]{12})(?P<suffix>\.[A-Za-z0-9]+)$")
IMAGE_KEY = re.compile(r"^images/[0-9a-f]{16}\.(?:png|jpg|webp)$")
"""The names uploaded images are stored under."""
_CONTENT_TYPES = {".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".webp": "image/webp"}


def content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def static_root() -> Path:
    """The app's static folder, as installed (a source checkout or the package)."""
    return Path(str(files("app").joinpath("static")))


@dataclass(frozen=True, slots=True)
class StaticFile:
    name: str
    """The fingerprinted name, e.g. css/shop.0123456789ab.css."""
    path: Path
    digest: str
    content_type: str


def fingerprinted(name: str, data: bytes) -> str:
    """`css/shop.css` -> `css/shop.<12 hex of sha256>.css`."""
    digest = hashlib.sha256(data).hexdigest()[:_FINGERPRINT]
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.{digest}.{suffix}" if dot and "/" not in suffix else f"{name}.{digest}"


def scan_static(root: Path) -> dict[str, StaticFile]:
    """Every file under `root`, by its logical name (posix path relative to `root`)."""
    found: dict[str, StaticFile] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        logical = path.relative_to(root).as_posix()
        if logical.startswith(".") or "/." in logical or "__pycache__" in logical:
            continue
        data = path.read_bytes()
        name = fingerprinted(logical, data)
        found[logical] = StaticFile(
            name=name,
            path=path,
            digest=hashlib.sha256(data).hexdigest(),
            content_type=content_type(logical),
        )
    return found


@functools.cache
def static_files() -> dict[str, StaticFile]:
    """The app's static files by logical name; read once per process."""
    return scan_static(static_root())


@functools.cache
def _by_fingerprint() -> dict[str, StaticFile]:
    return {f.name: f for f in static_files().values()}


def static_name(logical: str) -> str:
    """The fingerprinted name of one of the app's static files; raises KeyError."""
    return static_files()[logical].name


def find_static(name: str) -> StaticFile | None:
    """The app's static file behind a fingerprinted name; None for any other name (a name
    without its fingerprint, or with an old one, is not served: it could be cached for a year)."""
    if _FINGERPRINTED.match(name) is None:
        return None
    return _by_fingerprint().get(name)


def manifest(found: dict[str, StaticFile]) -> bytes:
    """The manifest: logical name -> fingerprinted name, as JSON."""
    return json.dumps({k: v.name for k, v in found.items()}, indent=2, sort_keys=True).encode()


def s3_client(settings: Settings) -> Any:
    """An S3 client of the settings' region and endpoint (blocking: make it in a thread)."""
    return boto3.client(
        "s3", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url
    )


class Assets:
    """Where this process stores images, and the URL of any name under /static/.

    `put` is safe to repeat: names are content hashes, so a second upload of the same bytes
    writes the same object.
    """

    def __init__(
        self,
        *,
        base_url: str | None,
        bucket: str | None = None,
        client: Any = None,
        folder: Path | None = None,
    ) -> None:
        if bucket is not None and client is None:
            raise ValueError("a bucket needs an S3 client")
        if bucket is None and folder is None:
            raise ValueError("without a bucket, images need a local folder")
        self._base = (base_url or "").rstrip("/") + "/static/"
        self.bucket = bucket
        self.folder = folder
        self._client = client

    @classmethod
    async def from_settings(cls, settings: Settings) -> Assets:
        if settings.assets_bucket:
            client = await asyncio.to_thread(s3_client, settings)
            return cls(
                base_url=settings.assets_base_url, bucket=settings.assets_bucket, client=client
            )
        return cls(base_url=settings.assets_base_url, folder=settings.assets_path)

    def url(self, name: str | None) -> str | None:
        """The public URL of a name under /static/ (None for None)."""
        return None if name is None else self._base + name

    async def put(self, name: str, data: bytes, *, media_type: str) -> None:
        """Store `data` under `name` (an IMAGE_KEY), in the bucket or the local folder."""
        if self.bucket is not None:
            await asyncio.to_thread(
                self._client.put_object,
                Bucket=self.bucket,
                Key=PREFIX + name,
                Body=data,
                ContentType=media_type,
                CacheControl=IMMUTABLE,
            )
            return
        assert self.folder is not None
        await asyncio.to_thread(_write_atomically, self.folder / name, data)

    def local_file(self, name: str) -> Path | None:
        """The file of an uploaded image kept on local disk; None in a bucket or when absent."""
        if self.folder is None or IMAGE_KEY.match(name) is None:
            return None
        path = self.folder / name
        return path if path.is_file() else None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the whole file or none: written beside, then renamed into place."""
    if path.is_file():
        return  # the same name is the same content
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            os.fchmod(out.fileno(), 0o644)  # mkstemp's 0600 would hide it from a web server
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass(frozen=True, slots=True)
class Published:
    uploaded: list[str]
    unchanged: list[str]


def publish_static(client: Any, bucket: str, found: dict[str, StaticFile]) -> Published:
    """Upload the static files under `static/<fingerprinted name>` (immutable), skipping those
    already there, then `static/manifest.json` (no-cache). Blocking."""
    present: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX):
        present.update(item["Key"] for item in page.get("Contents", []))
    uploaded: list[str] = []
    unchanged: list[str] = []
    for item in found.values():
        key = PREFIX + item.name
        if key in present:
            unchanged.append(key)
            continue
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=item.path.read_bytes(),
            ContentType=item.content_type,
            CacheControl=IMMUTABLE,
        )
        uploaded.append(key)
    # Last: a reader of the manifest finds every file it names.
    client.put_object(
        Bucket=bucket,
        Key=PREFIX + MANIFEST,
        Body=manifest(found),
        ContentType="application/json",
        CacheControl=MANIFEST_CACHE_CONTROL,
    )
    uploaded.append(PREFIX + MANIFEST)
    return Published(uploaded=uploaded, unchanged=unchanged)
