"""Imports every module's tables so that Base.metadata holds the whole schema."""

from __future__ import annotations


def load_all_models() -> None:
    from app.accounting import models as _accounting  # noqa: F401
    from app.adapters import outbox as _outbox  # noqa: F401
    from app.adapters import shards as _shards  # noqa: F401
    from app.carts import models as _carts  # noqa: F401
    from app.catalog import models as _catalog  # noqa: F401
    from app.customers import models as _customers  # noqa: F401
    from app.delivery import models as _delivery  # noqa: F401
    from app.orders import models as _orders  # noqa: F401
