"""The worker processes that run codec work (decode, encode, render), per server process.

Each server process has its own small pool, sized so that all of them together have
about one codec process per core: ``pictor serve`` runs two server processes per core,
so each gets one worker by default. The pool is started and warmed (pydicom, numpy and
the codec plugins imported) in the background when the server starts, so the first
frame a viewer asks for does not pay for it.
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
#: worker processes per server process (see :func:`configure`)
_WORKERS = 2


def configure(server_processes: int) -> None:
    """Size the pool for ``server_processes`` sharing the machine's cores."""
    global _WORKERS
    cores = os.cpu_count() or 1
    _WORKERS = max(1, -(-cores // max(1, server_processes)))


def _warm() -> None:
    import app.codec.render  # noqa: F401 - load pydicom, numpy, Pillow and the plugins
    import app.codec.transcode  # noqa: F401


def _nothing() -> None:
    return None


def _pool() -> ProcessPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ProcessPoolExecutor(
            _WORKERS, mp_context=multiprocessing.get_context("spawn"), initializer=_warm
        )
    return _POOL


async def warm_up() -> None:
    """Start every worker now (each runs the initializer once)."""
    loop = asyncio.get_running_loop()
    pool = _pool()
    await asyncio.gather(*(loop.run_in_executor(pool, _nothing) for _ in range(_WORKERS)))


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a worker process; the event loop stays free meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(_pool(), fn, *args)


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
