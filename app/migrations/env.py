"""Alembic environment: migrates the database the shop's settings point at."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from app.kernel.models import Base
from app.migrations.metadata import load_all_models

MIGRATION_LOCK = 0x5E0_0001
"""The PostgreSQL advisory lock id that serialises concurrent migrations."""

load_all_models()
config = context.config
_url = config.get_main_option("sqlalchemy.url")
assert _url, "the caller sets sqlalchemy.url (see app.migrations.runner)"
url: str = _url


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Every instance of a fleet runs `shop migrate` as it boots: one migrates, the
            # others wait here and then find nothing left to do.
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
