"""The native components of a stage, each in the foreground under the run's own folder (pids,
logs, temp files), registered on an ExitStack so that they stop, in reverse order, even on
Ctrl-C or a failure: PostgreSQL and its streaming replica (tests/pg_cluster.py's private
clusters; at stage 8 also one per order shard and per federated database), redis-server,
moto's server, the shop's server processes and workers, nginx as the load balancer and a
second nginx with proxy_cache as the CDN stand-in.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.pg_cluster import Cluster, private_cluster, streaming_replica

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REGION = "us-east-1"
CARTS_TABLE = "shop-carts"
ASSETS_BUCKET = "shop-assets"
QUEUE = "shop-orders"
AWS_KEYS = {"AWS_ACCESS_KEY_ID": "ladder-local", "AWS_SECRET_ACCESS_KEY": "ladder-local"}
RDS_MAX_CONNECTIONS = 900
"""RDS's default max_connections for the stacks' db.m7g.large (8 GiB): LEAST(memory / 9531392,
5000). With a smaller limit the fleet a write-heavy ramp grows to (8 app processes, each with
its pools) is refused connections before the primary's CPU is the limit."""
POSTGRES_SETTINGS = (f"max_connections={RDS_MAX_CONNECTIONS}", "shared_buffers=64MB")


class ComponentFailed(RuntimeError):
    """A component did not start; the message says which and ends with its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, process: subprocess.Popen[bytes] | None, log: Path, timeout: float = 60
) -> None:
    """Poll `url` until it answers (any status), or fail with the process's log. A process
    still running when the time is up is stopped with SIGABRT: a Python started with
    PYTHONFAULTHANDLER (as the shop's processes are, `Topology.shop_env`) writes where each
    of its threads stood into the log, which the error then carries."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    if process is not None and process.poll() is not None:
        what = f"exited with code {process.returncode} after {time.monotonic() - started:.0f} s"
    else:
        what = f"did not answer in {timeout:.0f} s"
        if process is not None:
            process.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
    tail = log.read_text(errors="replace")[-6000:] if log.is_file() else ""
    raise ComponentFailed(f"{url} {what}; its log ends:\n{tail or '(empty)'}")


@dataclass
class Process:
    """A started process, its log, and the group (cgroup name) it belongs to."""

    name: str
    group: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Topology:
    """What runs for one stage, with the addresses the app and Locust need."""

    folder: Path
    stack: ExitStack
    env: dict[str, str] = field(default_factory=dict)
    """The shop's settings (SHOP_*) and fake AWS credentials, shared by every app process."""
    processes: list[Process] = field(default_factory=list)
    primary: Cluster | None = None
    replica: Cluster | None = None
    shards: list[Cluster] = field(default_factory=list)
    """Stage 8: the order shards' primaries, in shard order."""
    federated: dict[str, Cluster] = field(default_factory=dict)
    """Stage 8: a primary per federated database (accounting, delivery)."""
    database: str = "shop"
    moto_url: str | None = None
    queue_url: str | None = None
    apps: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)
    nginx_conf: Path | None = None
    nginx: Process | None = None
    target: str = ""
    """The URL Locust drives: the CDN stand-in, else the balancer, else the one app."""
    settle_s: float = 12.0
    """How long the suite's closing stock check waits (Stage.settle_s)."""

    def spawn(
        self,
        name: str,
        group: str,
        command: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        port: int = 0,
    ) -> Process:
        log = self.folder / f"{name}.log"
        handle = log.open("ab")
        popen = subprocess.Popen(
            list(command),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else os.environ.copy(),
            cwd=ROOT,
            start_new_session=True,  # Ctrl-C reaches the ladder, which stops everything in order
        )
        handle.close()
        process = Process(name=name, group=group, popen=popen, log=log, port=port)
        self.processes.append(process)
        self.stack.callback(process.stop)
        return process

    # --- data ---------------------------------------------------------------------------
    def start_postgres(self, *, replica: bool) -> None:
        self.primary = self.stack.enter_context(private_cluster(POSTGRES_SETTINGS))
        url = self.primary.create_database(self.database)
        self.env["SHOP_DATABASE_URL"] = url
        if replica:
            self.replica = self.stack.enter_context(streaming_replica(self.primary))
            self.replica.wait_ready()
            self.env["SHOP_DATABASE_REPLICA_URLS"] = self.replica.url(self.database)

    def start_stage_8_databases(self, *, shards: int, federated: Sequence[str]) -> None:
        """A PostgreSQL primary per order shard and per federated database, each its own
        server (as each is its own RDS instance), named to the app by its settings."""
        urls = []
        for _ in range(shards):
            cluster = self.stack.enter_context(private_cluster(POSTGRES_SETTINGS))
            self.shards.append(cluster)
            urls.append(cluster.create_database(self.database))
        if urls:
            self.env["SHOP_ORDER_SHARD_URLS"] = ",".join(urls)
        for name in federated:
            cluster = self.stack.enter_context(private_cluster(POSTGRES_SETTINGS))
            self.federated[name] = cluster
            self.env[f"SHOP_{name.upper()}_DATABASE_URL"] = cluster.create_database(self.database)

    def postmaster_pid(self, cluster: Cluster) -> int:
        return int((cluster.data / "postmaster.pid").read_text().split()[0])

    def start_redis(self, group: str) -> None:
        port = free_port()
        folder = self.folder / "redis"
        folder.mkdir()
        command = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(folder), "--daemonize", "no",
        ]  # fmt: skip
        self.spawn("redis", group, command, port=port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            raise ComponentFailed("redis-server did not answer PING")
        self.env["SHOP_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"

    def start_moto(self, group: str, *, queue: bool) -> None:
        port = free_port()
        # moto with its costs that grow with a queue's depth taken out (motoserver.py).
        command = [sys.executable, "-m", "loadtests.ladder.motoserver"]
        moto = self.spawn("moto", group, [*command, "-H", "127.0.0.1", "-p", str(port)], port=port)
        self.moto_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.moto_url}/moto-api/", moto.popen, moto.log)
        import boto3

        def client(service: str) -> Any:
            return boto3.client(
                service,
                endpoint_url=self.moto_url,
                region_name=REGION,
                aws_access_key_id=AWS_KEYS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=AWS_KEYS["AWS_SECRET_ACCESS_KEY"],
            )

        # The carts table as the stage 5 stack makes it (tests/integration/test_carts.py).
        dynamodb = client("dynamodb")
        dynamodb.create_table(
            TableName=CARTS_TABLE,
            AttributeDefinitions=[{"AttributeName": "cart_id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "cart_id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.update_time_to_live(
            TableName=CARTS_TABLE,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
        )
        self.env.update(AWS_KEYS)
        self.env |= {
            "SHOP_AWS_ENDPOINT_URL": self.moto_url,
            "SHOP_AWS_REGION": REGION,
            "SHOP_CARTS_TABLE": CARTS_TABLE,
        }
        if queue:
            # The order queue and its dead-letter queue as the stage 7 stack makes them.
            sqs = client("sqs")
            dead = sqs.create_queue(QueueName=f"{QUEUE}-dead")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])
            policy = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": "5"}
            self.queue_url = sqs.create_queue(
                QueueName=QUEUE,
                Attributes={"VisibilityTimeout": "60", "RedrivePolicy": json.dumps(policy)},
            )["QueueUrl"]
            client("ses").verify_email_identity(EmailAddress="orders@shop.local")
            self.env |= {"SHOP_QUEUE_URL": self.queue_url, "SHOP_MAIL_SENDER": "orders@shop.local"}

    def shop_env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
        # A process that stalls (wait_http) or crashes leaves its threads' stacks in its log.
        env |= self.env | {"PYTHONFAULTHANDLER": "1"} | extra
        return env

    def shop(self, *args: str, stdin: str | None = None) -> None:
        """Run one `shop` command (migrate, seed, create-admin) to its end."""
        done = subprocess.run(
            [str(BIN / "shop"), *args],
            env=self.shop_env({}),
            input=stdin,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
        )
        if done.returncode != 0:
            raise ComponentFailed(f"shop {args[0]} failed:\n{done.stdout}{done.stderr}")

    # --- the shop -----------------------------------------------------------------------
    def start_app(self, index: int, group: str) -> Process:
        port = free_port()
        command = [str(BIN / "shop"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        command.append("--no-access-log")
        app = self.spawn(f"app-{index}", group, command, env=self.shop_env({}), port=port)
        # Generous: a process starting beside a loaded stage on a shared machine is slow, and
        # one that stalls leaves its stacks in the error (wait_http).
        wait_http(f"http://127.0.0.1:{port}/readyz", app.popen, app.log, timeout=120)
        self.apps.append(app)
        return app

    def stop_app(self, app: Process) -> None:
        self.apps.remove(app)
        app.stop()

    def start_worker(self, index: int, group: str) -> Process:
        port = free_port()
        env = self.shop_env({"SHOP_WORKER_METRICS_PORT": str(port), "SHOP_WORKER_WAIT_S": "2"})
        worker = self.spawn(
            f"worker-{index}", group, [str(BIN / "shop"), "worker"], env=env, port=port
        )
        wait_http(f"http://127.0.0.1:{port}/metrics", worker.popen, worker.log)
        self.workers.append(worker)
        return worker

    # --- nginx --------------------------------------------------------------------------
    def write_balancer(self, conf: Path, port: int) -> None:
        # max_fails=0: an answer that fails does not take a process out for 10 s (nginx's
        # passive default), which would turn one slow answer under load into a burst of 502s;
        # an ALB, too, takes targets out by health check only.
        upstream = "".join(f"        server 127.0.0.1:{a.port} max_fails=0;\n" for a in self.apps)
        conf.write_text(
            _nginx_main(conf.parent)
            + "    upstream shop {\n        least_conn;\n"
            + upstream
            + "        keepalive 64;\n    }\n"
            + f"    server {{\n        listen 127.0.0.1:{port};\n"
            + "        location = /metrics { return 404; }\n"
            + "        location / {\n"
            + "            proxy_pass http://shop;\n"
            + _proxy_headers()
            + "        }\n    }\n}\n"
        )

    def start_balancer(self, group: str) -> str:
        port = free_port()
        folder = self.folder / "nginx"
        folder.mkdir()
        self.nginx_conf = folder / "nginx.conf"
        self.write_balancer(self.nginx_conf, port)
        self.nginx = self._nginx("nginx", group, folder, port)
        return f"http://127.0.0.1:{port}"

    def reload_balancer(self) -> None:
        """Point the balancer at the current app processes (nginx reloads without a drop)."""
        assert self.nginx is not None and self.nginx_conf is not None
        self.write_balancer(self.nginx_conf, self.nginx.port)
        self.nginx.popen.send_signal(signal.SIGHUP)

    def start_cdn(self, group: str, origin: str) -> str:
        """nginx with proxy_cache in front of the balancer: it keeps what the shop marks
        `public` (catalog answers, fingerprinted static files) for their max-age, as a CDN
        does, and passes the rest (private, no-store) through."""
        port = free_port()
        folder = self.folder / "cdn"
        folder.mkdir()
        conf = folder / "nginx.conf"
        conf.write_text(
            _nginx_main(folder)
            + f"    proxy_cache_path {folder}/cache levels=1:2 keys_zone=cdn:10m max_size=256m;\n"
            + f"    upstream origin {{\n        server {origin.removeprefix('http://')};\n"
            + "        keepalive 64;\n    }\n"
            + f"    server {{\n        listen 127.0.0.1:{port};\n"
            + "        location / {\n"
            + "            proxy_pass http://origin;\n"
            + "            proxy_cache cdn;\n"
            + "            proxy_cache_lock on;\n"
            + "            proxy_cache_use_stale updating;\n"
            + "            add_header X-Cache-Status $upstream_cache_status always;\n"
            + _proxy_headers()
            + "        }\n    }\n}\n"
        )
        self._nginx("cdn", group, folder, port)
        return f"http://127.0.0.1:{port}"

    def _nginx(self, name: str, group: str, folder: Path, port: int) -> Process:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).is_file():
            raise ComponentFailed(
                "nginx is not installed (make ladder installs it: scripts/system-packages.sh)"
            )
        conf = folder / "nginx.conf"
        command = [
            binary,
            "-p",
            str(folder),
            "-c",
            str(conf),
            "-e",
            str(folder / "error.log"),
            "-g",
            "daemon off;",
        ]
        process = self.spawn(name, group, command, port=port)
        wait_http(f"http://127.0.0.1:{port}/readyz", process.popen, folder / "error.log")
        return process


def _nginx_main(folder: Path) -> str:
    """The top of an nginx.conf whose pid, logs and temp files stay in `folder`."""
    temp = "".join(
        f"    {kind}_temp_path {folder}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "worker_processes 1;\n"
        f"pid {folder}/nginx.pid;\n"
        f"error_log {folder}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    access_log off;\n"
        "    keepalive_requests 100000;\n" + temp
    )


def _proxy_headers() -> str:
    return (
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "            proxy_set_header Host $host;\n"
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "            proxy_set_header X-Forwarded-Proto $scheme;\n"
    )


def jwt_secret() -> str:
    return "ladder-" + secrets.token_hex(24)
