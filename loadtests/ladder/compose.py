"""The stage ladder as docker compose profiles (`docker compose --profile stage-3 up`), made
from the same data as the native ladder (stages.py), so that `cpus:` and the cgroup quotas
cannot drift apart.

`python -m loadtests.ladder.compose` prints the block; `--write` replaces it between its marker
lines in docker-compose.yml. tests/loadtests/test_ladder_compose.py checks that the committed
file holds exactly this block and that its `cpus:` match the budgets.

Every service of stage N is named `sN-...`, carries the label `shop.ladder.component` (the
component it counts as in the results) and has `cpus:` as its budget; the app and the workers
run `deploy.replicas` copies of one budget each. Compose cannot put three containers under one
quota, so stage 1's box is its app, PostgreSQL and Redis with the box's budget split between
them (all three labelled `box`). Run one stage at a time: its entry (the caching proxy, else the
balancer, else the app) is http://127.0.0.1:8180. The services share network aliases
(ladder-postgres, ladder-app, ...) so that one nginx and one pg_hba file serve every stage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from loadtests.ladder.stages import FEDERATED, STAGES, Stage

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
BEGIN = "  # --- stage ladder profiles: made by `python -m loadtests.ladder.compose --write` ---\n"
END = "  # --- end of the stage ladder profiles ---\n"
LABEL = "shop.ladder.component"
ENTRY = "127.0.0.1:8180"
BOX_SPLIT = {"app": 0.6, "postgres": 0.3, "redis": 0.1}
"""How stage 1's box budget is shared out in compose (the native ladder uses one quota)."""


def _service(
    stage: Stage, role: str, base: str, component: str | None, cpus: float | None, extra: str = ""
) -> str:
    lines = [
        f"  s{stage.number}-{role}:",
        f"    <<: *ladder-{base}",
        f"    profiles: [stage-{stage.number}]",
        f"    networks: {{default: {{aliases: [ladder-{role}]}}}}",
    ]
    if component is not None and cpus is not None:
        lines.append(f"    labels: {{{LABEL}: {component}}}")
        lines.append(f"    cpus: {round(cpus, 3)}")
    return "\n".join(lines) + "\n" + extra


def _environment(stage: Stage) -> str:
    env: dict[str, str] = {
        "SHOP_DATABASE_POOL_SIZE": str(stage.pool_size),
        "SHOP_DATABASE_MAX_OVERFLOW": str(stage.max_overflow),
    }
    if stage.replica:
        env["SHOP_DATABASE_REPLICA_URLS"] = _url("replica")
    if stage.cache:
        env["SHOP_REDIS_URL"] = "redis://ladder-redis:6379/0"
    if stage.aws:
        env["SHOP_CARTS_TABLE"] = "shop-carts"
    if stage.queue:
        env["SHOP_QUEUE_URL"] = "http://ladder-moto:5000/123456789012/shop-orders"
    if stage.shards:
        env["SHOP_ORDER_SHARD_URLS"] = ",".join(_url(role) for role in _shard_roles(stage))
    if stage.federated:
        for name in FEDERATED:
            env[f"SHOP_{name.upper()}_DATABASE_URL"] = _url(name)
    env |= stage.settings
    body = "".join(f"      {key}: {value!r}\n".replace("'", '"') for key, value in env.items())
    return f"    environment:\n      <<: *ladder-env\n{body}"


def _url(role: str) -> str:
    """The URL of the `shop` database on the PostgreSQL server of `role` (its alias)."""
    return (
        f"postgresql+psycopg://shop:${{POSTGRES_PASSWORD:-shop-local-only}}@ladder-{role}:5432/shop"
    )


def _shard_roles(stage: Stage) -> list[str]:
    return [f"shard-{index}" for index in range(1, stage.shards + 1)]


def _depends(*names: str, condition: str = "service_healthy") -> str:
    return "    depends_on:\n" + "".join(
        f"      {name}: {{condition: {condition}}}\n" for name in names
    )


