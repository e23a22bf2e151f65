"""Webhooks (issue #17): events of the archive pushed to HTTP receivers, for
``pictor webhook`` and ``/admin/webhooks`` alike.

Events: ``instance.created`` (an instance stored, restored), ``study.updated`` (a
correction or merge), ``study.deleted`` (its last instance deleted or rejected) and
``study.stable`` (``PICTOR_STABLE_SECONDS``, 60, after its last new instance: the moment
AI and routing want). They are made from the change feed (:mod:`app.index.webhooks`),
so an event is never lost across a crash, and written to an outbox in PostgreSQL.

A delivery is a CloudEvents 1.0 JSON event in structured mode (``Content-Type:
application/cloudevents+json``): ``specversion``, ``id`` (the same on every retry, so a
receiver can drop duplicates), ``source``, ``type`` (the event's name), ``subject`` (the
Study Instance UID), ``time``, ``datacontenttype`` and ``data`` (the study, series and
instance UIDs and the feed's ``Sequence``). With a secret, ``X-Pictor-Signature:
sha256=<hex HMAC-SHA256 of the body>``. A 2xx answer is a delivery; anything else (or
no answer within ``PICTOR_WEBHOOK_TIMEOUT`` seconds) is retried with exponential
backoff from ``PICTOR_WEBHOOK_BACKOFF_SECONDS`` (5 s, doubling, at most an hour) for
``PICTOR_WEBHOOK_RETRY_SECONDS`` (a day), then given up and shown by ``pictor webhook
status``. At least once, in order per study and receiver; deliveries run in the
background, at most ``PICTOR_WEBHOOK_CONCURRENCY`` at a time per process, half of
those for one receiver and one for a receiver whose last attempt failed, so a dead
receiver never slows ingest nor starves the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec

from app.config import Settings
from app.errors import BadRequest
from app.index import webhooks as index_hooks
from app.index.database import INDEX_ERRORS, Pool
from app.index.webhooks import EVENTS, HookStatus
from app.services.outbound import Client, OutboundError, spelling_problem
from app.tasks import stop_task

__all__ = ["EVENTS", "HookStatus", "Webhooks", "add", "remove", "status"]

log = logging.getLogger("pictor")

SIGNATURE_HEADER = "X-Pictor-Signature"
MAX_BACKOFF = 3600.0
#: how long a claimed delivery is leased to this process before another may retry it
LEASE_SECONDS = 120.0
POLL_SECONDS = 0.5
#: events are made from the feed at most this often per process
EVENT_SECONDS = 0.25


def check(url: str, events: Sequence[str], secret: str | None) -> list[str]:
    """The events, validated (BadRequest naming what is wrong)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"a webhook URL is http(s)://host/...; got {url[:100]!r}")
    if parts.username or parts.password:
        raise BadRequest("a webhook URL carries no user or password: use a secret to sign")
    if len(url) > 2000:
        raise BadRequest("a webhook URL has at most 2000 characters")
    if (problem := spelling_problem(url)) is not None:
        raise BadRequest(f"the webhook URL {problem}")
    unknown = [e for e in events if e not in EVENTS]
    if unknown or not events:
        raise BadRequest(f"events must be some of {', '.join(EVENTS)}; got {list(events)[:10]}")
    if secret is not None and not 16 <= len(secret) <= 256:
        raise BadRequest("a webhook secret has 16 to 256 characters")
    return sorted(set(events), key=EVENTS.index)


async def add(pool: Pool, url: str, events: Sequence[str], secret: str | None) -> int:
    kinds = check(url, events, secret)
    async with pool.acquire() as conn:
        return await index_hooks.add(conn, url, kinds, secret)


async def remove(pool: Pool, hook_id: int) -> None:
    async with pool.acquire() as conn:
        await index_hooks.remove(conn, hook_id)


async def status(pool: Pool) -> list[HookStatus]:
    async with pool.acquire() as conn:
        return await index_hooks.status(conn)


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def cloud_event(source: str) -> index_hooks.Encoder:
    """The encoder of CloudEvents 1.0 JSON events (structured mode) from ``source``."""

    def encode(
        event_id: uuid.UUID,
        kind: str,
        study: str,
        series: str | None,
        sop: str | None,
        seq: int | None,
        at: dt.datetime,
    ) -> bytes:
        data: dict[str, Any] = {"StudyInstanceUID": study}
        if series is not None:
            data["SeriesInstanceUID"] = series
        if sop is not None:
            data["SOPInstanceUID"] = sop
        if seq is not None:
            data["Sequence"] = seq
        return msgspec.json.encode(
            {
                "specversion": "1.0",
                "id": str(event_id),
                "source": source,
                "type": kind,
                "subject": study,
                "time": at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
                "datacontenttype": "application/json",
                "data": data,
            }
        )

    return encode


