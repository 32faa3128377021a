"""A private PostgreSQL server for tests that stop, restart or break it.

The shared server on 5432 is everyone's: a test that restarts PostgreSQL gets a cluster of its
own, made with initdb in a temporary folder owned by the `postgres` user (initdb refuses to
run as root), on a free port, and stopped and removed when the test ends, even on failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

SERVER_USER = "postgres"


def server_bindir() -> Path | None:
    """The folder of initdb and pg_ctl: PATH, `pg_config --bindir`, or Debian's lib folder."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates: list[str] = []
    if shutil.which("pg_config"):
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(bindir.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def why_unavailable() -> str | None:
    """Why this machine cannot make a private cluster (None when it can)."""
    if server_bindir() is None:
        return "initdb and pg_ctl not found (PATH, pg_config --bindir, /usr/lib/postgresql)"
    if os.geteuid() != 0:
        return "making a cluster as the postgres user needs root"
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        return f"no {SERVER_USER!r} user to own the cluster"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A running PostgreSQL server on 127.0.0.1:`port`, trust authentication."""

    bindir: Path
    root: Path
    port: int

    @property
    def options(self) -> str:
        """The server's options: loopback only, its socket in its folder, no durability."""
        return (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL the shop takes (psycopg driver)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def libpq_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.libpq_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pg_ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return _as_server_user(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), *args], timeout=timeout
        )

    def start(self) -> None:
        begun = self.pg_ctl("start", "-w", "-l", str(self.root / "server.log"), "-o", self.options)
        assert begun.returncode == 0, begun.stdout + begun.stderr + _log(self.root)

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: the port refuses connections until `start`."""
        done = self.pg_ctl("stop", "-m", "fast", "-w")
        assert done.returncode == 0, done.stdout + done.stderr

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every client connection is closed by the server."""
        done = self.pg_ctl("restart", "-m", "fast", "-w", "-l", str(self.root / "server.log"))
        assert done.returncode == 0, done.stdout + done.stderr

    def is_ready(self) -> bool:
        """pg_isready's answer: the server accepts connections."""
        isready = shutil.which("pg_isready") or str(self.bindir / "pg_isready")
        probe = [isready, "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"]
        return subprocess.run(probe, timeout=10).returncode == 0

    def wait_ready(self, timeout: float = 30) -> float:
        """Poll pg_isready until it answers; the monotonic time at which it did."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL on port {self.port} not ready in {timeout} s")
            time.sleep(0.05)
        return time.monotonic()


def _as_server_user(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", SERVER_USER, "--", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )


@contextmanager
def private_cluster() -> Iterator[Cluster]:
    """initdb, start on a free port, yield; then stop (immediate) and remove the folder."""
    bindir = server_bindir()
    assert bindir is not None, why_unavailable()
    # Not under pytest's tmp_path: its parents are root's alone, and the server user must
    # be able to reach its data folder.
    root = Path(tempfile.mkdtemp(prefix="shop-pg-"))
    user = pwd.getpwnam(SERVER_USER)
    os.chown(root, user.pw_uid, user.pw_gid)
    cluster = Cluster(bindir=bindir, root=root, port=free_port())
    started = False
    try:
        made = _as_server_user(
            [
                str(bindir / "initdb"),
                "-D",
                str(cluster.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ]
        )
        assert made.returncode == 0, made.stdout + made.stderr
        started = True
        cluster.start()
        yield cluster
    finally:
        if started:
            cluster.pg_ctl("stop", "-m", "immediate", "-w", timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def _log(root: Path) -> str:
    log = root / "server.log"
    return log.read_text(errors="replace") if log.is_file() else ""
