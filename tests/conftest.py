"""Shared fixtures: a fresh PostgreSQL database per test session, the app, builders."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

PG_ADMIN_URL = os.environ.get("SHOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("SHOP_TEST_REDIS", "redis://127.0.0.1:6379/15")


def _admin_conn() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True)


def pg_url(database: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{database}"


@pytest.fixture(scope="session")
def fresh_database() -> Iterator[object]:
    """A factory of empty PostgreSQL databases, all dropped at the end of the session."""
    made: list[str] = []

    def make() -> str:
        name = f"shop_test_{uuid.uuid4().hex[:12]}"
        with _admin_conn() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return pg_url(name)

    yield make
    with _admin_conn() as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(fresh_database) -> str:  # type: ignore[no-untyped-def]
    """The session's database, migrated to head by Alembic (the only way the schema is made)."""
    from app.migrations import runner

    url: str = fresh_database()
    runner.upgrade(url)
    return url


ASSETS_DIR = Path(tempfile.mkdtemp(prefix="shop-test-assets-"))
"""Where test apps keep uploaded images: never the project's own shop-assets/ folder."""
atexit.register(shutil.rmtree, ASSETS_DIR, ignore_errors=True)


def test_settings(**overrides: object):  # type: ignore[no-untyped-def]
    from app.kernel.settings import Settings

    values: dict[str, object] = {
        "assets_dir": ASSETS_DIR,
        "env": "test",
        "jwt_secret": "test-secret-" + "x" * 40,
        "password_time_cost": 1,
        "password_memory_kib": 1024,
        # Tables are emptied between tests and ids start again at 1: an account remembered
        # from the previous test would be someone else now.
        "account_check_s": 0,
        # The session's app counts sign-in failures in Redis, which outlives a run; the limits
        # themselves are tested with their own app (test_sign_in_protection).
        "sign_in_failures_per_email": 10_000,
        "sign_in_failures_per_client": 100_000,
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


test_settings.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def settings(database_url: str):  # type: ignore[no-untyped-def]
    return test_settings(database_url=database_url, redis_url=REDIS_URL)


@pytest.fixture(scope="session")
async def app(settings) -> AsyncIterator[object]:  # type: ignore[no-untyped-def]
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30) as manager:
        yield application
        assert manager is not None


@pytest.fixture(scope="session")
def resources(app):  # type: ignore[no-untyped-def]
    return app.state.resources  # type: ignore[attr-defined]
