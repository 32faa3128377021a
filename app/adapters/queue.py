"""The work queue (stage 7): Amazon SQS through boto3, its blocking calls run in threads."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

# A queue that does not answer must not hold a publish (or a shutdown) for boto3's default
# 60 s per attempt; the read timeout stays above the longest long poll (20 s).
CLIENT_CONFIG = Config(
    connect_timeout=2, read_timeout=25, retries={"max_attempts": 3, "mode": "standard"}
)


@dataclass(frozen=True, slots=True)
class Message:
    """A received message: its body, the handle that deletes it, and how it has fared."""

    id: str
    receipt: str
    body: str
    receive_count: int
    """How many times it has been received, this time included (SQS's ApproximateReceiveCount)."""
    sent_at: float
    """When it was first sent, in seconds since the epoch."""
    attributes: Mapping[str, str] = field(default_factory=dict)
    """Its string message attributes (the trace context it carries, when traced)."""

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.sent_at)


class Queue:
    """One SQS queue. Standard queues deliver at least once: consumers must be idempotent."""

    def __init__(
        self, url: str, *, region: str | None = None, endpoint_url: str | None = None
    ) -> None:
        self.url = url
        self._client: Any = boto3.client(
            "sqs", region_name=region, endpoint_url=endpoint_url, config=CLIENT_CONFIG
        )

    async def send(
        self,
        bodies: Mapping[str, str],
        *,
        attributes: Mapping[str, Mapping[str, str]] | None = None,
    ) -> dict[str, str]:
        """Send up to 10 messages, keyed by a batch entry id, each with the string attributes
        given under its id (at most 10, SQS's limit); the ids that failed, with why."""
        if not bodies:
            return {}
        entries: list[dict[str, Any]] = []
        for key, body in bodies.items():
            entry: dict[str, Any] = {"Id": key, "MessageBody": body}
            strings = attributes.get(key) if attributes else None
            if strings:
                entry["MessageAttributes"] = {
                    name: {"DataType": "String", "StringValue": value}
                    for name, value in strings.items()
                    if value
                }
            entries.append(entry)
        answer = await asyncio.to_thread(
            self._client.send_message_batch, QueueUrl=self.url, Entries=entries
        )
        return {f["Id"]: f.get("Message", f.get("Code", "?")) for f in answer.get("Failed", [])}

    async def receive(self, *, max_messages: int = 10, wait_s: int = 10) -> list[Message]:
        """Up to `max_messages`, waiting up to `wait_s` for the first (long polling)."""
        answer = await asyncio.to_thread(
            self._client.receive_message,
            QueueUrl=self.url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            MessageAttributeNames=["All"],
        )
        return [
            Message(
                id=m["MessageId"],
                receipt=m["ReceiptHandle"],
                body=m["Body"],
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
                sent_at=int(m.get("Attributes", {}).get("SentTimestamp", time.time() * 1000))
                / 1000,
                attributes={
                    name: value["StringValue"]
                    for name, value in m.get("MessageAttributes", {}).items()
                    if "StringValue" in value
                },
            )
            for m in answer.get("Messages", [])
        ]

    async def delete(self, receipts: list[str]) -> None:
        """Delete handled messages, 10 per call."""
        for start in range(0, len(receipts), 10):
            chunk = receipts[start : start + 10]
            await asyncio.to_thread(
                self._client.delete_message_batch,
                QueueUrl=self.url,
                Entries=[{"Id": str(n), "ReceiptHandle": r} for n, r in enumerate(chunk)],
            )

    async def dead_letter_queue(self) -> Queue | None:
        """The queue SQS moves this one's failing messages to (its redrive policy's target),
        on the same client settings; None without one."""
        answer = await asyncio.to_thread(
            self._client.get_queue_attributes,
            QueueUrl=self.url,
            AttributeNames=["RedrivePolicy"],
        )
        policy = answer.get("Attributes", {}).get("RedrivePolicy")
        if not policy:
            return None
        # arn:aws:sqs:<region>:<account>:<name>
        _, _, _, _, account, name = json.loads(policy)["deadLetterTargetArn"].split(":", 5)
        found = await asyncio.to_thread(
            self._client.get_queue_url, QueueName=name, QueueOwnerAWSAccountId=account
        )
        dead = Queue.__new__(Queue)
        dead.url = found["QueueUrl"]
        dead._client = self._client
        return dead

    async def move_to(self, target: Queue, *, limit: int = 100_000) -> int:
        """Move this queue's messages to `target` (send there, then delete here), until this
        queue answers none or `limit` were moved; how many. A message is sent before it is
        deleted, so a failure between the two leaves it on both (consumers are idempotent)."""
        moved = 0
        while moved < limit:
            batch = await self.receive(max_messages=min(10, limit - moved), wait_s=0)
            if not batch:
                return moved
            failed = await target.send(
                {str(n): m.body for n, m in enumerate(batch)},
                attributes={str(n): m.attributes for n, m in enumerate(batch)},
            )
            sent = [m for n, m in enumerate(batch) if str(n) not in failed]
            await self.delete([m.receipt for m in sent])
            moved += len(sent)
            if failed:
                raise RuntimeError(f"{len(failed)} messages not moved: {sorted(failed.values())}")
        return moved

    async def max_receive_count(self) -> int | None:
        """Receives after which SQS moves a message to the dead-letter queue; None without one."""
        answer = await asyncio.to_thread(
            self._client.get_queue_attributes,
            QueueUrl=self.url,
            AttributeNames=["RedrivePolicy"],
        )
        policy = answer.get("Attributes", {}).get("RedrivePolicy")
        return int(json.loads(policy)["maxReceiveCount"]) if policy else None
