"""The compose test's own container engine: podman (with runc) from Debian's packages, its images
and containers in a cache folder of their own, its containers in a network namespace of their own,
and docker-compose talking to it through podman's Docker-compatible API.

Why each piece:
- Storage and configuration under `CACHE` (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF): the
  stand-ins are tagged with the upstream names (`postgres:17-alpine`, ...) only here, and stay
  cached between runs, keyed by their build files.
- A network namespace with nothing but a loopback: containers reach each other and this machine's
  namespace only, never the internet, and the ports the compose file publishes (8000, 8180, ...)
  cannot collide with anything else running on the machine. Builds run outside it: they need
  Debian's archive and PyPI.
- docker-compose 1.29 (Debian's), because Debian's podman-compose 1.0 has no profiles and waits for
  no health check; 1.29 has both, but predates the top-level `name:` key, so it is given the file
  without that line and the same name with `-p`.
- A health ticker: podman runs health checks from systemd timers, and there is no systemd here, so
  the ticker runs `podman healthcheck run` at each container's interval instead.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STANDINS = HERE / "standins"
CACHE = Path(os.environ.get("SHOP_COMPOSE_CACHE", "/var/tmp/shop-compose-test"))
MIRROR = "http://deb.debian.org/debian"
# What the base image is made of; its hash names the cached image.
BASE_RECIPE = f"debootstrap --variant=minbase --include=ca-certificates bookworm {MIRROR}\n"
KEY_LABEL = "shop.compose.key"
# Debian package -> a file it installs that the test needs.
PACKAGES = {
    "podman": "/usr/bin/podman",
    "runc": "/usr/sbin/runc",
    "netavark": "/usr/lib/podman/netavark",
    "aardvark-dns": "/usr/lib/podman/aardvark-dns",
    "iptables": "/usr/sbin/iptables",  # netavark's firewall: port forwarding, build networks
    "debootstrap": "/usr/sbin/debootstrap",
    "docker-compose": "/usr/bin/docker-compose",
}
CLONE_NEWNET = 0x40000000
NETNS_PREFIX = "shop-compose-"
T = TypeVar("T")


def missing_packages() -> list[str]:
    return [name for name, path in PACKAGES.items() if not Path(path).exists()]


def install_packages() -> None:
    """Install what is missing from Debian's archive (root only)."""
    missing = missing_packages()
    if not missing:
        return
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
         "-o", "DPkg::Lock::Timeout=300", *missing],
        env=env,
        check=True,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _folder_digest(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return _digest(*(f"{p.relative_to(folder)}:{p.stat().st_mode & 0o111}" for p in files),
                   *(p.read_bytes() for p in files))  # fmt: skip


def locked_version(package: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return next(p["version"] for p in lock["package"] if p["name"] == package)


@dataclass(frozen=True)
class StandIn:
    """An upstream image this machine cannot pull, and the folder that builds its stand-in."""

    image: str
    folder: str
    needs_python: bool = False  # built FROM the python stand-in instead of the base
    needs_certs: bool = False  # downloads over HTTPS while building


PYTHON = StandIn("docker.io/library/python:3.11-slim", "python")
STAND_INS = (
    PYTHON,
    StandIn("docker.io/library/postgres:17-alpine", "postgres"),
    StandIn("docker.io/library/redis:7-alpine", "redis"),
    StandIn("docker.io/library/nginx:1.27-alpine", "nginx"),
    # Tagged as docker-compose.yml pins it: the moto version of the lock (test_packaging).
    StandIn(
        f"docker.io/motoserver/moto:{locked_version('moto')}",
        "moto",
        needs_python=True,
        needs_certs=True,
    ),
)
SHOP_IMAGE = "localhost/shop:dev"


@dataclass
class Engine:
    """podman on `CACHE`, its API served inside the network namespace `netns`."""

    netns: str
    timings: dict[str, float] = field(default_factory=dict)
    _service: subprocess.Popen[bytes] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _ticker: threading.Thread | None = None
    _executor: ThreadPoolExecutor | None = None

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def home(self) -> Path:
        return CACHE / "engine"

    @property
    def socket(self) -> Path:
        return self.home / "run" / "api.sock"

    @property
    def env(self) -> dict[str, str]:
        return os.environ | {
            "CONTAINERS_CONF": str(self.home / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.home / "storage.conf"),
            "DOCKER_HOST": f"unix://{self.socket}",
            "COMPOSE_HTTP_TIMEOUT": "300",
        }

    def podman(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        done = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {done.stderr[-3000:]}")
        return done.stdout

    def _timed(self, what: str, started: float) -> None:
        self.timings[what] = round(time.monotonic() - started, 1)

    def configure(self) -> None:
        (self.home / "run").mkdir(parents=True, exist_ok=True)
        # runc: crun refuses this kind of machine's hybrid cgroups. Explicit ulimits: the defaults
        # exceed what the sandbox allows. Networks of its own, beside any other podman's.
        (self.home / "containers.conf").write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            "[network]\n"
            'network_backend = "netavark"\n'
            f'network_config_dir = "{self.home / "networks"}"\n'
        )
        (self.home / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.home / "storage"}"\n'
            f'runroot = "{self.home / "run" / "storage"}"\n'
        )

    # --- images -------------------------------------------------------------------------------

    def _key_of(self, image: str) -> str | None:
        done = subprocess.run(
            ["podman", "image", "inspect", "--format", f'{{{{index .Labels "{KEY_LABEL}"}}}}',
             image],
            env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return done.stdout.strip() if done.returncode == 0 else None

    def base_image(self) -> str:
        """A Debian bookworm base from debootstrap, made once per BASE_RECIPE."""
        key = _digest(BASE_RECIPE)
        image = f"localhost/shop-compose-base:{key}"
        if self._key_of(image) is not None:
            return image
        started = time.monotonic()
        rootfs = CACHE / f"rootfs-{key}"
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=ca-certificates", "bookworm",
             str(rootfs), MIRROR],
            check=True, timeout=900, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["podman", "import", "--change", f"LABEL {KEY_LABEL}={key}", "-", image],
            stdin=tar.stdout, env=self.env, check=True, timeout=600, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        assert tar.wait() == 0, "tar of the debootstrap folder failed"
        shutil.rmtree(rootfs)
        self._timed("base image (debootstrap)", started)
        return image

    def _build(self, tag: str, context: Path, key: str, *args: str) -> None:
        # The host's network for builds (they download from Debian's archive and PyPI): no
        # bridge and no firewall rules of podman's on the machine itself.
        started = time.monotonic()
        self.podman("build", "--format", "docker", "--network", "host",
                    "--label", f"{KEY_LABEL}={key}", "-t", tag, *args, str(context),
                    timeout=1200)  # fmt: skip
        self._timed(f"build {tag}", started)

    def stand_in(self, standin: StandIn, base: str) -> None:
        """Build one stand-in unless the cached one was built from the same files."""
        folder = STANDINS / standin.folder
        args = ["--build-arg", f"BASE={base}"]
        extra = base
        if standin.needs_python:
            args += ["--build-arg", f"PYTHON={PYTHON.image}"]
            extra += str(self._key_of(PYTHON.image))
        if standin.folder == "moto":
            version = locked_version("moto")
            args += ["--build-arg", f"MOTO_VERSION={version}"]
            extra += version
        if standin.needs_certs:
            args += ["-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
        key = _digest(_folder_digest(folder), extra)
        if self._key_of(standin.image) != key:
            self._build(standin.image, folder, key, *args)

    def shop_image(self) -> None:
        """The shop's image from the project's own Dockerfile (podman's layer cache keeps a
        second build quick). The machine's CA bundle and a uv setting are mounted for the build
        only: HTTPS here may go through a proxy with its own authority."""
        started = time.monotonic()
        self.podman(
            "build", "--format", "docker", "--network", "host", "-t", SHOP_IMAGE,
            "-v", "/etc/ssl/certs:/etc/ssl/certs:ro",
            "-v", f"{HERE / 'uv.toml'}:/etc/uv/uv.toml:ro",
            str(ROOT), timeout=1800,
        )  # fmt: skip
        self._timed("build shop:dev (Dockerfile)", started)

    def images(self) -> None:
        """Every image the compose file names: the stand-ins, then the shop's own beside the
        others (they share two cores; the downloads are what takes the time)."""
        base = self.base_image()
        self.stand_in(PYTHON, base)
        with ThreadPoolExecutor(max_workers=3) as pool:
            shop = pool.submit(self.shop_image)
            others = [pool.submit(self.stand_in, s, base) for s in STAND_INS if s is not PYTHON]
            for job in [shop, *others]:
                job.result()

    # --- the API, the namespace, health checks ------------------------------------------------

    def _forget_a_killed_run(self) -> None:
        """A run killed outright (no teardown) leaves its API service and namespace behind;
        under the lock, any of them is stale."""
        pid_file = self.home / "run" / "api.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline")
            if cmdline.exists() and str(self.socket).encode() in cmdline.read_bytes():
                os.kill(pid, signal.SIGTERM)
            pid_file.unlink()
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        for line in listed.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(NETNS_PREFIX):
                subprocess.run(["ip", "netns", "del", name], check=False)

    def start(self) -> None:
        self._forget_a_killed_run()
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        self.socket.unlink(missing_ok=True)
        # nsenter, not `ip netns exec`: the latter remounts /sys, and runc then finds no cgroups.
        self._service = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", "podman", "system", "service",
             "--time=0", f"unix://{self.socket}"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        (self.home / "run" / "api.pid").write_text(str(self._service.pid))
        for _ in range(100):
            if self.socket.exists():
                break
            time.sleep(0.1)
        self._ticker = threading.Thread(target=self._tick_health, daemon=True)
        self._ticker.start()
        self._executor = ThreadPoolExecutor(max_workers=1, initializer=self._enter_netns)

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=30)
        if self._executor is not None:
            self._executor.shutdown()
        if self._service is not None:
            self._service.terminate()
            try:
                self._service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._service.kill()
        subprocess.run(["ip", "netns", "del", self.netns], check=False)
        (self.home / "run" / "api.pid").unlink(missing_ok=True)

    def _enter_netns(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/run/netns/{self.netns}") as ns:
            if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")

    def inside(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on a thread that lives in the engine's network namespace (where the
        published ports are)."""
        assert self._executor is not None
        return self._executor.submit(fn, *args, **kwargs).result()

    def _tick_health(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick_health_until_stopped()
            except (subprocess.SubprocessError, OSError, ValueError):
                time.sleep(1)  # a slow podman call: the next round catches up

    def _tick_health_until_stopped(self) -> None:
        intervals: dict[str, float] = {}
        due: dict[str, float] = {}
        while not self._stop.wait(0.5):
            listed = subprocess.run(
                ["podman", "ps", "-q", "--no-trunc", "--filter", "health=starting",
                 "--filter", "health=healthy", "--filter", "health=unhealthy"],
                env=self.env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            now = time.monotonic()
            for container in listed.stdout.split():
                if container not in intervals:
                    interval = self.podman(
                        "inspect",
                        "--format",
                        "{{json .Config.Healthcheck.Interval}}",  # nanoseconds
                        container,
                        check=False,
                    ).strip()
                    intervals[container] = int(interval or "0") / 1e9 or 30.0
                    due[container] = now + min(intervals[container], 1.0)
                if now >= due[container]:
                    due[container] = now + intervals[container]
                    self.podman("healthcheck", "run", container, check=False, timeout=60)

    # --- compose ------------------------------------------------------------------------------

    def compose(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """docker-compose on the project's file, from the project's folder."""
        text = (ROOT / "docker-compose.yml").read_text()
        name = yaml.safe_load(text)["name"]
        lines = [line for line in text.splitlines() if not line.startswith("name:")]
        copy = self.home / "run" / "docker-compose.yml"
        copy.write_text("\n".join(lines) + "\n")
        return subprocess.run(
            ["docker-compose", "-p", name, "--project-directory", str(ROOT), "-f", str(copy),
             *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def leftovers(self, project: str) -> list[str]:
        """Containers, volumes and networks of the compose project that are still there."""
        label = f"label=com.docker.compose.project={project}"
        found = []
        for kind, args in (
            ("container", ["ps", "-a", "--filter", label, "--format", "{{.Names}}"]),
            ("volume", ["volume", "ls", "--filter", label, "--format", "{{.Name}}"]),
            ("network", ["network", "ls", "--filter", label, "--format", "{{.Name}}"]),
        ):
            found += [f"{kind} {name}" for name in self.podman(*args).split()]
        return found

    def clear(self) -> None:
        """Remove whatever an interrupted run left in this engine (its own storage only)."""
        self.podman("rm", "-a", "-f", "-t", "0", check=False)
        self.podman("volume", "prune", "-f", check=False)
        self.podman("network", "prune", "-f", check=False)


@contextmanager
def engine_lock() -> Iterator[None]:
    """One compose test per machine at a time: they share the cache and the engine."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
