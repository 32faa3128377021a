"""Run Alembic from code, against the URL the settings (or a caller) give."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from app.core.db import Database
from app.core.settings import to_sync_url

log = logging.getLogger("shop")

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


class SchemaProblem(RuntimeError):
    """The database's schema is not the one this shop needs; the message says what to run."""


async def open_checked(db: Database) -> None:
    """Check the schema, then open the database's pools; raises SchemaProblem (with the pools
    closed) when it is not at head. A database that does not answer yet is not a problem: a
    process starts anyway and is ready the moment it answers."""
    try:
        async with db.primary.connect() as conn:
            problem = await conn.run_sync(schema_problem)
    except (OSError, DBAPIError) as exc:
        problem = None
        log.warning("database %s unreachable at start, schema not checked: %s", db.describe(), exc)
    except BaseException:
        await db.dispose()
        raise
    if problem:
        await db.dispose()
        raise SchemaProblem(f"{problem} (database: {db.describe()})")
    await db.open()
