"""The one bridge between pynetdicom's threads and the event loop.

pynetdicom runs every association in its own thread and calls the event handlers there
(PS3.8 associations are independent of each other). The archive's resources (the asyncpg
pool, the blob store, ingest) belong to one asyncio event loop in the main thread. A
handler hands a coroutine to the loop with :meth:`Bridge.run` and waits for its result in
its own thread: the loop never blocks on a handler, and all associations share one pool.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: longest a handler waits for the loop (an index query or one instance's commit)
DEFAULT_TIMEOUT = 300.0


class Bridge:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._loop_thread = threading.get_ident()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = DEFAULT_TIMEOUT) -> T:
        """Run ``coro`` on the loop and return its result (called from a pynetdicom thread).

        An exception of the coroutine is raised here; on timeout the coroutine is
        cancelled and :class:`TimeoutError` raised.
        """
        if threading.get_ident() == self._loop_thread:
            coro.close()
            raise RuntimeError("Bridge.run called on the event loop's own thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise
