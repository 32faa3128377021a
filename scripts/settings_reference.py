"""Write docs/configuration.md from the settings model, so the reference cannot drift from the code.

    .venv/bin/python scripts/settings_reference.py           # rewrite the page
    .venv/bin/python scripts/settings_reference.py --check   # exit 1 when the page is stale

Every field of `app.kernel.settings.Settings` (and of `WorkerSettings`, which adds the worker's own)
becomes one row: its environment variable, type,
default and the field's own description. `make docs` runs it before building the site, and a test
checks that the committed page is the one this writes.
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from app.kernel.settings import LOCAL_JWT_SECRET, Settings, WorkerSettings

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

INTRO = """\
# Configuration

<!-- Written by scripts/settings_reference.py from app/kernel/settings.py: edit the field's
     description there, then run `make docs`. -->

One settings class (`app/kernel/settings.py`), read from `SHOP_*` environment variables or a `.env`
file. The development JWT secret is published in this repository, so the shop accepts it only
when `SHOP_ENV=local` **and** it runs on its embedded database; with `SHOP_DATABASE_URL` (or a
secret ARN) set, or in the image (which sets `SHOP_ENV=production`), it refuses to start until
`SHOP_JWT_SECRET`, `SHOP_JWT_SECRET_FILE` or `SHOP_JWT_SECRET_ARN` gives a real key. Every
component a later stage adds has its address here; what is unset is simply absent, and the app
works, more slowly, without it. The stacks in `infra/` and `docker-compose.yml` set exactly these
names. A list is given comma-separated (`SHOP_DATABASE_REPLICA_URLS=url1,url2`).

How the settings of each stage are used, with their trade-offs, is in
[Architecture](architecture.md).

| variable | type | default | meaning |
|---|---|---|---|
"""


def _type(annotation: object) -> str:
    """A reader's name for a field's type: `int`, `list of str`, `str (optional)`."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        named = [_type(arg) for arg in args if arg is not type(None)]
        return " or ".join(named) + (" (optional)" if type(None) in args else "")
    if origin is list:
        return f"list of {_type(args[0])}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " / ".join(str(member.value) for member in annotation)
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        made = field.default_factory()  # type: ignore[call-arg]
        return "empty" if made in ([], (), {}, "") else f"`{made}`"
    value = field.default
    if value is PydanticUndefined or value is None:
        return "unset"
    if value == LOCAL_JWT_SECRET:
        return "a published local-only value"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    return f"`{value}`"


def page() -> str:
    rows = []
    for name, field in WorkerSettings.model_fields.items():
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        if name not in Settings.model_fields:
            meaning = f"(`shop worker` only) {meaning}"
        variable = f"SHOP_{name.upper()}"
        rows.append(f"| `{variable}` | {_type(field.annotation)} | {_default(field)} | {meaning} |")
    return INTRO + "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale")
    wanted = page()
    if parser.parse_args().check:
        if not PAGE.exists() or PAGE.read_text() != wanted:
            print(f"{PAGE} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(wanted)
    print(f"wrote {PAGE} ({len(WorkerSettings.model_fields)} settings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
