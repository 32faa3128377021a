"""moto's CPU per order against the queue's depth, stock and as the ladder runs it.

    .venv/bin/python scripts/moto_cost.py [DEPTH ...]      # default 0 1000 3000

Each server is a fresh process; the queue is filled to DEPTH, then 60 rounds of what the shop
asks per ten orders (a batch sent by the relay, received by a worker, one SES mail per order, the
batch deleted, the ladder's depth sample) are timed on the server's own CPU counters.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from loadtests.ladder.cgroups import process_cpu_s  # noqa: E402
from loadtests.ladder.components import free_port, wait_http  # noqa: E402

SERVERS = {
    "stock": [str(Path(sys.executable).parent / "moto_server")],
    "ladder": [sys.executable, "-m", "loadtests.ladder.motoserver"],
}
BODY = json.dumps({"kind": "order.placed", "payload": {"order_id": 1, "lines": [[3, 1]]}})
ROUNDS = 60


def measure(server: str, depth: int) -> float:
    """moto's CPU milliseconds per order."""
    port = free_port()
    log = Path(f"/tmp/moto-cost-{server}.log")
    with log.open("w") as out:
        popen = subprocess.Popen(
            [*SERVERS[server], "-H", "127.0.0.1", "-p", str(port)], cwd=ROOT, stdout=out, stderr=out
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/moto-api/", popen, log)
        keys = {"aws_access_key_id": "x", "aws_secret_access_key": "x"}
        sqs = boto3.client("sqs", endpoint_url=url, region_name="us-east-1", **keys)
        ses = boto3.client("ses", endpoint_url=url, region_name="us-east-1", **keys)
        ses.verify_email_identity(EmailAddress="orders@shop.local")
        queue = sqs.create_queue(QueueName="orders", Attributes={"VisibilityTimeout": "60"})
        url = queue["QueueUrl"]
        batch = [{"Id": str(n), "MessageBody": BODY} for n in range(10)]
        for _ in range(depth // 10):
            sqs.send_message_batch(QueueUrl=url, Entries=batch)
        before = process_cpu_s(popen.pid)
        for _ in range(ROUNDS):
            sqs.send_message_batch(QueueUrl=url, Entries=batch)
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for _message in got.get("Messages", []):
                ses.send_email(
                    Source="orders@shop.local",
                    Destination={"ToAddresses": ["buyer@example.com"]},
                    Message={"Subject": {"Data": "Order"}, "Body": {"Text": {"Data": "Thanks"}}},
                )
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                    for n, m in enumerate(got.get("Messages", []))
                ],
            )
            sqs.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )
        return 1000 * (process_cpu_s(popen.pid) - before) / (ROUNDS * 10)
    finally:
        popen.terminate()
        popen.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("depths", nargs="*", type=int, default=[0, 1000, 3000])
    args = parser.parse_args()
    print("| depth | stock moto, ms CPU per order | the ladder's, ms CPU per order |")
    print("|---:|---:|---:|")
    for depth in args.depths:
        started = time.monotonic()
        stock, ladder = measure("stock", depth), measure("ladder", depth)
        print(f"| {depth:,} | {stock:.1f} | {ladder:.1f} |", flush=True)
        print(f"  ({time.monotonic() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
