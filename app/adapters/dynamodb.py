"""Whole items in a DynamoDB table, each carrying a `version` number: read strongly
consistent, written only if nobody wrote since they were read (or only if absent). Generic on
purpose: the module that stores items owns their shape and what it does when a write loses
(app/carts/store_dynamodb.py).

boto3 blocks: each call runs in a thread of the table's own pool (made in the lifespan with the
client, which is thread-safe). A call given a deadline that has not answered within it raises
Unavailable at once, however long botocore would go on trying: with the endpoint unreachable,
requests get a clear error instead of queueing behind hung calls. A write should get no such
deadline: one abandoned while DynamoDB may still apply it could be applied twice by a retry;
botocore's own timeouts bound it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

T = TypeVar("T")

CONNECTIONS = 32
"""A table's client's connection pool, and the threads that run its calls."""

READ_DEADLINE_S = 3.0
"""How long a read may take before it counts as unavailable (a healthy DynamoDB answers in
milliseconds; botocore would go on for up to 3 attempts of a 2 s connect and a 5 s read)."""

_NOT_NOW = {
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
}
"""Answers that mean "not now" (botocore has already retried them): Unavailable, which a client
may retry. Anything else (a missing table, denied access) is the operator's to fix and
propagates as it is."""


class Unavailable(Exception):
    """DynamoDB did not answer: unreachable, throttled, or past the call's deadline."""


@contextmanager
def _not_now_as_unavailable() -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _NOT_NOW:
            raise Unavailable(str(exc)) from exc
        raise
    except BotoCoreError as exc:  # unreachable, timed out, connection dropped
        raise Unavailable(str(exc)) from exc


class VersionedTable:
    """One table whose partition key is the string attribute `key` and whose items hold a
    numeric `version` attribute."""

    def __init__(
        self, client: Any, *, table: str, key: str, threads: ThreadPoolExecutor | None = None
    ) -> None:
        self.client = client
        self.table = table
        self.key = key
        self.threads = threads

    @classmethod
    def open(
        cls, *, table: str, key: str, region: str | None, endpoint_url: str | None = None
    ) -> VersionedTable:
        """The table with a client and threads of its own (made once per process, in the
        lifespan; making a client costs tens of ms and blocks). The client is thread-safe, with
        short timeouts so that a DynamoDB hiccup costs a request seconds, not minutes."""
        client = boto3.client(
            "dynamodb",
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(
                max_pool_connections=CONNECTIONS,
                connect_timeout=2,
                read_timeout=5,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )
        threads = ThreadPoolExecutor(CONNECTIONS, thread_name_prefix="dynamodb")
        return cls(client, table=table, key=key, threads=threads)

    def close(self) -> None:
        """Stop its threads; a call hung on an unreachable endpoint ends with botocore's
        timeouts, not here."""
        if self.threads is not None:
            self.threads.shutdown(wait=False, cancel_futures=True)

    async def run(self, work: Callable[[], T], *, deadline_s: float | None = None) -> T:
        """Run a blocking call in the table's threads; past `deadline_s`, Unavailable."""
        running = asyncio.get_running_loop().run_in_executor(self.threads, work)
        if deadline_s is None:
            return await running
        try:
            return await asyncio.wait_for(running, deadline_s)
        except TimeoutError:
            raise Unavailable(f"no answer within {deadline_s} s") from None

    def get(self, key: str) -> dict[str, Any] | None:
        """The item under `key`, strongly consistent, or None (blocking)."""
        with _not_now_as_unavailable():
            answer = self.client.get_item(
                TableName=self.table, Key={self.key: {"S": key}}, ConsistentRead=True
            )
        item: dict[str, Any] | None = answer.get("Item")
        return item

    def put(self, item: dict[str, Any], *, expected_version: int | None) -> bool:
        """Write `item` if the stored one is still at `expected_version` (None: if there is
        none); False when somebody wrote meanwhile (blocking)."""
        condition: dict[str, Any]
        if expected_version is not None:
            condition = {
                "ConditionExpression": "#v = :expected",
                "ExpressionAttributeNames": {"#v": "version"},
                "ExpressionAttributeValues": {":expected": {"N": str(expected_version)}},
            }
        else:
            condition = {"ConditionExpression": f"attribute_not_exists({self.key})"}
        try:
            with _not_now_as_unavailable():
                self.client.put_item(TableName=self.table, Item=item, **condition)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True
