"""`shop assets publish` puts the app's static files in the bucket the way CloudFront serves
them: fingerprinted names under static/, cacheable for a year, and a manifest to find them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from app.adapters.assets import IMMUTABLE, static_files
from tests.wheel import build_wheel

SHOP = shutil.which("shop", path=str(Path(sys.executable).parent)) or "shop"
BUCKET = "shop-assets-e2e"


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()


def publish(s3: Any, tmp_path: Path, *args: str, bucket: str | None = BUCKET) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOP_", "AWS_"))}
    env |= {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "SHOP_AWS_REGION": "us-east-1",
        "SHOP_AWS_ENDPOINT_URL": s3.meta.endpoint_url,
        "SHOP_SQLITE_PATH": str(tmp_path / "shop.db"),
    }
    if bucket:
        env["SHOP_ASSETS_BUCKET"] = bucket
    return subprocess.run(
        [SHOP, "assets", "publish", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_publish_uploads_every_static_file_under_its_fingerprint_with_a_manifest(
    s3: Any, tmp_path: Path
) -> None:
    result = publish(s3, tmp_path)

    assert result.returncode == 0, result.stderr
    files = static_files()
    assert len(files) >= 2  # the stylesheet and the placeholders at least
    for logical, item in files.items():
        key = f"static/{item.name}"
        assert item.digest[:12] in key
        stored = s3.get_object(Bucket=BUCKET, Key=key)
        assert stored["CacheControl"] == IMMUTABLE, key
        assert stored["ContentType"] == item.content_type
        assert stored["Body"].read() == item.path.read_bytes(), logical
    manifest = s3.get_object(Bucket=BUCKET, Key="static/manifest.json")
    assert manifest["CacheControl"] == "no-cache"
    assert json.loads(manifest["Body"].read()) == {k: v.name for k, v in files.items()}
    css = s3.head_object(Bucket=BUCKET, Key=f"static/{files['css/shop.css'].name}")
    assert css["ContentType"].startswith("text/css")


def test_publishing_again_uploads_only_the_manifest(s3: Any, tmp_path: Path) -> None:
    assert publish(s3, tmp_path).returncode == 0
    again = publish(s3, tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["static/manifest.json"]
    assert f"{len(static_files())} already there" in again.stderr


def test_a_dry_run_names_the_keys_and_writes_nothing(tmp_path: Path, s3: Any) -> None:
    result = publish(s3, tmp_path, "--dry-run", bucket="shop-assets-not-made")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(
        f"static/{item.name}" for item in static_files().values()
    )


def test_without_a_bucket_publish_says_what_to_set(s3: Any, tmp_path: Path) -> None:
    result = publish(s3, tmp_path, bucket=None)
    assert result.returncode != 0
    assert "SHOP_ASSETS_BUCKET" in result.stderr


def test_the_wheel_carries_the_static_files(tmp_path: Path) -> None:
    """The image installs the wheel: `shop assets publish` and /static/ need the files there."""
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"app/static/{logical}" for logical in static_files()} <= names