class Webhooks:
    """Makes the events and delivers them, in the background of a server process."""

    def __init__(self, settings: Settings, pool: Pool) -> None:
        self.settings = settings
        self.pool = pool
        source = settings.public_base_url or "urn:pictor:archive"
        self._encode = cloud_event(source)
        self._slots = asyncio.Semaphore(max(1, settings.webhook_concurrency))
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        #: deliveries in flight per webhook: a slow receiver takes at most half the slots
        self._inflight: Counter[int] = Counter()
        self._per_hook = max(1, settings.webhook_concurrency // 2)
        #: the webhooks whose last attempt failed: one run at a time each, until one
        #: succeeds (two dead receivers took every slot from the live ones)
        self._failing: set[int] = set()
        #: set when a delivery ends: the next one is claimed at once, not at the next poll
        self._wake = asyncio.Event()
        self._events_due = 0.0

    def start(self) -> None:
        self._client = Client(self.settings.webhook_timeout, "pictor-webhook")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        for task in list(self._sending):
            await stop_task(task)
        if self._client is not None:
            await self._client.close()

    async def step(self) -> None:
        """Make what events there are to make (at most every ``EVENT_SECONDS``: each
        run that ends wakes the loop, and making events is a transaction of its own
        that ingest's would wait behind), then send what is due."""
        now = time.monotonic()
        if now >= self._events_due:
            self._events_due = now + EVENT_SECONDS
            while (
                await index_hooks.make_events(self.pool, self._encode, self.settings.stable_seconds)
                >= index_hooks.EVENT_BATCH
            ):
                pass
        free = self.settings.webhook_concurrency - len(self._sending)
        if free <= 0:
            return
        room = {h: 1 for h in self._failing}
        for hook, n in self._inflight.items():
            room[hook] = max(0, room.get(hook, self._per_hook) - n)
        for run in await index_hooks.claim(self.pool, free, LEASE_SECONDS, room, self._per_hook):
            hook = run[0].webhook_id
            self._inflight[hook] += 1
            task = asyncio.get_running_loop().create_task(self._send(run))
            self._sending.add(task)
            task.add_done_callback(functools.partial(self._sent, hook))

    def _sent(self, hook_id: int, task: asyncio.Task[None]) -> None:
        self._wake.set()
        self._sending.discard(task)
        self._inflight[hook_id] -= 1
        if self._inflight[hook_id] <= 0:
            del self._inflight[hook_id]

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.step()
            except INDEX_ERRORS as exc:
                log.debug("webhooks wait for the index: %s", exc)
                await asyncio.sleep(POLL_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    def _retry_in(self, due: index_hooks.Due) -> float | None:
        waited = (dt.datetime.now(dt.UTC) - due.created_at).total_seconds()
        if waited >= self.settings.webhook_retry_seconds:
            return None
        base = float(self.settings.webhook_backoff_seconds)
        delay = min(MAX_BACKOFF, base * 2.0 ** (due.attempts - 1))
        return float(delay * (1 + random.random() / 10))  # noqa: S311 - jitter, not a secret

    async def _send(self, run: list[index_hooks.Due]) -> None:
        """Deliver a run of one webhook and study, in order, stopping at the first that
        fails; then record it all in one transaction."""
        done: list[tuple[int, int]] = []
        failure: tuple[int, int | None, str, float | None] | None = None
        async with self._slots:
            for due in run:
                status, error = await self._post(due)
                if not error:
                    done.append((due.id, status or 200))
                    continue
                retry = self._retry_in(due)
                failure = (due.id, status, error, retry)
                if retry is None:
                    log.warning("webhook %s: gave up a delivery after a day: %s", due.url, error)
                break
        if failure is None:
            self._failing.discard(run[0].webhook_id)
        else:
            self._failing.add(run[0].webhook_id)
        try:
            await index_hooks.finish(self.pool, run[0].webhook_id, run[0].study_uid, done, failure)
        except INDEX_ERRORS as exc:  # the lease runs out and the run is tried again
            log.warning("webhook deliveries could not be recorded: %s", exc)

    async def _post(self, due: index_hooks.Due) -> tuple[int | None, str]:
        """(status, error: empty for a 2xx answer)."""
        assert self._client is not None
        headers = {"Content-Type": "application/cloudevents+json; charset=utf-8"}
        if due.secret:
            headers[SIGNATURE_HEADER] = signature(due.secret, due.body)
        try:
            status = await self._client.post(due.url, due.body, headers)
        except OutboundError as exc:
            return None, str(exc)
        return status, "" if 200 <= status < 300 else f"HTTP {status}"
