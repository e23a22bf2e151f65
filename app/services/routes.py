"""Routing (issue #17): rules that forward studies to other archives, for ``pictor
route`` and ``/admin/routes`` alike.

A route has a name, conditions (``--when Modality=CT``: every condition must hold for
an instance to go; a value may list alternatives, ``Modality=CT,MR``, and use the
wildcards ``*`` and ``?``; the attribute is looked up in the instance, its series and
its study), a destination (``dicomweb:<base URL>`` — STOW-RS, PS3.18 10.5 — or
``dimse:<AET>@<host>:<port>`` — C-STORE, PS3.4 B) and a trigger: ``study.stable``
(``PICTOR_STABLE_SECONDS`` after a study's last new instance) or ``instance.created``.

Each trigger makes a job in a queue in PostgreSQL (:mod:`app.index.routes`), from the
change feed like the webhooks' events, so none is lost across a crash. A job sends the
study's matching instances its destination has not acknowledged yet, in batches, and
records each acknowledgement as soon as it comes: a forward resumed after a restart
or a failure goes on where it stopped and never sends again what the destination
took. A failed job is retried with exponential backoff from
``PICTOR_ROUTE_BACKOFF_SECONDS`` (10 s, doubling, at most an hour) for
``PICTOR_ROUTE_RETRY_SECONDS`` (a day), then given up and shown by ``pictor route
status``. At most ``PICTOR_ROUTE_CONCURRENCY`` (2) jobs run at once per destination,
across every process of the archive. ``POST /admin/studies/{study}/export/{route}``
sends one study again, whatever was acknowledged.

The transports (DICOMweb over HTTP, DIMSE) are :class:`Sender` adapters, given to
:class:`Routes` by the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from app.config import Settings
from app.dicom.deidentify import parse_options
from app.dicom.dictionary import UnknownAttribute, keyword, resolve, vr_of
from app.dicom.uids import uid_problem
from app.errors import BadRequest, NotFound
from app.index import routes as index_routes
from app.index.compiler import like_pattern
from app.index.database import INDEX_ERRORS, Pool
from app.index.routes import Condition, Job, Route, RouteStatus, StudyStatus
from app.services.outbound import spelling_problem
from app.services.retrieve import Scope, StoredInstance, instances
from app.tasks import stop_task

__all__ = [
    "TRIGGERS",
    "Condition",
    "Route",
    "RouteStatus",
    "Routes",
    "Sender",
    "StudyStatus",
    "add",
    "export",
    "remove",
    "status",
    "studies",
]

log = logging.getLogger("pictor")

TRIGGERS = ("study.stable", "instance.created")
MAX_BACKOFF = 3600.0
#: a claimed job is leased to this process for this long, renewed every third of it
#: while it runs (a process that dies gives its jobs up within this time)
LEASE_SECONDS = 60.0
POLL_SECONDS = 1.0
#: jobs in flight at once per server process (each destination has its own bound)
PROCESS_JOBS = 8
#: a batch: at most this many instances, or this many bytes (unless one alone is more)
BATCH_INSTANCES = 50
BATCH_BYTES = 64 << 20
MAX_CONDITIONS = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_AET = re.compile(r"[ -~]{1,16}")
#: VRs a condition cannot compare: sequences and binary values
_UNCOMPARABLE = {"SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN"}


@dataclass(frozen=True)
class Deid:
    """How a route de-identifies what it sends (PS3.15 E, app.dicom.deidentify)."""

    key: bytes
    options: tuple[str, ...]


class Sender(Protocol):
    """One destination's transport, for one job."""

    async def send(
        self, batch: Sequence[StoredInstance], deid: Deid | None
    ) -> tuple[set[str], str | None]:
        """Send a batch (de-identified with ``deid``): the (original) SOP Instance UIDs
        the destination acknowledged, and what went wrong (None: nothing)."""
        ...

    async def close(self) -> None: ...


#: scheme ("dicomweb", "dimse", "fhir") -> (target after the scheme, bearer token, the
#: job's Study Instance UID) -> Sender
Senders = dict[str, Callable[[str, str | None, str], Sender]]


