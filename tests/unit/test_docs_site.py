"""The docs site builds in strict mode, its links hold, and its configuration page is the model's.

`make docs` builds the same site; README.md links into it, so its links are checked here too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.kernel.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).with_name("mkdocs")


def build(project: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(out)],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.fixture
def copy_of_the_docs(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    return tmp_path


def test_the_site_builds_in_strict_mode(copy_of_the_docs: Path) -> None:
    built = build(copy_of_the_docs, copy_of_the_docs / "site")
    assert built.returncode == 0, built.stderr
    assert (copy_of_the_docs / "site" / "configuration" / "index.html").exists()
    assert (copy_of_the_docs / "site" / "ladder" / "throughput.png").exists()


def test_a_broken_link_or_anchor_fails_the_build(copy_of_the_docs: Path) -> None:
    page = copy_of_the_docs / "docs" / "performance.md"
    original = page.read_text()
    for broken in ("[gone](no-such-page.md)", "[gone](aws.md#no-such-section)"):
        page.write_text(original + f"\nSee {broken}.\n")
        built = build(copy_of_the_docs, copy_of_the_docs / "site")
        assert built.returncode != 0, f"{broken} did not fail the build"
        assert "no-such" in built.stderr


def test_the_configuration_page_is_the_one_the_settings_model_writes() -> None:
    checked = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    page = (ROOT / "docs" / "configuration.md").read_text()
    for name in WorkerSettings.model_fields:  # the server's settings and the worker's own
        assert f"| `SHOP_{name.upper()}` |" in page


def test_every_link_of_the_readme_into_the_docs_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", readme)
    assert links, "the README links to no page of docs/"
    for target, anchor in links:
        path = ROOT / target
        assert path.exists(), target
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{target}#{anchor}"
