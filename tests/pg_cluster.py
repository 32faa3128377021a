"""A private PostgreSQL server for tests that stop, restart or break it, and its streaming replica.

The shared server on 5432 is everyone's: a test that restarts PostgreSQL gets a cluster of its
own, made with initdb in a temporary folder owned by the `postgres` user (initdb refuses to
run as root), on a free port, and stopped and removed when the test ends, even on failure.
`streaming_replica(primary)` adds a hot standby of it, made with `pg_basebackup -R -X stream`.
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
from typing import Any

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
    settings: tuple[str, ...] = ()
    """More `name=value` server settings, e.g. shared_preload_libraries=pg_stat_statements."""

    @property
    def options(self) -> str:
        """The server's options: loopback only, its socket in its folder, no durability."""
        extra = "".join(f" -c {setting}" for setting in self.settings)
        return (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off" + extra
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

    def query(self, sql: str, database: str = "postgres") -> Any:
        """The first column of the first row of `sql` (None without rows), in autocommit."""
        with psycopg.connect(self.libpq_url(database), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql.encode())
            row = cursor.fetchone() if cursor.description else None
        return row[0] if row else None

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


def _server_folder(prefix: str) -> Path:
    # Not under pytest's tmp_path: its parents are root's alone, and the server user must
    # be able to reach its data folder.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    user = pwd.getpwnam(SERVER_USER)
    os.chown(root, user.pw_uid, user.pw_gid)
    return root


@contextmanager
def private_cluster(settings: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """initdb, start on a free port, yield; then stop (immediate) and remove the folder.

    PostgreSQL's defaults already allow streaming replicas of it (wal_level=replica,
    max_wal_senders=10, and initdb's pg_hba.conf lets 127.0.0.1 replicate with trust)."""
    bindir = server_bindir()
    assert bindir is not None, why_unavailable()
    root = _server_folder("shop-pg-")
    cluster = Cluster(bindir=bindir, root=root, port=free_port(), settings=settings)
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


@contextmanager
def streaming_replica(primary: Cluster) -> Iterator[Cluster]:
    """A hot standby of `primary` on a free port, streaming from it: `pg_basebackup -R -X
    stream` (-R writes standby.signal and primary_conninfo), then start. Stopped (immediate)
    and removed at the end. Same server settings as the primary."""
    root = _server_folder("shop-pg-replica-")
    replica = Cluster(bindir=primary.bindir, root=root, port=free_port(), settings=primary.settings)
    basebackup = primary.bindir / "pg_basebackup"
    started = False
    try:
        made = _as_server_user(
            [
                str(basebackup) if basebackup.is_file() else "pg_basebackup",
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                str(replica.data),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ]
        )
        assert made.returncode == 0, made.stdout + made.stderr
        started = True
        replica.start()
        yield replica
    finally:
        if started:
            replica.pg_ctl("stop", "-m", "immediate", "-w", timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def _log(root: Path) -> str:
    log = root / "server.log"
    return log.read_text(errors="replace") if log.is_file() else ""
