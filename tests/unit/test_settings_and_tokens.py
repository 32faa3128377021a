"""Settings refuse unsafe defaults; tokens round-trip and expire."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.kernel.errors import Unauthenticated
from app.kernel.security import LocalTokens, Principal, Role
from app.kernel.settings import Settings, to_async_url, to_sync_url


def test_the_default_jwt_secret_is_refused_outside_local() -> None:
    with pytest.raises(ValidationError, match="SHOP_JWT_SECRET"):
        Settings(env="production", _env_file=None)  # type: ignore[arg-type,call-arg]


def test_the_default_jwt_secret_is_accepted_locally() -> None:
    assert Settings(env="local", _env_file=None).env == "local"  # type: ignore[arg-type,call-arg]


@pytest.mark.parametrize(
    "where",
    [
        {"database_url": "postgresql://shop:pw@127.0.0.1:5432/shop"},
        {"database_secret_arn": "arn:aws:secretsmanager:us-east-1:1:secret:db"},
    ],
)
def test_the_default_jwt_secret_is_refused_with_a_configured_database(
    where: dict[str, str],
) -> None:
    # SHOP_ENV=local is the default, and was enough to accept a key anyone can read.
    with pytest.raises(ValidationError, match="published default"):
        Settings(env="local", _env_file=None, **where)  # type: ignore[arg-type,call-arg]


def test_a_secret_file_or_arn_replaces_the_default_jwt_secret(tmp_path: Path) -> None:
    url = "postgresql://shop:pw@127.0.0.1:5432/shop"
    with_file = Settings(  # type: ignore[call-arg]
        database_url=url, jwt_secret_file=tmp_path / "key", _env_file=None
    )
    with_arn = Settings(database_url=url, jwt_secret_arn="arn:x", _env_file=None)  # type: ignore[call-arg]
    assert with_file.jwt_secret_file == tmp_path / "key"
    assert with_arn.jwt_secret_arn == "arn:x"


def test_the_image_refuses_to_start_on_the_published_secret() -> None:
    """The Dockerfile's own environment, as the image would run with no secret given."""
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    runtime = dockerfile.split("AS runtime", 1)[1]
    assert "SHOP_ENV=production" in runtime
    with pytest.raises(ValidationError, match="published default"):
        Settings(env="production", _env_file=None)  # type: ignore[arg-type,call-arg]


def test_a_short_jwt_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="jwt_secret"):
        Settings(jwt_secret="short", _env_file=None)  # type: ignore[call-arg]


def test_settings_come_from_shop_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_DATABASE_URL", "postgres://u:p@db:5432/shop")
    monkeypatch.setenv("SHOP_JWT_SECRET", "s" * 40)
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


def test_the_embedded_file_is_the_same_wherever_the_shop_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = Path(__file__).resolve().parents[2]
    seen = set()
    for folder in (project, tmp_path, project / "app"):
        monkeypatch.chdir(folder)
        seen.add(Settings(_env_file=None).embedded_path)  # type: ignore[call-arg]
    assert seen == {project / "shop.db"}


def test_a_relative_sqlite_path_is_made_absolute_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(sqlite_path=Path("data/my.db"), _env_file=None)  # type: ignore[call-arg]
    assert settings.embedded_path == tmp_path.resolve() / "data" / "my.db"
    assert settings.primary_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/data/my.db"


def test_outside_a_checkout_the_embedded_file_lives_in_the_user_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.kernel.settings as settings_module

    # An installed shop (the wheel, the image) has no pyproject.toml beside its package.
    installed = tmp_path / "site-packages" / "app" / "kernel" / "settings.py"
    monkeypatch.setattr(settings_module, "__file__", str(installed))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert settings_module.default_sqlite_path() == tmp_path / "data" / "shop" / "shop.db"


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


@pytest.mark.parametrize(
    "subject",
    ["99999999999999999999", "2147483648", "0", "-1", "1.0", "abc", "", " 7", "\u0667"],
)
def test_a_subject_that_is_not_an_account_id_is_a_bad_token(subject: str) -> None:
    import jwt

    tokens = LocalTokens(secret="k" * 40, issuer="shop", ttl_s=60)
    forged = jwt.encode(
        {"sub": subject, "role": "customer", "iss": "shop", "exp": int(time.time()) + 60},
        "k" * 40,
        algorithm="HS256",
    )
    with pytest.raises(Unauthenticated):
        tokens.verify(forged)


def test_a_token_with_an_unknown_role_is_refused() -> None:
    import jwt

    forged = jwt.encode(
        {"sub": "7", "role": "root", "iss": "shop", "exp": int(time.time()) + 60},
        "k" * 40,
        algorithm="HS256",
    )
    with pytest.raises(Unauthenticated):
        LocalTokens(secret="k" * 40, issuer="shop", ttl_s=60).verify(forged)
