"""Run Alembic from code, against the URL the settings (or a caller) give."""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, inspect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import NullPool

from app.adapters.db import Database, Databases
from app.adapters.shards import DirectoryProblem, load_directory
from app.kernel.models import SchemaCompatibility
from app.kernel.settings import to_sync_url

log = logging.getLogger("shop")

HERE = Path(__file__).parent


def alembic_config(url: str, location: Path | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(location or HERE))
    config.set_main_option("sqlalchemy.url", to_sync_url(url).replace("%", "%%"))
    return config


class SchemaProblem(RuntimeError):
    """The database's schema is not the one this shop needs; the message says what to run."""


COMPATIBILITY = SchemaCompatibility.__tablename__
"""The table where `shop migrate` records which older app revisions a database still serves."""


def _script(location: Path | None = None) -> ScriptDirectory:
    return ScriptDirectory(str(location or HERE))


def oldest_compatible(script: ScriptDirectory, revision: str) -> str:
    """The oldest revision whose app still runs against a database at `revision`: walk down while
    each revision is marked `backward_compatible` (expand-only: it adds what older code ignores)."""
    oldest = script.get_revision(revision)
    while oldest is not None and getattr(oldest.module, "backward_compatible", False):
        if not isinstance(oldest.down_revision, str):  # the first revision, or a merge
            break
        oldest = script.get_revision(oldest.down_revision)
    assert oldest is not None
    return str(oldest.revision)


def upgrade(url: str, revision: str = "head", *, location: Path | None = None) -> None:
    """Migrate to `revision`, then record which older app revisions the schema still serves.

    A database already ahead of this app's head, at a revision that says this app still runs
    against it, is left as it is (an older colour starting beside a newer one); one that does
    not say so raises SchemaProblem."""
    script = _script(location)
    engine = create_engine(to_sync_url(url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            ahead = _ahead(connection, script)
            problem = _compatibility_problem(connection, script, ahead) if ahead else None
        if problem:
            raise SchemaProblem(problem)
        if ahead is not None:
            log.info("database at %s, ahead of this app and compatible with it", ahead)
            return
        command.upgrade(alembic_config(url, location), revision)
        _record_compatibility(engine, script)
    finally:
        engine.dispose()


SHARD_DROPS = ("fk_customer_order_customer_id_customer",)
"""Constraints a shard cannot keep: its `customer` table stays empty (customers live in the
main database, whose reservation step checks that the customer exists instead)."""


def prepare_shard(url: str) -> None:
    """After `upgrade`: make a database an order shard (stage 8) by dropping SHARD_DROPS.
    Idempotent. A later migration that touches one of them must say what shards do."""
    engine = create_engine(to_sync_url(url), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            for name in SHARD_DROPS:
                connection.execute(
                    sa.text(f"ALTER TABLE customer_order DROP CONSTRAINT IF EXISTS {name}")
                )
    finally:
        engine.dispose()


def _record_compatibility(engine: sa.Engine, script: ScriptDirectory) -> None:
    """Record the oldest app revision the database's revision still serves. Instances booting
    together each write the same row: the second insert finds it there, and that is fine."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_heads()
        if len(current) != 1 or not inspect(connection).has_table(COMPATIBILITY):
            return
    [head] = current
    oldest = oldest_compatible(script, head)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.delete(SchemaCompatibility).where(SchemaCompatibility.revision == head)
            )
            connection.execute(
                sa.insert(SchemaCompatibility).values(revision=head, oldest_app_revision=oldest)
            )
    except IntegrityError:
        log.info("schema compatibility of %s recorded by another instance", head)


def _ahead(connection: Connection, script: ScriptDirectory) -> str | None:
    """The database's revision when this app does not know it (a newer app migrated it)."""
    current = MigrationContext.configure(connection).get_current_heads()
    known = {revision.revision for revision in script.walk_revisions()}
    unknown = [revision for revision in current if revision not in known]
    return unknown[0] if unknown else None


def _compatibility_problem(
    connection: Connection, script: ScriptDirectory, ahead: str
) -> str | None:
    """None when the database's newer revision `ahead` says this app still runs against it."""
    heads = ", ".join(sorted(script.get_heads()))
    oldest = None
    if inspect(connection).has_table(COMPATIBILITY):
        oldest = connection.execute(
            sa.select(SchemaCompatibility.oldest_app_revision).where(
                SchemaCompatibility.revision == ahead
            )
        ).scalar_one_or_none()
    known = {revision.revision for revision in script.walk_revisions()}
    if oldest is not None and oldest in known:
        return None
    return (
        f"the database is at migration {ahead}, ahead of this version of the shop ({heads}), "
        f"and {ahead} is not marked backward compatible with it: deploy the newer version"
    )


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def schema_problem(connection: Connection, location: Path | None = None) -> str | None:
    """Why the database's schema is not the one this shop needs: None when it is at head, or
    ahead of it at a revision marked backward compatible with this head (expand/contract)."""
    script = _script(location)
    heads = set(script.get_heads())
    current = set(MigrationContext.configure(connection).get_current_heads())
    if current == heads:
        return None
    if not current:
        return "the database has no shop schema; run `shop migrate`"
    ahead = _ahead(connection, script)
    if ahead is not None:
        return _compatibility_problem(connection, script, ahead)
    return (
        f"the database is at migration {', '.join(sorted(current))} and this shop needs "
        f"{', '.join(sorted(heads))}; run `shop migrate`"
    )


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


async def open_all(databases: Databases) -> Databases:
    """`open_checked` for every database (stage 8 has several), then, with order shards, the
    directory read (or filled); raises SchemaProblem or DirectoryProblem with every database
    disposed."""
    try:
        for db in databases.all():
            await open_checked(db)
        if databases.shards:
            directory = await load_directory(databases.main, shards=len(databases.shards))
            databases = databases.with_directory(directory)
    except (SchemaProblem, DirectoryProblem):
        for db in databases.all():
            await db.dispose()
        raise
    return databases
