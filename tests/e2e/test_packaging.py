"""What ships: the wheel carries the migrations; the image and compose file keep their promises.

No container engine runs here, so the Dockerfile and compose file are checked as files; the
compose file is also validated against the compose specification by `make test`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import yaml

from tests.wheel import build_wheel

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_migrations(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "app/migrations/env.py" in names
    assert "app/migrations/script.py.mako" in names
    assert any(n.startswith("app/migrations/versions/0001_") for n in names)
    # The storefront's templates and stylesheet: an installed shop renders its pages.
    assert "app/storefront/templates/base.html" in names
    assert "app/static/css/storefront.css" in names
    assert not any(n.startswith(("tests/", "infra/", "loadtests/")) for n in names)


def test_the_image_runs_as_a_non_root_user_with_a_health_check() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2
    assert all("slim" in line for line in stages)
    runtime = dockerfile.split(stages[-1])[1]
    assert "USER shop" in runtime
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime
    assert "apt-get" not in runtime and "gcc" not in runtime


def test_the_build_context_leaves_out_the_virtualenv_and_caches() -> None:
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()]
    rules = [line for line in rules if not line.startswith("#")]
    # An allow-list: everything is left out, then only what the image build copies is let back.
    assert rules[0] == "*"
    assert {r for r in rules if r.startswith("!")} == {
        "!pyproject.toml",
        "!README.md",
        "!app/",
        "!uv.lock",
        "!tools/uv/requirements.txt",
    }


def test_the_image_installs_exactly_what_the_lock_names() -> None:
    """The image, CI and a laptop run one set of versions: the build syncs from uv.lock and stops
    when the lock is stale, and uv itself is installed from its hashed pin."""
    build = (ROOT / "Dockerfile").read_text().split("AS runtime")[0]
    run_lines = [line for line in build.splitlines() if line.startswith("RUN ")]
    installs = [line for line in run_lines if "install" in line or "sync" in line]
    assert installs, "the build stage installs nothing"
    for line in installs:
        assert "uv sync --locked" in line or (
            "--require-hashes" in line and "tools/uv/requirements.txt" in build
        ), line
    assert "COPY pyproject.toml uv.lock" in build


def test_compose_starts_the_app_only_after_its_dependencies_are_ready() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"app", "postgres", "redis", "migrate"} <= set(services)
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]
    app_deps = services["app"]["depends_on"]
    assert app_deps["postgres"]["condition"] == "service_healthy"
    assert app_deps["redis"]["condition"] == "service_healthy"
    assert app_deps["migrate"]["condition"] == "service_completed_successfully"
    assert "--reload" in services["app"]["command"]
    assert "shop migrate" in " ".join(services["migrate"]["command"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_pins_every_image_and_moto_at_the_locked_version() -> None:
    """No `latest`: a tag that moves breaks a working file within days. moto's server is the
    release the tests use (uv.lock), so local AWS behaves as it does in the suite."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images = {s["image"] for s in compose["services"].values() if "image" in s}
    assert images, "no images found"
    assert all(":" in i and not i.endswith(":latest") for i in images), sorted(images)
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    moto = next(p["version"] for p in lock["package"] if p["name"] == "moto")
    assert {i for i in images if i.startswith("motoserver/")} == {f"motoserver/moto:{moto}"}


def test_compose_runs_the_worker_on_a_local_queue_made_like_the_stacks() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["moto"]["image"].startswith("motoserver/moto")
    assert "healthcheck" in services["moto"]
    worker, app, queues = services["worker"], services["app"], services["queues"]
    assert worker["command"] == ["shop", "worker"]
    for name in ("migrate", "queues"):
        assert worker["depends_on"][name]["condition"] == "service_completed_successfully"
        assert app["depends_on"][name]["condition"] == "service_completed_successfully"
    assert queues["depends_on"]["moto"]["condition"] == "service_healthy"
    # The server publishes to the queue the job makes, the worker consumes it, SES is moto's.
    made = " ".join(queues["command"])
    for service in (app, worker):
        env = service["environment"]
        assert env["SHOP_QUEUE_URL"].startswith("http://moto:5000/")
        assert env["SHOP_QUEUE_URL"].endswith("/" + "shop-orders")
        assert env["SHOP_AWS_ENDPOINT_URL"] == "http://moto:5000"
        assert f'"{env["SHOP_MAIL_SENDER"]}"' in made
    # The dead-letter queue after 5 receives, as infra/shop_infra/constructs/queue.py has it.
    assert '"maxReceiveCount": "5"' in made and "shop-orders-dead" in made


def _runtime_environment_and_command() -> tuple[dict[str, str], list[str]]:
    """The ENV and CMD of the Dockerfile's last stage, as the container would get them."""
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = dockerfile.split("AS runtime", 1)[1]
    env: dict[str, str] = {}
    command: list[str] = []
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in shlex.split(line[4:]))
        elif line.startswith("CMD "):
            command = json.loads(line[4:])
    return env, command


def test_the_image_run_as_shipped_refuses_the_published_jwt_key(tmp_path: Path) -> None:
    """The image's own environment and command, with nothing added: it must not serve with
    the development key that anyone can read in this repository."""
    image_env, command = _runtime_environment_and_command()
    assert image_env["SHOP_ENV"] == "production"
    assert command[:2] == ["shop", "serve"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env.update({k: v for k, v in image_env.items() if k.startswith("SHOP_")}, HOME=str(tmp_path))
    shop = str(Path(sys.executable).parent / "shop")
    ran = subprocess.run(
        [shop, *command[1:], "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode != 0
    assert "SHOP_JWT_SECRET" in ran.stderr and "published default" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert list(tmp_path.iterdir()) == []  # and it made no database on the way
