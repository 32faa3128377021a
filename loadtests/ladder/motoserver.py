"""moto's server for the ladder, with the costs that grow with a queue's depth taken out.

moto stands for SQS and SES, which on AWS run on no machine of the stack's; here it shares the
machine's two cores with the system under test. Profiled in a stage-8 write-heavy ramp
(py-spy, 15 s at the knee), 70 % of its CPU went to one line: every message sent reads the
queue's `attributes` for `ContentBasedDeduplication`, and building them counts the visible, the
in-flight and the delayed messages, three passes over every message in the queue, each message
asking `utcnow()` twice. A further 27 % went to finding the service of each request, which
lists moto's own folder (`os.listdir` and `isdir` on every module) every time. Its delete looks
for a receipt handle in every message, twice. So the deeper the queue, the dearer every send and
delete: past the knee the workers waited on moto (0.7-0.8 CPU, outside every budget), the queue
grew, and moto grew dearer still, which SQS does not.

Four changes, none of what moto answers:
- a send does not count the queue's messages: it reads only `ContentBasedDeduplication`;
- the list of moto's modules is read once (the installed package does not change);
- a delete finds its message by an index of the receipt handles moto hands out;
- a message's clock is `time.time()` in milliseconds, the value `unix_time_millis` computes
  through `datetime`.

`python -m loadtests.ladder.motoserver` takes `moto_server`'s arguments. The patches apply to
this process only: the tests' in-process moto servers stay stock.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any


class _Sending(threading.local):
    active = False


_SENDING = _Sending()
_COUNTS = (
    "approximate_number_of_messages",
    "approximate_number_of_messages_not_visible",
    "approximate_number_of_messages_delayed",
)


def _uncounted_while_sending(counted: Callable[[Any], int]) -> property:
    def count(queue: Any) -> int:
        # Read only by `attributes` inside a send, whose caller wants another attribute.
        return 0 if _SENDING.active else counted(queue)

    return property(count)


def apply() -> None:
    """Patch moto in this process (idempotent)."""
    import moto.backends as backends
    import moto.sqs.models as sqs

    if getattr(sqs, "_ladder_patched", False):
        return
    sqs._ladder_patched = True  # type: ignore[attr-defined]

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules  # type: ignore[assignment]

    millis = sqs.unix_time_millis

    def unix_time_millis(dt: Any = None) -> float:
        return time.time() * 1000 if dt is None else millis(dt)

    sqs.unix_time_millis = unix_time_millis  # type: ignore[assignment]

    for name in _COUNTS:
        setattr(sqs.Queue, name, _uncounted_while_sending(getattr(sqs.Queue, name).fget))
    send = sqs.SQSBackend.send_message

    def send_message(self: Any, *args: Any, **kwargs: Any) -> Any:
        _SENDING.active = True
        try:
            return send(self, *args, **kwargs)
        finally:
            _SENDING.active = False

    sqs.SQSBackend.send_message = send_message  # type: ignore[method-assign]

    received: dict[str, Any] = {}
    mark_received = sqs.Message.mark_received

    def mark_and_index(self: Any, visibility_timeout: int | None = None) -> None:
        mark_received(self, visibility_timeout)
        received[self.receipt_handle] = self

    sqs.Message.mark_received = mark_and_index  # type: ignore[method-assign]

    def delete_message(self: Any, receipt_handle: str) -> None:
        if receipt_handle in self.deleted_messages:
            return  # deleted already: SQS answers a second delete as the first
        message = received.get(receipt_handle)
        # Messages compare by identity: `in` is a pass in C, not a Python call per message.
        if message is None or message not in self._messages:
            raise sqs.ReceiptHandleIsInvalid()
        self.pending_messages.discard(message)
        self.deleted_messages.update(message.all_receipt_handles)
        for handle in message.all_receipt_handles:
            received.pop(handle, None)
        # A new list, as moto does: a receive iterating the old one is not disturbed.
        self._messages = [m for m in self._messages if m is not message]

    sqs.Queue.delete_message = delete_message  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    apply()
    from moto.server import main as serve

    serve(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
