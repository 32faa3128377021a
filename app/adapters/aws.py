"""Secrets Manager look-ups that turn secret ARNs in the settings into working addresses.

Run once at start-up (lifespan), so that no password sits in a template, user data or variable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
from sqlalchemy.engine import URL

from app.kernel.settings import Settings


@dataclass(frozen=True, slots=True)
class Resolved:
    """Addresses and keys after secrets are read."""

    primary_url: str
    replica_urls: list[str]
    jwt_secret: str
    redis_url: str | None
    function_urls: dict[str, str]
    """Stage 8's federated databases by function ("accounting", "delivery"): none before it."""
    shard_urls: list[str]
    """Stage 8's order shards, in shard order: none before it."""
    shard_replica_urls: list[list[str]]
    """Each order shard's replicas, in shard order (a shard may have none)."""


def _secrets_client(settings: Settings) -> Any:
    return boto3.client(
        "secretsmanager",
        region_name=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
    )


def _secret(client: Any, arn: str) -> str:
    value: str = client.get_secret_value(SecretId=arn)["SecretString"]
    return value


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.partition(":")
    return host, int(port) if port else default_port


def read_secret_file(path: Path) -> str:
    """A secret kept in a file (a mounted compose or Kubernetes secret), without its newline."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretProblem(f"cannot read SHOP_JWT_SECRET_FILE {path}: {exc.strerror}") from exc
    if len(value) < 32:
        raise SecretProblem(f"SHOP_JWT_SECRET_FILE {path} holds fewer than 32 characters")
    return value


class SecretProblem(RuntimeError):
    """A secret the settings point at is missing or unusable; the message says which."""


def resolve(settings: Settings) -> Resolved:
    """Read every secret the settings point at (blocking: call it in a thread).

    Raises ValueError when the database secret names no `dbname`.
    """
    primary_url = settings.primary_url
    replica_urls = list(settings.database_replica_urls)
    jwt_secret = settings.jwt_secret
    if settings.jwt_secret_file is not None and not settings.jwt_secret_arn:
        jwt_secret = read_secret_file(settings.jwt_secret_file)
    redis_url = settings.redis_url
    function_urls = dict(settings.function_urls)
    shard_urls = list(settings.shard_urls)
    shard_replica_urls = settings.shard_replica_urls
    function_arns = {
        name: arn
        for name, arn in (
            ("accounting", settings.accounting_database_secret_arn),
            ("delivery", settings.delivery_database_secret_arn),
        )
        if arn
    }
    arns = (settings.database_secret_arn, settings.jwt_secret_arn, settings.redis_auth_secret_arn)
    if any(arns) or function_arns or settings.order_shard_secret_arns:
        client = _secrets_client(settings)
        if settings.database_secret_arn:
            creds = _database_credentials(client, settings.database_secret_arn)
            port = int(creds.get("port", 5432))
            primary_url = _url_for(creds, creds["host"], port)
            replica_urls += [
                _url_for(creds, *_host_port(h, port)) for h in settings.database_replica_hosts
            ]
        for name, arn in function_arns.items():
            creds = _database_credentials(client, arn)
            function_urls[name] = _url_for(creds, creds["host"], int(creds.get("port", 5432)))
        hosts = settings.order_shard_replica_hosts
        for number, arn in enumerate(settings.order_shard_secret_arns):
            creds = _database_credentials(client, arn)
            port = int(creds.get("port", 5432))
            shard_urls.append(_url_for(creds, creds["host"], port))
            if number < len(hosts):
                shard_replica_urls.append(
                    [_url_for(creds, *_host_port(h, port)) for h in hosts[number]]
                )
        if settings.jwt_secret_arn:
            jwt_secret = _secret(client, settings.jwt_secret_arn)
        if settings.redis_auth_secret_arn and redis_url:
            raw = _secret(client, settings.redis_auth_secret_arn)
            token = json.loads(raw)["token"] if raw.lstrip().startswith("{") else raw
            scheme, _, rest = redis_url.partition("://")
            redis_url = f"{scheme}://:{quote(token, safe='')}@{rest}"
    return Resolved(
        primary_url,
        replica_urls,
        jwt_secret,
        redis_url,
        function_urls,
        shard_urls,
        shard_replica_urls,
    )


def _database_credentials(client: Any, arn: str) -> dict[str, Any]:
    """An RDS-format secret; ValueError when it names no database."""
    creds: dict[str, Any] = json.loads(_secret(client, arn))
    if not creds.get("dbname"):
        # RDS's generated secret has no dbname unless its template adds one; guessing
        # `postgres` would put the schema in the maintenance database without a word.
        raise ValueError(
            f"database secret {arn} has no 'dbname': "
            "add it to the secret (the RDS secret template) instead of relying on a default"
        )
    return creds


def _url_for(creds: dict[str, Any], host: str, port: int) -> str:
    url = URL.create(
        "postgresql+psycopg",
        username=creds["username"],
        password=creds["password"],
        host=host,
        port=port,
        database=creds["dbname"],
    )
    return url.render_as_string(hide_password=False)
