"""Two app versions, one migration apart, against one PostgreSQL (expand/contract).

During a blue/green or rolling deploy the newer version migrates first; the older one keeps
serving, and may start again (a rollback, a replaced instance). It must accept a database ahead
of its own head when the newer revisions say they are backward compatible, and refuse, saying
why, when they do not. The older version here is the shop's own migrations without their
newest revision; the newer one adds a revision of the test's own.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from app.kernel.settings import to_sync_url
from app.main import StartupProblem, close_resources, open_resources
from app.migrations import runner
from tests.conftest import test_settings

NEWER = """
import sqlalchemy as sa
from alembic import op

revision = "9001"
down_revision = "{head}"
branch_labels = None
depends_on = None
backward_compatible = {compatible}


def upgrade() -> None:
    op.add_column("customer", sa.Column("nickname", sa.String(40), nullable=True))


def downgrade() -> None:
    op.drop_column("customer", "nickname")
"""


def _migrations(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(runner.HERE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def older_version(tmp_path: Path) -> Path:
    """The shop's migrations without their newest revision: the app one release back."""
    folder = _migrations(tmp_path, "older")
    head = runner._script().get_current_head()
    [newest] = (folder / "versions").glob(f"{head}_*.py")
    newest.unlink()
    return folder


def newer_version(tmp_path: Path, *, compatible: bool) -> Path:
    """The shop's migrations plus one more revision: the app one release ahead."""
    folder = _migrations(tmp_path, f"newer-{compatible}")
    head = runner._script().get_current_head()
    (folder / "versions" / "9001_nickname.py").write_text(
        NEWER.format(head=head, compatible=compatible)
    )
    return folder


def problem(url: str, location: Path | None = None) -> str | None:
    engine = create_engine(to_sync_url(url))
    try:
        with engine.connect() as connection:
            return runner.schema_problem(connection, location)
    finally:
        engine.dispose()


def revision_of(url: str) -> str:
    engine = create_engine(to_sync_url(url))
    try:
        with engine.connect() as connection:
            return str(connection.execute(text("SELECT version_num FROM alembic_version")).scalar())
    finally:
        engine.dispose()


def test_the_older_version_serves_a_database_its_successor_migrated_compatibly(
    fresh_database: Any, tmp_path: Path
) -> None:
    url = fresh_database()
    runner.upgrade(url)  # the newer version (the shop as it is) migrates first
    older = older_version(tmp_path)
    assert problem(url, older) is None
    runner.upgrade(url, location=older)  # its boot runs `shop migrate`: nothing to do
    assert revision_of(url) == runner._script().get_current_head()


async def test_the_current_version_starts_on_a_database_one_compatible_migration_ahead(
    fresh_database: Any, tmp_path: Path
) -> None:
    url = fresh_database()
    runner.upgrade(url, location=newer_version(tmp_path, compatible=True))
    assert revision_of(url) == "9001"
    assert problem(url) is None
    resources = await open_resources(test_settings(database_url=url))
    await close_resources(resources)


async def test_the_current_version_refuses_a_database_ahead_at_an_incompatible_revision(
    fresh_database: Any, tmp_path: Path
) -> None:
    url = fresh_database()
    runner.upgrade(url, location=newer_version(tmp_path, compatible=False))
    said = problem(url)
    assert said is not None
    assert "at migration 9001, ahead of this version" in said
    assert "not marked backward compatible" in said
    with pytest.raises(runner.SchemaProblem, match="not marked backward compatible"):
        runner.upgrade(url)  # `shop migrate` of the older version refuses too
    with pytest.raises(StartupProblem, match="deploy the newer version"):
        await open_resources(test_settings(database_url=url))


def test_a_database_behind_still_asks_for_shop_migrate(fresh_database: Any, tmp_path: Path) -> None:
    url = fresh_database()
    runner.upgrade(url, location=older_version(tmp_path))
    assert "run `shop migrate`" in (problem(url) or "")
    runner.upgrade(url)
    assert problem(url) is None
