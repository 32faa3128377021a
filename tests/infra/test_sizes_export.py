"""The stacks' sizes the ladder scales its budgets from are the catalog's own."""

from pathlib import Path

import sizes

COMMITTED = Path(__file__).resolve().parents[2] / "loadtests" / "ladder" / "aws_sizes.json"


def test_the_ladders_copy_of_the_stack_sizes_is_the_catalogs_export() -> None:
    assert COMMITTED.read_text() == sizes.export(), (
        "run `python infra/sizes.py > loadtests/ladder/aws_sizes.json`"
    )
