"""The audit trail of DIMSE accesses (issue #8): the service handlers, wrapped.

Each C-STORE, C-FIND, C-MOVE and C-GET leaves one audit event once its handler is done
(with ``aet:CALLING_AE_TITLE`` as who, the peer's address, the final status, and the
study / series / instance UIDs the request names or the stored instance carries), and
each association refused (A-ASSOCIATE-RJ, e.g. a calling AE title not among the
configured peers) one ``dimse-associate`` event. Recording only appends to the audit
queue (:class:`app.auth.audit.AuditLog`); the event loop writes it in batches.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom import evt

from app.auth.audit import AuditLog
from app.dimse.spool import data_set_head
from app.dimse.status import SUCCESS

_SERVICES = {
    evt.EVT_C_FIND: "dimse-c-find",
    evt.EVT_C_MOVE: "dimse-c-move",
    evt.EVT_C_GET: "dimse-c-get",
}
_PENDING = (0xFF00, 0xFF01)
_UID_TAGS = (0x0020000D, 0x0020000E, 0x00080018)


def _peer(event: Any) -> tuple[str, str | None]:
    requestor = event.assoc.requestor
    return f"aet:{str(requestor.ae_title).strip()}", requestor.address


def _status(value: Any) -> int | None:
    if isinstance(value, Dataset):
        return int(value.get("Status", 0xC000))
    if isinstance(value, int):
        return value
    return None


def _uids(ds: Dataset | None) -> tuple[list[str], list[str], list[str]]:
    out: tuple[list[str], list[str], list[str]] = ([], [], [])
    if ds is None:
        return out
    for into, tag in zip(out, _UID_TAGS):
        value = ds.get(tag)
        if value is not None and value.value:
            values = value.value if value.VM > 1 else [value.value]
            into.extend(str(v) for v in values if v)
    return out


def _keys(ds: Dataset | None) -> str | None:
    if ds is None:
        return None
    keys = [f"{e.keyword or e.tag}={e.value}" for e in ds if e.VR != "SQ" and e.value]
    return "&".join(keys)[:2000] or None


def _identifier(event: Any) -> Dataset | None:
    try:
        ds: Dataset = event.identifier
        return ds
    except Exception:  # noqa: BLE001 - an undecodable identifier: the handler says so
        return None


def _stored_uids(event: Any) -> tuple[list[str], list[str], list[str]]:
    """Study, series and SOP Instance UIDs of a C-STORE's data set, read from its start
    in the negotiated transfer syntax (the UIDs come long before the pixel data; the
    first :data:`app.dimse.spool.HEAD_BYTES` are read)."""
    sop = str(event.request.AffectedSOPInstanceUID or "")
    try:
        syntax = UID(str(event.context.transfer_syntax))
        data = data_set_head(event.request)
        if syntax.is_deflated:  # the start of the stream inflates on its own
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
        ds = read_dataset(
            io.BytesIO(data),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=lambda tag, vr, length: tag > 0x0020000E,
            specific_tags=list(_UID_TAGS),
        )
        study, series, _ = _uids(ds)
    except Exception:  # noqa: BLE001 - unreadable: the SOP Instance UID is still known
        study, series = [], []
    return study, series, [sop] if sop else []


def _store(handler: Callable[[Any], Any], audit: AuditLog) -> Callable[[Any], Any]:
    def handle(event: Any) -> Any:
        result = handler(event)
        who, client = _peer(event)
        study, series, instances = _stored_uids(event)
        status = _status(result)
        audit.record(
            who,
            client,
            "dimse-c-store",
            SUCCESS if status is None else status,
            outcome="success" if status == SUCCESS else "failure",
            studies=study,
            series=series,
            instances=instances,
        )
        return result

    return handle


def _service(
    handler: Callable[[Any], Iterator[Any]], action: str, audit: AuditLog
) -> Callable[[Any], Iterator[Any]]:
    def handle(event: Any) -> Iterator[Any]:
        final: int | None = None
        try:
            for i, item in enumerate(handler(event)):
                if isinstance(item, tuple) and len(item) == 2:
                    if i == 0 and item == (None, None):
                        final = 0xA801  # C-MOVE: destination unknown (PS3.4 C.4.2.1.4)
                    elif (status := _status(item[0])) is not None:
                        final = status
                yield item
        finally:
            identifier = _identifier(event)
            studies, series, instances = _uids(identifier)
            who, client = _peer(event)
            if final is None or final in _PENDING:
                final = SUCCESS  # the last pending answer ends in success / warning
            audit.record(
                who,
                client,
                action,
                final,
                outcome="success" if final == SUCCESS or 0xB000 <= final <= 0xBFFF else "failure",
                studies=studies,
                series=series,
                instances=instances,
                query=_keys(identifier) if action == "dimse-c-find" else None,
            )

    return handle


def _rejected(audit: AuditLog) -> Callable[[Any], None]:
    def handle(event: Any) -> None:
        who, client = _peer(event)
        # A-ASSOCIATE-RJ: rejected-permanent, service user, calling AE title not recognised
        audit.record(who, client, "dimse-associate", 0x0103, outcome="denied")

    return handle


def audited(handlers: list[Any], audit: AuditLog) -> list[Any]:
    """``handlers`` (``(event, handler)`` pairs), each service's handler wrapped so that
    it records its audit event, plus a handler for refused associations."""
    out = []
    for event, handler in handlers:
        if event is evt.EVT_C_STORE:
            handler = _store(handler, audit)
        elif event in _SERVICES:
            handler = _service(handler, _SERVICES[event], audit)
        out.append((event, handler))
    out.append((evt.EVT_REJECTED, _rejected(audit)))
    return out
