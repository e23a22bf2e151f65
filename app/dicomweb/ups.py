"""UPS-RS, the Worklist Service (PS3.18 11), over HTTP and WebSocket: parse the request,
call :class:`app.services.ups.Workitems`, render its answer.

Payloads are ``application/dicom+json`` (PS3.18 11.1.3's default); XML is answered 415.
The Workitem UID of a Create and the Transaction UID of an Update are query parameters
(PS3.18 11.4.1, 11.6.1): given bare (``?1.2.3``, as the URI templates write them) or
named (``?workitem=``, ``?AffectedSOPInstanceUID=``; ``?transaction=``).

The notification channel is ``/dicom-web/subscribers/{aetitle}`` (PS3.18 11.13), the URL
a Subscribe answers in ``Content-Location`` with ``ws``/``wss``: event reports queued
for the AE are sent there, one DICOM JSON dataset per text message, oldest first, and
dropped once sent; ones sent to nobody wait (up to a week) for the channel to open. A
channel is woken by the commit that queues a report (NOTIFY, from any node) and looks
every :data:`POLL_SECONDS` anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import msgspec
from litestar import Request
from litestar.response import Response

from app.asgi import send_error
from app.auth.principal import who_of
from app.dicomweb.admin import read_body
from app.dicomweb.negotiation import choose
from app.dicomweb.qido import query_parameters
from app.dicomweb.urls import request_base_url
from app.errors import BadRequest, PictorError, ServiceUnavailable, UnsupportedMediaType
from app.services.ups import Outcome, Wakeups, Workitems, check_aet

log = logging.getLogger("pictor.ups")

DICOM_JSON = "application/dicom+json"
#: a workitem's largest body (attributes only: PS3.18 11.1.3)
MAX_BODY = 1 << 20
#: how often an open channel looks for new event reports when none was announced
POLL_SECONDS = 2.0
_BATCH = 100


def _workitems(state: Any) -> Workitems:
    return Workitems(state.pool, state.settings.dimse_ae_title)


def _pairs(request: Request[Any, Any, Any]) -> list[tuple[str, str]]:
    return query_parameters(request.scope.get("query_string", b"").decode("latin-1"))


def _only_uid(request: Request[Any, Any, Any], names: tuple[str, ...]) -> str | None:
    """A UID given bare (``?1.2.3``) or under one of ``names``; anything else: 400."""
    raw = request.scope.get("query_string", b"").decode("latin-1")
    if raw and "=" not in raw and "&" not in raw:
        return raw.strip()
    found = None
    for k, v in _pairs(request):
        if k not in names or found is not None:
            raise BadRequest(f"this request takes one query parameter, {names[0]}; not {k[:40]!r}")
        found = v.strip()
    return found


async def _body(request: Request[Any, Any, Any], *, optional: bool = False) -> bytes:
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if not media and optional:
        body = await read_body(request, MAX_BODY)
        if body.strip():
            raise UnsupportedMediaType(f"a body needs Content-Type: {DICOM_JSON}")
        return body
    if media not in (DICOM_JSON, "application/json"):
        raise UnsupportedMediaType(
            f"the body must be {DICOM_JSON} (PS3.18 11.1.3), not {media or 'untyped'}"
        )
    return await read_body(request, MAX_BODY)


def _accept(request: Request[Any, Any, Any]) -> None:
    choose(request.headers.get("accept"), (DICOM_JSON, "application/json"))


def _base(request: Request[Any, Any, Any]) -> str:
    settings = request.app.state.settings
    return request_base_url(settings.public_base_url, request.headers, request.url)


def _done(outcome: Outcome, status: int = 200, **headers: str) -> Response[bytes]:
    if outcome.warning:
        headers["warning"] = f'299 pictor "{outcome.warning}"'
    return Response(b"", status_code=status, headers=headers)


async def create_workitem(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Create (PS3.18 11.4): 201 with the workitem's ``Location``."""
    uid = _only_uid(request, ("workitem", "AffectedSOPInstanceUID"))
    body = await _body(request)
    outcome = await _workitems(request.app.state).create(body, uid, who=who_of(request.scope))
    return _done(outcome, 201, location=f"{_base(request)}/workitems/{outcome.uid}")


