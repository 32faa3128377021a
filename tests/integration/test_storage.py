"""The schema is made by Alembic only, both ways, and the ledger refuses rewrites."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from app.adapters.resources import Resources
from app.kernel.models import Base
from app.migrations import runner
from app.migrations.metadata import load_all_models
from tests.integration.conftest import make_product, make_user


def _tables(url: str) -> set[str]:
    engine = create_engine(url.replace("+aiosqlite", ""))
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_migrations_upgrade_downgrade_and_upgrade_again(
    engine: str, fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    load_all_models()
    url = fresh_database() if engine == "postgresql" else f"sqlite:///{tmp_path / 'shop.db'}"
    runner.upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)
    runner.downgrade(url)
    assert _tables(url) == set()
    runner.upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)


def test_instances_booting_together_migrate_one_at_a_time(
    fresh_database: Callable[[], str],
) -> None:
    load_all_models()
    url = fresh_database()
    shop = str(Path(sys.executable).parent / "shop")
    env = {**os.environ, "SHOP_DATABASE_URL": url, "SHOP_JWT_SECRET": "migrate-" + "k" * 40}
    runs = [
        subprocess.Popen([shop, "migrate"], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    # Without the lock, all but one fail on "relation already exists".
    assert [r.wait(timeout=120) for r in runs] == [0, 0, 0, 0], [r.stderr.read() for r in runs]
    assert _tables(url) == set(Base.metadata.tables)


def test_the_models_and_the_migrations_agree(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    load_all_models()
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


async def test_ledger_entries_can_never_be_updated_or_deleted(resources: Resources) -> None:
    from app.orders import service as orders
    from app.orders.schemas import OrderCreate

    product = await make_product(resources)
    user = await make_user(resources)
    await orders.place_order(
        resources.databases,
        customer_id=user.id,
        data=OrderCreate.model_validate({"lines": [{"product_id": product.id, "quantity": 1}]}),
        tax_rate_bp=2000,
    )
    for statement in ("UPDATE ledger_entry SET debit_cents = 0", "DELETE FROM ledger_entry"):
        with pytest.raises(DBAPIError, match="never updated or deleted"):
            async with resources.db.write() as conn:
                await conn.execute(text(statement))
    async with resources.db.read() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM ledger_entry")) == 3


async def test_stock_can_never_go_below_zero_even_by_hand(resources: Resources) -> None:
    product = await make_product(resources, initial_stock=1)
    with pytest.raises(DBAPIError):
        async with resources.db.write() as conn:
            await conn.execute(
                text("UPDATE stock_level SET quantity = -1 WHERE product_id = :id"),
                {"id": product.id},
            )