# -- the rules -------------------------------------------------------------------------


def parse_condition(text: str) -> Condition:
    """``Keyword=value[,value...]`` (a keyword or eight hex digits)."""
    name, eq, values = text.partition("=")
    name = name.strip()
    if not eq or not name:
        raise BadRequest(f"a condition is Keyword=value; got {text[:80]!r}")
    try:
        tag = resolve(name)
    except UnknownAttribute as exc:
        raise BadRequest(str(exc)) from None
    if vr_of(tag) in _UNCOMPARABLE:
        raise BadRequest(f"{keyword(tag)} ({vr_of(tag)}) cannot be compared in a condition")
    alternatives = [v.strip() for v in values.split(",")]
    if not all(alternatives) or len(alternatives) > 32 or any(len(v) > 64 for v in alternatives):
        raise BadRequest(
            f"condition {text[:80]!r}: give 1 to 32 values of at most 64 characters, "
            "separated by commas"
        )
    if any(not v.isprintable() for v in alternatives):
        raise BadRequest(f"condition {text[:80]!r} has a control character")
    return Condition(keyword(tag), f"{tag:08X}", tuple(like_pattern(v) for v in alternatives))


def parse_destination(text: str) -> str:
    """``dicomweb:http(s)://host[:port]/path``, ``fhir:http(s)://host[:port]/path`` (a
    FHIR R4 server's base, :mod:`app.services.fhir_push`), ``dimse:AET@host:port`` or
    ``worklist:reading`` (:mod:`app.services.reading`), checked."""
    scheme, colon, rest = text.strip().partition(":")
    if scheme == "dicomweb" and colon:
        return f"dicomweb:{_base_url(rest, text, 'DICOMweb', 'dicomweb:https://host/path')}"
    if scheme == "fhir" and colon:
        return f"fhir:{_base_url(rest, text, 'FHIR', 'fhir:https://host/fhir')}"
    if text.strip() == READING_DESTINATION:
        return READING_DESTINATION
    if scheme == "dimse" and colon:
        aet, at, address = rest.partition("@")
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        if (
            not at
            or not _AET.fullmatch(aet)
            or aet != aet.strip()
            or "\\" in aet
            or not host
            or not port.isdigit()
            or not 0 < int(port) < 65536
            or not _is_host(host)
        ):
            raise BadRequest(
                f"a DIMSE destination is dimse:AET@host:port (an AE title of 1 to 16 "
                f"characters); got {text[:100]!r}"
            )
        return f"dimse:{aet}@{host}:{int(port)}"
    raise BadRequest(
        "a destination is dicomweb:<base URL>, fhir:<base URL> or dimse:<AET>@<host>:<port>; "
        f"got {text[:100]!r}"
    )


def _base_url(rest: str, text: str, kind: str, example: str) -> str:
    """An HTTP(S) base URL of a destination, checked; without its trailing slash."""
    parts = urlsplit(rest)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"a {kind} destination is {example}; got {text[:100]!r}")
    if parts.username or parts.password:
        raise BadRequest(f"a {kind} destination carries no user or password: use --token")
    if (problem := spelling_problem(rest)) is not None:
        raise BadRequest(f"the {kind} destination {problem}")
    if parts.query or parts.fragment or len(rest) > 2000:
        raise BadRequest(f"a {kind} destination is a base URL (no query, at most 2000 characters)")
    return rest.rstrip("/")


