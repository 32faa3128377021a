"""Names the app and the stacks must agree on, though neither imports the other."""

import ast
from pathlib import Path

from app.storefront.sessions import CART, SESSION

EDGE = Path(__file__).resolve().parents[2] / "infra" / "shop_infra" / "constructs" / "edge.py"


def _constant(source: Path, name: str) -> object:
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {source}")


def test_cloudfront_keys_pages_by_the_cookies_the_storefront_sets():
    assert set(_constant(EDGE, "PAGE_COOKIES")) == {SESSION, CART}  # type: ignore[call-overload]
