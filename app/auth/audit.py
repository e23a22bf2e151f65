"""The audit trail writer: who accessed what, appended in batches.

Recording an event costs the request path one tuple appended to a queue (a
:class:`collections.deque`, safe to append to from the DIMSE process's association
threads too); a background task started with the application writes what has queued up
every half second (or sooner when many are waiting) with one ``COPY`` into
``audit_event`` (:func:`app.index.access.append_audit`), and once more at shutdown. A
failed write is retried with the next batch; if the index stays unreachable, the
oldest events beyond :data:`MAX_QUEUED` are dropped with an error in the log.

What an event holds follows the FHIR AuditEvent / IHE BALP model (see
:mod:`app.auth.fhir`): when, who (``token:NAME``, ``jwt:SUBJECT``, ``link:STUDY``,
``aet:AE_TITLE``, ``anonymous``), from which address, the action, the outcome and
status, the studies / series / instances touched, and a search's query.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

from app.index import access
from app.tasks import stop_task

log = logging.getLogger("pictor.audit")

INTERVAL = 0.5
BATCH = 1000
MAX_QUEUED = 200_000

_UTC = dt.UTC


#: the longest search recorded whole (a request target is at most 16 KiB)
MAX_QUERY_CHARS = 16384


def storable(text: str) -> str:
    """``text`` as PostgreSQL text can hold it: what a client sent is recorded, hostile
    or not (a NUL in a search, a lone surrogate from a DICOM identifier), escaped where
    the database would refuse it, so one event cannot block the trail."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def outcome_of(status: int) -> str:
    if status < 400:
        return "success"
    if status in (401, 403):
        return "denied"
    if status == 404:
        return "not-found"
    return "failure"


class AuditLog:
    def __init__(self, pool: Any, interval: float = INTERVAL) -> None:
        self.pool = pool
        self.interval = interval
        self._queue: deque[tuple[Any, ...]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    def record(
        self,
        who: str,
        client: str | None,
        action: str,
        status: int,
        *,
        method: str | None = None,
        outcome: str | None = None,
        studies: Iterable[str] = (),
        series: Iterable[str] = (),
        instances: Iterable[str] = (),
        query: str | None = None,
    ) -> None:
        self._queue.append(
            (
                dt.datetime.now(_UTC),
                storable(who),
                client,
                action,
                method,
                outcome or outcome_of(status),
                status,
                list(dict.fromkeys(storable(s) for s in studies if s)),
                list(dict.fromkeys(storable(s) for s in series if s)),
                list(dict.fromkeys(storable(s) for s in instances if s)),
                storable(query[:MAX_QUERY_CHARS]) if query else None,
            )
        )

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the writer and write what is left."""
        await stop_task(self._task)
        self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        while self._queue:
            rows = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            try:
                refused = await access.append_audit(self.pool, rows)
            except Exception as exc:  # noqa: BLE001 - kept and retried, never lost silently
                self._queue.extendleft(reversed(rows))
                excess = len(self._queue) - MAX_QUEUED
                if excess > 0:
                    for _ in range(excess):
                        self._queue.popleft()
                    log.error("audit: %d events dropped: the index is unreachable", excess)
                log.error("audit: writing %d events failed (retrying): %s", len(rows), exc)
                return
            for row in refused:  # storable() should leave none; never block the trail
                log.error("audit: an event the index refuses was dropped: %r", row)