def _is_host(host: str) -> bool:
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return True
    return bool(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", host))


def dimse_address(target: str) -> tuple[str, str, int]:
    """(AE title, host, port) of a checked ``AET@host:port``."""
    aet, _, address = target.partition("@")
    host, _, port = address.rpartition(":")
    return aet, host, int(port)


async def add(
    pool: Pool,
    name: str,
    when: Sequence[str],
    to: str,
    on: str = "study.stable",
    token: str | None = None,
    deidentify: str | None = None,
) -> Route:
    if not _NAME.fullmatch(name):
        raise BadRequest("a route name has 1 to 64 letters, digits, '.', '_' or '-'")
    if len(when) > MAX_CONDITIONS:
        raise BadRequest(f"a route has at most {MAX_CONDITIONS} conditions")
    conditions = [parse_condition(w) for w in when]
    destination = parse_destination(to)
    if on not in TRIGGERS:
        raise BadRequest(f"a route runs on one of {', '.join(TRIGGERS)}; got {on[:40]!r}")
    if token is not None:
        if not destination.startswith(("dicomweb:", "fhir:")):
            raise BadRequest("a token is for a DICOMweb or FHIR destination")
        if not 0 < len(token) <= 4096 or not token.isprintable() or " " in token:
            raise BadRequest("a token has 1 to 4096 printable characters and no space")
    options = None
    if deidentify is not None:
        if destination.startswith("fhir:"):
            raise BadRequest("a FHIR destination gets the study as it is: no --deidentify")
        try:
            options = parse_options(deidentify)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    async with pool.acquire() as conn:
        return await index_routes.add(conn, name, conditions, destination, on, token, options)


#: the route ``PICTOR_FHIR_PUSH_URL`` keeps (app.services.fhir_push)
FHIR_PUSH_ROUTE = "fhir-push"


async def ensure_fhir_push(pool: Pool, url: str, token: str | None) -> Route:
    """The route of ``PICTOR_FHIR_PUSH_URL``: each stable study to that FHIR server.
    Made at start, or changed when the URL or token changed."""
    destination = parse_destination(f"fhir:{url}")
    if token is not None and (not 0 < len(token) <= 4096 or " " in token):
        raise BadRequest("PICTOR_FHIR_PUSH_TOKEN has 1 to 4096 characters and no space")
    async with pool.acquire() as conn:
        return await index_routes.ensure(conn, FHIR_PUSH_ROUTE, destination, "study.stable", token)


#: the route ``PICTOR_READING_WORKLIST`` keeps (app.services.reading)
READING_ROUTE = "reading-worklist"
READING_DESTINATION = "worklist:reading"


async def ensure_reading(pool: Pool, enabled: bool) -> None:
    """The route of ``PICTOR_READING_WORKLIST``: made at start while it is on, removed
    when it is turned off. A process starting while the index is away leaves it as it
    is (it serves 503 until the index answers; the next start sees to it)."""
    try:
        async with pool.acquire() as conn:
            if enabled:
                await index_routes.ensure(
                    conn, READING_ROUTE, READING_DESTINATION, "study.stable", None
                )
                return
            with contextlib.suppress(NotFound):
                await index_routes.remove(conn, READING_ROUTE)
    except INDEX_ERRORS as exc:
        log.warning("the route %s could not be checked: %s", READING_ROUTE, exc)


async def remove(pool: Pool, name: str) -> None:
    async with pool.acquire() as conn:
        await index_routes.remove(conn, name)


async def status(pool: Pool) -> list[RouteStatus]:
    async with pool.acquire() as conn:
        return await index_routes.status(conn)


async def studies(pool: Pool, name: str) -> tuple[Route, list[StudyStatus]]:
    async with pool.acquire() as conn:
        route = await index_routes.find(conn, name)
        return route, await index_routes.studies(conn, route.id)


async def export(pool: Pool, name: str, study_uid: str) -> int:
    """Send one study on a route again, every matching instance; the job's id."""
    if (problem := uid_problem(study_uid)) is not None:
        raise BadRequest(f"the Study Instance UID {problem}")
    return await index_routes.export(pool, name, study_uid)


def batches(found: Sequence[StoredInstance]) -> list[list[StoredInstance]]:
    out: list[list[StoredInstance]] = []
    size = 0
    for inst in found:
        if not out or len(out[-1]) >= BATCH_INSTANCES or size + inst.file_size > BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(inst)
        size += inst.file_size
    return out


# -- the queue -------------------------------------------------------------------------


class Routes:
    """Runs the forwarding jobs, in the background of a server process."""

    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        senders: Senders,
        key: Callable[[], Awaitable[bytes]],
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.senders = senders
        #: the archive's de-identification key (app.dicom.deidentify.archive_key)
        self.key = key
        self._task: asyncio.Task[None] | None = None
        self._running: dict[asyncio.Task[None], int] = {}
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        unfinished = list(self._running.items())
        for task, _ in unfinished:
            await stop_task(task)
        try:  # what was acknowledged is recorded; the rest is due again at once
            await index_routes.release(self.pool, [job for _, job in unfinished])
        except INDEX_ERRORS as exc:
            log.warning("routing: jobs could not be given back (their leases run out): %s", exc)
        for make in self.senders.values():
            closing = getattr(make, "aclose", None)
            if closing is not None:
                await closing()

    async def step(self) -> None:
        free = PROCESS_JOBS - len(self._running)
        if free <= 0:
            return
        for job in await index_routes.claim(
            self.pool, free, LEASE_SECONDS, self.settings.route_concurrency
        ):
            task = asyncio.get_running_loop().create_task(self._job(job))
            self._running[task] = job.id
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._wake.set()

    async def _heartbeat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                await index_routes.renew(self.pool, job.id, LEASE_SECONDS)
            except INDEX_ERRORS as exc:
                log.debug("route %s: a lease could not be renewed: %s", job.route.name, exc)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.step()
            except INDEX_ERRORS as exc:
                log.debug("routing waits for the index: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    def _retry_in(self, job: Job) -> float | None:
        waited = (dt.datetime.now(dt.UTC) - job.created_at).total_seconds()
        if waited >= self.settings.route_retry_seconds:
            return None
        delay = min(MAX_BACKOFF, self.settings.route_backoff_seconds * 2.0 ** (job.attempts - 1))
        return float(delay * (1 + random.random() / 10))  # noqa: S311 - jitter, not a secret

    async def _job(self, job: Job) -> None:
        error: str | None
        idle = False
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(job))
        try:
            error, idle = await self._forward(job)
        except INDEX_ERRORS as exc:  # the lease runs out and the job is taken up again
            log.warning("route %s: the index failed during a forward: %s", job.route.name, exc)
            return
        except Exception as exc:  # noqa: BLE001 - a failed attempt, retried
            log.exception("route %s: forwarding study %s failed", job.route.name, job.study_uid)
            error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            await stop_task(heartbeat)
        retry = None if error is None else self._retry_in(job)
        if error is not None:
            log.warning(
                "route %s: study %s: %s (%s)",
                job.route.name,
                job.study_uid,
                error,
                "given up" if retry is None else f"again in {retry:.0f} s",
            )
        try:
            await index_routes.finish(self.pool, job.id, error, retry, idle)
        except INDEX_ERRORS as exc:
            log.warning("route %s: a job's end could not be recorded: %s", job.route.name, exc)

    async def _forward(self, job: Job) -> tuple[str | None, bool]:
        """Send what the job has left to send: what went wrong (None: all acknowledged),
        and whether there was nothing to send."""
        wanted = await index_routes.pending(self.pool, job)
        if not wanted:
            return None, True
        try:
            stored = await instances(self.pool, Scope(job.study_uid))
        except NotFound:
            return None, True  # deleted since
        todo = [i for i in stored if i.sop_instance_uid in wanted]
        scheme, _, target = job.route.destination.partition(":")
        sender = self.senders[scheme](target, job.token, job.study_uid)
        options = job.route.deidentify
        deid = None if options is None else Deid(await self.key(), options)
        try:
            for batch in batches(todo):
                taken, error = await sender.send(batch, deid)
                await index_routes.acknowledged(
                    self.pool,
                    job,
                    [(i.sop_instance_uid, wanted[i.sop_instance_uid]) for i in batch
                     if i.sop_instance_uid in taken],
                )  # fmt: skip
                if error is not None:
                    return error, False
        finally:
            await sender.close()
        log.info(
            "route %s: study %s: %d instances forwarded", job.route.name, job.study_uid, len(todo)
        )
        return None, False
