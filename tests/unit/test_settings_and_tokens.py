"""Settings refuse unsafe defaults; tokens round-trip and expire."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from app.core.errors import Unauthenticated
from app.core.security import LocalTokens, Principal, Role
from app.core.settings import Settings, to_async_url, to_sync_url


def test_the_default_jwt_secret_is_refused_outside_local() -> None:
    with pytest.raises(ValidationError, match="SHOP_JWT_SECRET"):
        Settings(env="production", _env_file=None)  # type: ignore[arg-type,call-arg]


def test_the_default_jwt_secret_is_accepted_locally() -> None:
    assert Settings(env="local", _env_file=None).env == "local"  # type: ignore[arg-type,call-arg]


def test_a_short_jwt_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="jwt_secret"):
        Settings(jwt_secret="short", _env_file=None)  # type: ignore[call-arg]


def test_settings_come_from_shop_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_DATABASE_URL", "postgres://u:p@db:5432/shop")
    monkeypatch.setenv(
        "SHOP_DATABASE_REPLICA_URLS", "postgresql://u:p@r1/shop, postgresql://u:p@r2/shop"
    )
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.primary_url == "postgresql+psycopg://u:p@db:5432/shop"
    assert settings.database_replica_urls == [
        "postgresql://u:p@r1/shop",
        "postgresql://u:p@r2/shop",
    ]


def test_without_a_database_url_the_shop_uses_an_embedded_sqlite_file() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.is_embedded
    assert settings.primary_url.startswith("sqlite+aiosqlite:///")


def test_urls_map_between_async_and_sync_drivers() -> None:
    assert to_sync_url(to_async_url("sqlite:///x.db")) == "sqlite:///x.db"
    assert to_async_url("postgresql://h/db") == "postgresql+psycopg://h/db"


def test_a_token_names_the_customer_and_role() -> None:
    tokens = LocalTokens(secret="k" * 40, issuer="shop", ttl_s=60)
    token, ttl = tokens.issue(Principal(customer_id=7, role=Role.ADMIN))
    assert ttl == 60
    assert tokens.verify(token) == Principal(customer_id=7, role=Role.ADMIN)


def test_an_expired_token_is_refused() -> None:
    tokens = LocalTokens(secret="k" * 40, issuer="shop", ttl_s=-1)
    token, _ = tokens.issue(Principal(customer_id=7, role=Role.CUSTOMER))
    time.sleep(0.01)
    with pytest.raises(Unauthenticated):
        tokens.verify(token)


def test_a_token_from_another_issuer_is_refused() -> None:
    other = LocalTokens(secret="k" * 40, issuer="someone-else", ttl_s=60)
    token, _ = other.issue(Principal(customer_id=7, role=Role.CUSTOMER))
    with pytest.raises(Unauthenticated):
        LocalTokens(secret="k" * 40, issuer="shop", ttl_s=60).verify(token)
