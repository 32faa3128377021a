"""Run Alembic from code, against the URL the settings (or a caller) give."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from app.core.settings import to_sync_url

HERE = Path(__file__).parent


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("sqlalchemy.url", to_sync_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def schema_problem(connection: Connection) -> str | None:
    """Why the database's schema is not the one this shop needs (None when it is at head)."""
    script = ScriptDirectory(str(HERE))
    heads = set(script.get_heads())
    current = set(MigrationContext.configure(connection).get_current_heads())
    if current == heads:
        return None
    if not current:
        return "the database has no shop schema; run `shop migrate`"
    known = {revision.revision for revision in script.walk_revisions()}
    if not current <= known:
        return (
            f"the database is at migration {', '.join(sorted(current))}, which this version "
            "of the shop does not know (did a newer version migrate it?)"
        )
    return (
        f"the database is at migration {', '.join(sorted(current))} and this shop needs "
        f"{', '.join(sorted(heads))}; run `shop migrate`"
    )
