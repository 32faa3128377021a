"""The shop's wheel, built as the image builds it: the tests that check what ships read it.

uv builds it (the locked uv that `make` installs from tools/uv/requirements.txt); the build's own
setuptools is resolved as of pyproject.toml's `exclude-newer` day, like every other install.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UV = ROOT / ".venv-uv" / "bin" / "uv"


def build_wheel(out: Path) -> Path:
    """Build the shop's wheel into `out` and return its path."""
    assert UV.exists(), f"no uv at {UV}: `make install` installs it from tools/uv/requirements.txt"
    built = subprocess.run(
        [str(UV), "build", "--wheel", "--quiet", "--out-dir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )
    assert built.returncode == 0, built.stderr
    return next(out.glob("shop-*.whl"))
