"""What a running process does around its requests: keep its pool gauges current, and drain
when it is told to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from app.adapters.observability import sample_pools
from app.adapters.resources import Resources

log = logging.getLogger("shop")


async def sample_pools_forever(resources: Resources, every_s: float = 1.0) -> None:
    """Keep the pool gauges of this process current (each worker reports its own pools)."""
    while True:
        sample_pools(resources.db.pools())
        await asyncio.sleep(every_s)


@contextmanager
def drain_on_sigterm(resources: Resources, drain_s: float) -> Iterator[None]:
    """On SIGTERM, mark the process as draining at once, and hand the signal to the server
    (which stops accepting connections and finishes the requests in flight) `drain_s` later.

    /readyz answers 503 from the first moment, so a load balancer stops sending new requests
    while this process still serves whatever arrives. A second SIGTERM stops at once. Only
    under a server that handles SIGTERM itself (uvicorn), in the main thread.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if resources.draining or drain_s <= 0:
            resources.draining = True
            previous(signum, frame)
            return
        resources.draining = True
        log.warning("SIGTERM: draining for %.1f s before stopping", drain_s)
        loop.call_soon_threadsafe(loop.call_later, drain_s, previous, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
