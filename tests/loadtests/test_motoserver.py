"""The ladder's moto server (loadtests/ladder/motoserver.py) answers as SQS does for what the
shop and the ladder ask of it, and a send no longer costs more as the queue grows."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from loadtests.ladder.cgroups import process_cpu_s
from loadtests.ladder.components import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"aws_access_key_id": "moto-local-only", "aws_secret_access_key": "moto-local-only"}


def _server(command: list[str], tmp_path: Path, name: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    log = (tmp_path / f"{name}.log").open("w")
    popen = subprocess.Popen(
        [*command, "-H", "127.0.0.1", "-p", str(port)], cwd=ROOT, stdout=log, stderr=log
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/moto-api/", popen, tmp_path / f"{name}.log")
        yield url, popen.pid
    finally:
        popen.terminate()
        popen.wait(10)
        log.close()


@pytest.fixture
def lean(tmp_path: Path) -> Iterator[tuple[str, int]]:
    yield from _server([sys.executable, "-m", "loadtests.ladder.motoserver"], tmp_path, "lean")


@pytest.fixture
def stock(tmp_path: Path) -> Iterator[tuple[str, int]]:
    yield from _server([str(Path(sys.executable).parent / "moto_server")], tmp_path, "stock")


def _sqs(url: str) -> Any:
    return boto3.client("sqs", endpoint_url=url, region_name="us-east-1", **KEYS)


def _queue_with_dead_letters(sqs: Any, *, max_receives: int = 2) -> tuple[str, str]:
    dead = sqs.create_queue(QueueName="orders-dead")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])
    policy = {
        "deadLetterTargetArn": arn["Attributes"]["QueueArn"],
        "maxReceiveCount": str(max_receives),
    }
    url = sqs.create_queue(
        QueueName="orders",
        Attributes={"VisibilityTimeout": "1", "RedrivePolicy": json.dumps(policy)},
    )["QueueUrl"]
    return url, dead


def _counts(sqs: Any, url: str) -> tuple[int, int]:
    found = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(found["ApproximateNumberOfMessages"]),
        int(found["ApproximateNumberOfMessagesNotVisible"]),
    )


def _send(sqs: Any, url: str, count: int) -> None:
    for start in range(0, count, 10):
        entries = [
            {
                "Id": str(n),
                "MessageBody": json.dumps({"n": start + n}),
                "MessageAttributes": {"traceparent": {"DataType": "String", "StringValue": "t"}},
            }
            for n in range(min(10, count - start))
        ]
        assert not sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")


def _receive(sqs: Any, url: str) -> list[dict[str, Any]]:
    found = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=1,
        MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        MessageAttributeNames=["All"],
    )
    messages: list[dict[str, Any]] = found.get("Messages", [])
    return messages


def test_the_queue_answers_as_sqs_does(lean: tuple[str, int]) -> None:
    sqs = _sqs(lean[0])
    url, dead = _queue_with_dead_letters(sqs)
    _send(sqs, url, 25)
    assert _counts(sqs, url) == (25, 0)

    got = _receive(sqs, url)
    assert len(got) == 10
    assert all(m["MessageAttributes"]["traceparent"]["StringValue"] == "t" for m in got)
    assert all(m["Attributes"]["ApproximateReceiveCount"] == "1" for m in got)
    assert _counts(sqs, url) == (15, 10)

    answer = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(got)],
    )
    assert len(answer["Successful"]) == 10 and not answer.get("Failed")
    assert _counts(sqs, url) == (15, 0)
    # A second delete of the same handle is answered as the first; an unknown one is refused.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
    with pytest.raises(ClientError, match="ReceiptHandleIsInvalid"):
        sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle-moto-gave")

    # A message not deleted comes back after its visibility timeout, under a new handle; the
    # handle of its first receipt still deletes it, as on SQS.
    first = _receive(sqs, url)
    time.sleep(1.2)
    again = {m["MessageId"]: m for m in _receive(sqs, url)}
    assert again and set(again) <= {m["MessageId"] for m in first}
    redelivered = next(iter(again.values()))
    assert redelivered["Attributes"]["ApproximateReceiveCount"] == "2"
    old = next(m for m in first if m["MessageId"] == redelivered["MessageId"])
    sqs.delete_message(QueueUrl=url, ReceiptHandle=old["ReceiptHandle"])
    time.sleep(1.2)
    assert redelivered["MessageId"] not in {m["MessageId"] for m in _drain(sqs, url)}

    # Received twice and never deleted: the redrive policy moves it to the dead letters.
    dead_ids = {m["MessageId"] for m in _drain(sqs, dead)}
    assert dead_ids, "messages received max_receives times went to the dead-letter queue"


def _drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while batch := _receive(sqs, url):
        seen.extend(batch)
    return seen


def _send_cost(url: str, pid: int, *, depth: int) -> float:
    """CPU seconds the server spends on 100 sends, with `depth` messages already queued."""
    sqs = _sqs(url)
    queue = sqs.create_queue(QueueName=f"deep-{depth}")["QueueUrl"]
    _send(sqs, queue, depth)
    before = process_cpu_s(pid)
    _send(sqs, queue, 100)
    return process_cpu_s(pid) - before


def test_a_send_costs_the_same_at_any_depth_where_stock_moto_pays_for_every_message(
    lean: tuple[str, int], stock: tuple[str, int]
) -> None:
    # Ratios within one run: 600 messages deep against an empty queue, on each server.
    lean_ratio = _send_cost(*lean, depth=600) / max(_send_cost(*lean, depth=0), 0.01)
    stock_ratio = _send_cost(*stock, depth=600) / max(_send_cost(*stock, depth=0), 0.01)
    assert lean_ratio < 2, f"a send into a deep queue costs {lean_ratio:.1f} x an empty one's"
    assert stock_ratio > 2 * lean_ratio, (stock_ratio, lean_ratio)
