"""The `shop` command: serve, migrate, seed, create an admin, run the queue worker, forget old
idempotency keys, publish the static files, move a logical shard."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import copy
import getpass
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from types import FrameType
from typing import Any, TypeVar

from pydantic import ValidationError

from app.kernel.errors import InvalidRequest, ShopError
from app.kernel.security import Role
from app.kernel.settings import Settings

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        sys.exit(f"shop: invalid settings:\n{exc}")


def _run(work: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    from app.main import StartupProblem

    settings = _settings()
    try:
        return asyncio.run(work(settings))
    except StartupProblem as exc:
        sys.exit(f"shop: {exc}")
    except InvalidRequest as exc:
        sys.exit(f"shop: {exc.field}: {exc.message}")
    except ShopError as exc:
        sys.exit(f"shop: {exc.message}")


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    # The server processes read their settings from the environment: pass the flags on.
    os.environ["SHOP_ACCESS_LOG"] = "true" if args.access_log else "false"
    settings = _settings()
    workers = args.workers or settings.workers
    if workers > 1 and not args.reload:
        # Every worker writes its metrics here and /metrics sums them (a fresh folder per start).
        metrics_dir = tempfile.mkdtemp(prefix="shop-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        atexit.register(shutil.rmtree, metrics_dir, ignore_errors=True)
    # uvicorn hands the stop signal back to this handler once it has shut down; a requested
    # stop is a clean exit (0), and a SIGTERM before uvicorn starts still stops the command.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if args.migrate:
        cmd_migrate(args)
    _preflight(settings)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=None if args.reload else workers,
        reload=args.reload,
        reload_dirs=["app"] if args.reload else None,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        timeout_keep_alive=settings.http_keepalive_s,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        access_log=False,  # the shop logs each request itself, as one JSON line
        log_config=_log_config(),
    )


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, plus the shop's loggers; request lines are bare JSON on stdout."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["json_line"] = {"format": "%(message)s"}
    config["handlers"]["json_line"] = {
        "class": "logging.StreamHandler",
        "formatter": "json_line",
        "stream": "ext://sys.stdout",
    }
    config["loggers"]["shop"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config["loggers"]["shop.access"] = {
        "handlers": ["json_line"],
        "level": "INFO",
        "propagate": False,
    }
    return config


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _preflight(settings: Settings) -> None:
    """Open and close what the server will hold, so that a wrong database or a missing
    migration stops `shop serve` with one clear line instead of a traceback per worker."""
    from app.main import StartupProblem, close_resources, open_resources

    async def check() -> None:
        await close_resources(await open_resources(settings))

    try:
        asyncio.run(check())
    except StartupProblem as exc:
        sys.exit(f"shop: cannot start: {exc}")


def cmd_migrate(args: argparse.Namespace) -> None:
    from app.adapters import aws
    from app.migrations import runner

    settings = _settings()
    resolved = aws.resolve(settings)
    url = resolved.primary_url
    if settings.is_embedded:
        settings.embedded_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Stage 8's federated databases and shards carry the same schema; each fills its own tables.
    shards = resolved.shard_urls
    for each in (url, *resolved.function_urls.values(), *shards):
        if args.down:
            runner.downgrade(each, args.revision)
        else:
            try:
                runner.upgrade(each, args.revision)
            except runner.SchemaProblem as exc:
                sys.exit(f"shop: cannot migrate: {exc}")
    if not args.down:
        for shard in shards:
            runner.prepare_shard(shard)
    where = f"embedded SQLite {settings.embedded_path}" if settings.is_embedded else "database"
    if resolved.function_urls or shards:
        names = [*resolved.function_urls, *(f"shard {n}" for n in range(1, len(shards) + 1))]
        where = f"databases main, {', '.join(names)}"
    print(f"shop: {where} migrated in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def _progress(what: str, done: int, total: int) -> None:
    print(f"  {what}: {done}/{total}", file=sys.stderr, flush=True)


def cmd_seed(args: argparse.Namespace) -> None:
    from app.main import close_resources, open_resources
    from app.seed import DEMO_PASSWORD, seed

    async def work(settings: Settings) -> tuple[int, int]:
        res = await open_resources(settings)
        try:
            return await seed(
                res.db,
                res.passwords,
                products=args.products,
                customers_count=args.customers,
                progress=_progress,
            )
        finally:
            await close_resources(res)

    started = time.perf_counter()
    products, customers = _run(work)
    print(
        f"shop: seeded {products} new products and {customers} new customers in "
        f"{time.perf_counter() - started:.1f} s (demo customers sign in as "
        f"customerN@example.com with password {DEMO_PASSWORD!r})",
        file=sys.stderr,
    )


def _password_rules() -> str:
    from app.customers.domain import MAX_PASSWORD, MIN_PASSWORD

    return (
        f"shop: a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters, at least 4 "
        "different ones, must not contain the e-mail's name (before the @), and must not be easy "
        "to guess (a common password, a keyboard row, a sequence); a few unrelated words are fine"
    )


def _admin_password(args: argparse.Namespace) -> str | None:
    """The password from standard input, the command line, $SHOP_ADMIN_PASSWORD, or asked for
    on a terminal; None to promote an existing account without touching its password."""
    if args.password_stdin:
        # As `docker login --password-stdin`: everything on stdin, less the final newline.
        piped = sys.stdin.read().rstrip("\r\n")
        if not piped:
            sys.exit("shop: --password-stdin: standard input holds no password")
        return piped
    password: str | None = args.password or os.environ.get("SHOP_ADMIN_PASSWORD")
    if password is None and sys.stdin.isatty():
        password = getpass.getpass("Admin password (10+ characters): ")
    return password


def cmd_create_admin(args: argparse.Namespace) -> None:
    from app.customers import service
    from app.customers.schemas import SignUp
    from app.kernel.errors import Conflict
    from app.main import close_resources, open_resources

    password = _admin_password(args)

    async def work(settings: Settings) -> str:
        res = await open_resources(settings)
        try:
            if password is not None:
                try:
                    data = SignUp(email=args.email, password=password, full_name=args.name)
                    created = await service.sign_up(
                        res.db, res.passwords, data=data, role=Role.ADMIN
                    )
                    return f"created admin {created.email}"
                except Conflict:
                    pass
                except ValidationError as exc:
                    field, why = exc.errors()[0]["loc"][0], exc.errors()[0]["msg"]
                    rules = f"\n{_password_rules()}" if field == "password" else ""
                    sys.exit(f"shop: {field}: {why}{rules}")
                except InvalidRequest as exc:
                    if exc.field != "password":
                        raise
                    sys.exit(f"shop: password: {exc.message}\n{_password_rules()}")
            promoted = await service.set_role(res.db, email=args.email, role=Role.ADMIN)
            return f"{promoted.email} is now an admin"
        finally:
            await close_resources(res)

    print(f"shop: {_run(work)}", file=sys.stderr)


def cmd_worker(args: argparse.Namespace) -> None:
    import logging

    from app.kernel.settings import WorkerSettings
    from app.worker import WorkerProblem, serve

    # A worker signs and checks no token: it needs no JWT key (the stack gives it none).
    try:
        settings = WorkerSettings()
    except ValidationError as exc:
        sys.exit(f"shop: invalid settings:\n{exc}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        if args.action == "redrive":
            from app.worker import redrive

            moved = asyncio.run(redrive(settings))
            print(f"shop: worker: moved {moved} dead-lettered messages back", file=sys.stderr)
        else:
            asyncio.run(serve(settings))
    except WorkerProblem as exc:
        sys.exit(f"shop: worker: {exc}")


def cmd_purge_keys(args: argparse.Namespace) -> None:
    from app.main import close_resources, open_resources
    from app.orders import service

    async def work(settings: Settings) -> int:
        res = await open_resources(settings)
        try:
            hours = max(args.hours, settings.idempotency_ttl_h)
            # Keys live where their orders do: each order shard (stage 8), else the main one.
            return sum(
                [
                    await service.purge_idempotency_keys(db, older_than=timedelta(hours=hours))
                    for db in res.databases.recording()
                ]
            )
        finally:
            await close_resources(res)

    print(f"shop: forgot {_run(work)} idempotency keys", file=sys.stderr)


def cmd_shards_move(args: argparse.Namespace) -> None:
    from app.main import close_resources, open_resources
    from app.orders.moves import move_logical_shard

    def say(line: str) -> None:
        print(f"shop: {line}", file=sys.stderr, flush=True)

    async def work(settings: Settings) -> None:
        res = await open_resources(settings)
        try:
            await move_logical_shard(
                res.databases, logical=args.logical, to=args.to, grace_s=args.grace_s, say=say
            )
        finally:
            await close_resources(res)

    _run(work)
    say(f"logical shard {args.logical} is in shard {args.to}")


def cmd_assets_publish(args: argparse.Namespace) -> None:
    from app.adapters import assets

    settings = _settings()
    if not settings.assets_bucket:
        sys.exit(
            "shop: assets publish: SHOP_ASSETS_BUCKET is not set (without a bucket the app "
            "serves its static files itself)"
        )
    found = assets.static_files()
    if args.dry_run:
        for item in found.values():
            print(f"{assets.PREFIX}{item.name}")
        return
    started = time.perf_counter()
    published = assets.publish_static(assets.s3_client(settings), settings.assets_bucket, found)
    for key in published.uploaded:
        print(key)
    print(
        f"shop: published {len(published.uploaded) - 1} new static files and the manifest to "
        f"s3://{settings.assets_bucket}/{assets.PREFIX} ({len(published.unchanged)} already "
        f"there) in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )


def _count(text: str) -> int:
    """A whole number from 0 to 10 million, or argparse's usage error."""
    if not text.isdigit() or int(text) > 10_000_000:
        raise argparse.ArgumentTypeError("a whole number from 0 to 10000000")
    return int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shop", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers", type=int, default=None, help="server processes (default: $SHOP_WORKERS, 1)"
    )
    serve.add_argument("--reload", action="store_true", help="restart on code changes (dev)")
    serve.add_argument("--migrate", action="store_true", help="apply migrations first")
    serve.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    serve.set_defaults(func=cmd_serve, revision="head", down=False)

    migrate = sub.add_parser("migrate", help="apply (or revert) the database migrations")
    migrate.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    migrate.add_argument("--down", action="store_true", help="downgrade to the revision")
    migrate.set_defaults(func=cmd_migrate)

    seed = sub.add_parser("seed", help="add demo products and customers (idempotent)")
    seed.add_argument("--products", type=_count, default=1000)
    seed.add_argument("--customers", type=_count, default=20)
    seed.set_defaults(func=cmd_seed)

    admin = sub.add_parser("create-admin", help="create an admin, or promote an account")
    admin.add_argument("--email", required=True)
    secret = admin.add_mutually_exclusive_group()
    secret.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (for scripts: keeps it out of `ps`)",
    )
    secret.add_argument(
        "--password",
        help="the password (visible to other users in `ps`); default: $SHOP_ADMIN_PASSWORD, "
        "or asked on a terminal",
    )
    admin.add_argument("--name", default="Shop Admin")
    admin.set_defaults(func=cmd_create_admin)

    worker = sub.add_parser(
        "worker", help="finish placed orders from the queue (stage 7; needs SHOP_QUEUE_URL)"
    )
    worker.add_argument(
        "action",
        nargs="?",
        choices=["redrive"],
        help="redrive: move the dead-letter queue's messages back to the queue, and stop",
    )
    worker.set_defaults(func=cmd_worker)

    purge = sub.add_parser("purge-keys", help="forget idempotency keys older than the TTL")
    purge.add_argument("--hours", type=int, default=24)
    purge.set_defaults(func=cmd_purge_keys)

    shards = sub.add_parser("shards", help="the order shards (stage 8)")
    shards_sub = shards.add_subparsers(dest="shards_command", required=True)
    move = shards_sub.add_parser(
        "move",
        help="move a logical shard (1/1024 of the customers) to another order shard while the "
        "shop serves; run it again to finish a move that died",
    )
    move.add_argument("logical", type=int, help="the logical shard: a customer id modulo 1024")
    move.add_argument("--to", type=int, required=True, help="the shard, 1-based")
    move.add_argument(
        "--grace-s",
        type=float,
        default=10.0,
        help="seconds the moved rows stay in the old shard for reads of stale processes",
    )
    move.set_defaults(func=cmd_shards_move)

    assets = sub.add_parser("assets", help="the app's static files (stage 5: S3 and the CDN)")
    assets_sub = assets.add_subparsers(dest="assets_command", required=True)
    publish = assets_sub.add_parser(
        "publish",
        help="upload the static files to SHOP_ASSETS_BUCKET under fingerprinted names, "
        "with a manifest",
    )
    publish.add_argument(
        "--dry-run", action="store_true", help="print the keys it would write, and stop"
    )
    publish.set_defaults(func=cmd_assets_publish)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.func(args)
