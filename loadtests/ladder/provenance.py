"""Where a ladder run came from, recorded in every stage's result so that its figures can be
traced and compared: the commit, the date, the machine (kernel, cgroup version, CPU model, cores)
and the load generator's version."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from loadtests.ladder.components import ROOT

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return f"{commit}+changes" if git("status", "--porcelain", "--untracked-files=no") else commit


def cgroup_version(root: Path = CGROUP_ROOT) -> str:
    """v2 (unified), v1, or hybrid (v1 controllers with a v2 tree beside them)."""
    if (root / "cgroup.controllers").exists():
        return "v2"
    if (root / "unified" / "cgroup.controllers").exists():
        return "hybrid (v1 controllers)"
    return "v1" if (root / "cpu").exists() or (root / "cpu,cpuacct").exists() else "none"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def provenance() -> dict[str, Any]:
    try:
        locust = metadata.version("locust")
    except metadata.PackageNotFoundError:
        locust = "not installed"
    return {
        "commit": _commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cgroup": cgroup_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "locust": locust,
    }
