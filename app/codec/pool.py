"""The worker processes that run codec work, created on first use in each server process."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_POOL: ProcessPoolExecutor | None = None
#: per server process; the server runs two processes per core already
WORKERS = 2


def _warm() -> None:
    import app.codec.transcode  # noqa: F401 - load pydicom and the plugins once per worker


def _pool() -> ProcessPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ProcessPoolExecutor(
            WORKERS, mp_context=multiprocessing.get_context("spawn"), initializer=_warm
        )
    return _POOL


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a worker process; the event loop stays free meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(_pool(), fn, *args)


def shutdown() -> None:
    global _POOL
    if _POOL is not None:
        _POOL.shutdown(wait=False, cancel_futures=True)
        _POOL = None