async def search_workitems(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Search (PS3.18 11.9): 200 with the matches, STAT first; 204 when none match."""
    _accept(request)
    rows, more = await _workitems(request.app.state).search(_pairs(request))
    if not rows:
        return Response(b"", status_code=204)
    headers = {"warning": '299 pictor "There are more matching workitems: ask with offset"'}
    return Response(
        b"[" + b",".join(rows) + b"]",
        media_type=DICOM_JSON,
        headers=headers if more else {},
    )


async def retrieve_workitem(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Retrieve (PS3.18 11.5): the workitem, without its Transaction UID."""
    _accept(request)
    if request.scope.get("query_string"):
        raise BadRequest("a workitem's retrieve takes no query parameters")
    attrs = await _workitems(request.app.state).retrieve(request.path_params["workitem"])
    return Response(
        msgspec.json.encode([attrs]),
        media_type=DICOM_JSON,
        headers={"cache-control": "no-cache"},
    )


async def update_workitem(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Update (PS3.18 11.6): the attributes given replace the workitem's."""
    transaction = _only_uid(request, ("transaction",))
    body = await _body(request)
    outcome = await _workitems(request.app.state).update(
        request.path_params["workitem"], body, transaction, who=who_of(request.scope)
    )
    return _done(outcome)


async def change_state(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Change State (PS3.18 11.7): IN PROGRESS, COMPLETED or CANCELED."""
    if request.scope.get("query_string"):
        raise BadRequest("a state change takes no query parameters")
    body = await _body(request)
    outcome = await _workitems(request.app.state).change_state(
        request.path_params["workitem"], body, who=who_of(request.scope)
    )
    return _done(outcome)


async def request_cancellation(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Request Cancellation (PS3.18 11.8): 202."""
    if request.scope.get("query_string"):
        raise BadRequest("a cancellation request takes no query parameters")
    body = await _body(request, optional=True)
    state = request.app.state
    outcome = await _workitems(state).request_cancel(
        request.path_params["workitem"],
        body,
        state.settings.dimse_ae_title,  # the SCP relays the request (Requesting AE)
        who=who_of(request.scope),
    )
    return _done(outcome, 202)


async def subscribe(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Subscribe (PS3.18 11.10): 201; ``Content-Location`` is the channel's URL."""
    aet = check_aet(request.path_params["aetitle"])
    outcome = await _workitems(request.app.state).subscribe(
        request.path_params["workitem"], aet, _pairs(request), who=who_of(request.scope)
    )
    base = _base(request)
    channel = ("wss" if base.startswith("https:") else "ws") + base[base.index(":") :]
    return _done(outcome, 201, **{"content-location": f"{channel}/subscribers/{aet}"})


async def _subscription(request: Request[Any, Any, Any], what: str) -> Response[bytes]:
    if request.scope.get("query_string"):
        raise BadRequest(f"{what} takes no query parameters")
    workitems = _workitems(request.app.state)
    act = workitems.unsubscribe if what == "an unsubscription" else workitems.suspend
    outcome = await act(
        request.path_params["workitem"],
        request.path_params["aetitle"],
        who=who_of(request.scope),
    )
    return _done(outcome)


async def unsubscribe(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Unsubscribe (PS3.18 11.11): 200."""
    return await _subscription(request, "an unsubscription")


async def suspend(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Suspend Global Subscription (PS3.18 11.12): 200."""
    return await _subscription(request, "a suspension")


async def channel_without_upgrade(request: Request[Any, Any, Any]) -> None:
    """The channel's URL asked for over plain HTTP (PS3.18 8.10.4: 400)."""
    raise BadRequest("a notification channel is opened as a WebSocket (RFC 6455 4.1)")


async def channel(
    state: Any, scope: Any, receive: Any, send: Any, params: Mapping[str, str]
) -> None:
    """The notification channel of one AE (PS3.18 11.13): its queued event reports, then
    each new one, as text messages. What the client sends is read and ignored."""
    try:
        aet = check_aet(params["aetitle"])
    except PictorError as exc:
        await send_error(send, exc)
        return
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    wake = asyncio.Event()
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "websocket.disconnect":
            pass
        gone = True
        wake.set()

    watcher = asyncio.get_running_loop().create_task(watch())
    workitems = _workitems(state)
    wakeups: Wakeups = state.ups_wakeups
    try:
        with wakeups.watch(aet, wake):
            while not gone:
                wake.clear()  # a report committed from here on wakes the wait below
                try:
                    batch = await workitems.pending(aet, _BATCH)
                except ServiceUnavailable:  # the index is away: try again shortly
                    batch = []
                for number, message in batch:
                    report = msgspec.json.decode(message)
                    report["00000110"] = {"vr": "US", "Value": [number % 65536]}  # Message ID
                    text = msgspec.json.encode(report).decode()
                    await send({"type": "websocket.send", "text": text})
                if batch:
                    try:
                        await workitems.sent(aet, [number for number, _ in batch])
                    except ServiceUnavailable:  # they are sent again: at least once
                        batch = []
                if len(batch) < _BATCH:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), POLL_SECONDS)
    except OSError:  # the client went away mid-send: what was not cleared is sent again
        log.debug("the notification channel of %s closed while sending", aet)
    finally:
        watcher.cancel()
