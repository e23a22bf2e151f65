"""The worker processes that run codec work (decode, encode, render), per server process.

Each server process has its own pool of up to one worker per core: the kernel hands
connections to server processes unevenly (a viewer's six connections can all land on
one), and a process with a single codec worker then transcoded on one core while the
others idled (benchmarks/README.md has the figures).
Workers beyond the first start on demand (ProcessPoolExecutor spawns one only when
none is idle), so an archive that transcodes little keeps one per server process. The
first is started and warmed (pydicom, numpy and the codec plugins imported) in the
background when the server starts, so the first frame a viewer asks for does not pay
for it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_POOL: ProcessPoolExecutor | None = None
#: worker processes per server process, at most
_WORKERS = os.cpu_count() or 1


def _warm(parent: int) -> None:
    from app.process import die_with_parent

    die_with_parent(parent)  # not left behind when the server process dies (issue #19)
    import app.codec.render  # noqa: F401 - load pydicom, numpy, Pillow and the plugins
    import app.codec.transcode  # noqa: F401


def _nothing() -> None:
    return None


def _pool() -> ProcessPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ProcessPoolExecutor(
            _WORKERS,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_warm,
            initargs=(os.getpid(),),
        )
    return _POOL


async def warm_up() -> None:
    """Start the first worker now (it runs the initializer once)."""
    await asyncio.get_running_loop().run_in_executor(_pool(), _nothing)


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a worker process; the event loop stays free meanwhile."""
    from app.observability import CODEC_QUEUE

    CODEC_QUEUE.inc()
    try:
        return await asyncio.get_running_loop().run_in_executor(_pool(), fn, *args)
    finally:
        CODEC_QUEUE.dec()


def shutdown() -> None:
    """Stop the workers and wait for them (pending work is cancelled; a worker busy with
    a long transcode is terminated), so no process outlives the server."""
    global _POOL
    if _POOL is not None:
        processes = list(getattr(_POOL, "_processes", {}).values())
        _POOL.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)
        _POOL = None
