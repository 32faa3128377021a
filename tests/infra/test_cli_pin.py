"""The CDK CLI is pinned like every other tool: an exact version in infra/package.json, the same
in its lock, so `npm ci && npx cdk` in infra/ runs one CLI on every machine."""

from __future__ import annotations

import json
import re
from pathlib import Path

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_the_cdk_cli_is_pinned_exactly_and_locked() -> None:
    wanted = json.loads((INFRA / "package.json").read_text())["devDependencies"]["aws-cdk"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", wanted), f"not an exact version: {wanted}"
    lock = json.loads((INFRA / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/aws-cdk"]["version"] == wanted
    assert lock["packages"][""]["devDependencies"]["aws-cdk"] == wanted