def stage_block(stage: Stage) -> str:
    """The services of one stage's profile, as compose YAML."""
    n = stage.number
    box = stage.single_box

    def cpus(component: str, own: float) -> tuple[str, float]:
        return ("box", stage.box_cpus * BOX_SPLIT[component]) if box else (component, own)

    parts = [f"  # stage {n} ({stage.name}): {_budget_text(stage)}\n"]
    parts.append(_service(stage, "postgres", "postgres", *cpus("postgres", stage.postgres_cpus)))
    if stage.replica:
        parts.append(
            _service(
                stage, "replica", "replica", "replica", stage.replica_cpus,
                _depends(f"s{n}-postgres"),
            )
        )  # fmt: skip
    # Stage 8: a PostgreSQL server per order shard and per federated database.
    databases = _shard_roles(stage) + (list(FEDERATED) if stage.federated else [])
    for role in databases:
        component = "shard" if role.startswith("shard") else "federated"
        own = stage.shard_cpus if component == "shard" else stage.federated_cpus
        parts.append(_service(stage, role, "postgres", component, own))
    if stage.cache:
        parts.append(_service(stage, "redis", "redis", *cpus("redis", stage.redis_cpus)))
    if stage.aws:
        # No budget: moto stands for AWS's managed services (stages.Stage.aws).
        parts.append(_service(stage, "moto", "moto", None, None))
    env = _environment(stage)
    waits = [f"s{n}-{role}" for role in ["postgres", *databases]]
    waits += [f"s{n}-moto"] if stage.aws else []
    parts.append(_service(stage, "setup", "setup", None, None, env + _depends(*waits)))
    # The app starts once the data is set up, beside whatever else it reads from: so naming
    # the stage's entry (`up s3-lb`) starts the whole stage and nothing of another one.
    started = [f"s{n}-{role}" for role, on in (("replica", stage.replica),
               ("redis", stage.cache), ("moto", stage.aws)) if on]  # fmt: skip
    ready = _depends(f"s{n}-setup", condition="service_completed_successfully")
    ready += _depends(*started, condition="service_started").removeprefix("    depends_on:\n")
    app_component, app_cpus = cpus("app", stage.app_cpus)
    parts.append(
        _service(
            stage, "app", "app", app_component, app_cpus,
            env + f"    deploy: {{replicas: {stage.app_processes}}}\n" + ready
            + ("" if stage.balancer else f'    ports: ["{ENTRY}:8000"]\n'),
        )
    )  # fmt: skip
    if stage.queue:
        parts.append(
            _service(
                stage, "worker", "worker", "worker", stage.worker_cpus,
                env + f"    deploy: {{replicas: {stage.worker_processes}}}\n" + ready,
            )
        )  # fmt: skip
    if stage.balancer:
        parts.append(
            _service(
                stage, "lb", "lb", "nginx", stage.nginx_cpus,
                ("" if stage.cdn else f'    ports: ["{ENTRY}:80"]\n')
                + _depends(f"s{n}-app", condition="service_started"),
            )
        )  # fmt: skip
    if stage.cdn:
        parts.append(
            _service(
                stage, "cdn", "cdn", "cdn", stage.cdn_cpus,
                f'    ports: ["{ENTRY}:80"]\n' + _depends(f"s{n}-lb", condition="service_started"),
            )
        )  # fmt: skip
    return "".join(parts)


def _budget_text(stage: Stage) -> str:
    found: dict[str, object] = dict(stage.budgets())
    if "app" in found and stage.app_processes > 1:
        found["app"] = f"{stage.app_processes} x {stage.app_cpus}"
    return ", ".join(f"{name} {cpus}" for name, cpus in found.items())


def render() -> str:
    """The whole block of profile services, between its marker lines."""
    return BEGIN + "\n".join(stage_block(stage) for stage in STAGES.values()) + END


def budgets_in(compose: dict[str, Any], stage: Stage) -> dict[str, float]:
    """CPUs per component of a stage's profile in a parsed compose file (cpus x replicas)."""
    found: dict[str, float] = {}
    for service in compose.get("services", {}).values():
        if f"stage-{stage.number}" not in service.get("profiles", []):
            continue
        component = service.get("labels", {}).get(LABEL)
        if component is None:
            continue
        replicas = service.get("deploy", {}).get("replicas", 1)
        found[component] = round(found.get(component, 0.0) + float(service["cpus"]) * replicas, 3)
    return found


def block_in(text: str) -> str | None:
    """The marked block of a compose file's text (None when it has none)."""
    if BEGIN not in text or END not in text:
        return None
    return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END


def write(path: Path = COMPOSE) -> None:
    """Replace the marked block in `path` (the block must already be there, after the
    `x-ladder-*` anchors it uses)."""
    text = path.read_text()
    current = block_in(text)
    if current is None:
        raise SystemExit(f"{path} has no stage ladder block to replace")
    path.write_text(text.replace(current, render()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"update {COMPOSE.name} in place")
    args = parser.parse_args()
    if args.write:
        write()
        print(f"updated {COMPOSE}", file=sys.stderr)
    else:
        print(render(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
