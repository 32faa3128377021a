"""The README and the docs site stay true about what a user configures and runs."""

from __future__ import annotations

import re
from pathlib import Path

from app.kernel.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = "\n".join(
    path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
)


def test_every_setting_is_documented() -> None:
    missing = [
        f"SHOP_{name.upper()}"
        for name in Settings.model_fields
        if f"SHOP_{name.upper()}" not in README
    ]
    assert missing == []


def test_every_make_target_the_readme_names_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, flags=re.M))
    named = set(re.findall(r"`make ([a-z-]+)`", README))
    assert named <= targets, named - targets


def test_every_shop_subcommand_the_readme_names_exists() -> None:
    from app.cli import parser

    subcommands = set(parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    pattern = r"(?:`|^)(?:\.venv/bin/)?shop ([a-z-]+)"
    named = set(re.findall(pattern, README, flags=re.M)) - {"worker"}  # stage 7, announced
    assert named <= subcommands, named - subcommands
