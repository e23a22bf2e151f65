"""Query/Retrieve C-MOVE and C-GET (PS3.4 C.4.2, C.4.3).

The identifier (unique keys only, C.4.2.2.1) is parsed like a C-FIND identifier and run
through the same QIDO query model to find the studies, series or instances it names;
:func:`app.index.retrieve.instances` then gives each instance's stored file and transfer
syntax. Each instance is one C-STORE sub-operation: to the move destination on a new
association (C-MOVE; destinations are the configured peers only, else A801H), or back on
the requesting association (C-GET, in the SCP role the requestor negotiated, PS3.7 D.3.3.4).

Transfer syntax (PS3.4 C.4.2.3.1 / C.4.3.3.1): an instance goes out in its stored
transfer syntax when the peer accepted that syntax for its SOP class; an uncompressed
little endian one may go in any other uncompressed little endian syntax the peer took
(pynetdicom re-encodes the data set); otherwise it is decoded and sent as Explicit VR
Little Endian (:func:`app.services.retrieve.transcoded`) if the peer took an
uncompressed syntax, else re-encoded in a lossless syntax the peer took and the codecs
can write (JPEG 2000 lossless, JPEG-LS lossless, RLE; never a lossy one), or the
sub-operation fails. pynetdicom counts the sub-operations
and sends the pending responses and the final one: success, B000H warning when some
failed, A702H when all did, with the Failed SOP Instance UID List (C.4.2.1.4).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from enum import Enum
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import build_context, evt
from pynetdicom.presentation import PresentationContext

from app.codec.transcode import (
    can_encode,
)
from app.dicom.uids import (
    EXPLICIT_VR_LE,
    J2K_LOSSLESS,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    VERIFICATION,
)
from app.dimse.find import MODELS, SERIES_UID, SOP_INSTANCE_UID, STUDY_UID, parse_identifier
from app.dimse.find import search_all as search_all_pages
from app.dimse.network import no_delay
from app.dimse.resources import Resources
from app.dimse.status import CANCEL, PENDING, Service, failure
from app.errors import NotFound
from app.services.retrieve import Scope, StoredInstance, instance_bytes, instances, transcoded
from app.services.search import Query
from app.storage import BlobStore

log = logging.getLogger(__name__)

#: uncompressed little endian syntaxes pynetdicom converts between (PS3.5 A.1, A.2, A.5)
NATIVE_LE = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)
#: PS3.8 9.3.2.2: at most 128 presentation contexts in one association request
MAX_CONTEXTS = 128

Offered = dict[str, frozenset[str]]


#: lossless syntaxes an instance may be re-encoded in, most preferred first
LOSSLESS_TARGETS = (J2K_LOSSLESS, JPEG_LS_LOSSLESS, RLE_LOSSLESS)


class Plan(Enum):
    AS_STORED = "as stored"
    TRANSCODE = "decoded to Explicit VR Little Endian"
    ENCODE = "re-encoded in a lossless syntax the peer accepted"


def plan(stored: str, offered: frozenset[str]) -> Plan | None:
    """How an instance stored in ``stored`` goes to a peer that accepted ``offered``."""
    if stored in offered or (stored in NATIVE_LE and offered & NATIVE_LE):
        return Plan.AS_STORED
    if offered & NATIVE_LE:
        return Plan.TRANSCODE
    if any(t in offered for t in LOSSLESS_TARGETS):
        return Plan.ENCODE
    return None


def lossless_target(inst: StoredInstance, offered: frozenset[str]) -> str | None:
    """A lossless syntax of ``offered`` the codecs can encode this instance's pixels in
    (by the attributes the index recorded)."""
    for target in LOSSLESS_TARGETS:
        if target in offered and can_encode(
            target,
            bits_allocated=inst.bits_allocated,
            bits_stored=inst.bits_stored,
            samples=inst.samples_per_pixel or 1,
            photometric=inst.photometric or "",
        ):
            return target
    return None


def offered_by(assoc: Any) -> Offered:
    """Accepted transfer syntaxes per SOP class on which this side may send C-STOREs."""
    offered: dict[str, set[str]] = {}
    for cx in assoc.accepted_contexts:
        if cx.as_scu:
            offered.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return {k: frozenset(v) for k, v in offered.items()}


def store_contexts(found: Iterable[StoredInstance]) -> list[PresentationContext]:
    """Presentation contexts to propose to a move destination (PS3.8 9.3.2.2): per SOP
    class one with the uncompressed syntaxes, and one per other stored syntax, so the
    peer can take the stored syntax or fall back to an uncompressed one."""
    classes: dict[str, None] = {}
    pairs: dict[tuple[str, str], None] = {}
    for inst in found:
        classes[inst.sop_class_uid] = None
        if inst.transfer_syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            pairs[(inst.sop_class_uid, inst.transfer_syntax)] = None
    contexts = [build_context(c, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for c in classes]
    contexts += [build_context(c, [ts]) for c, ts in pairs]
    return contexts[:MAX_CONTEXTS]


async def locate(res: Resources, query: Query, level: str) -> list[StoredInstance]:
    """The stored instances an identifier names, in viewing order, each once."""
    scopes: list[Scope] = []
    for rows in await search_all_pages(res, query):
        for row in rows:
            study = _uid(row, STUDY_UID)
            if level in ("PATIENT", "STUDY"):
                scopes.append(Scope(study))
            elif level == "SERIES":
                scopes.append(Scope(study, _uid(row, SERIES_UID)))
            else:
                scopes.append(Scope(study, _uid(row, SERIES_UID), _uid(row, SOP_INSTANCE_UID)))
    found: dict[str, StoredInstance] = {}
    for scope in scopes:
        try:
            for inst in await instances(res.pool, scope):
                found.setdefault(inst.sop_instance_uid, inst)
        except NotFound:
            continue  # deleted or replaced since the search
    return list(found.values())


def _same_instance(ds: Dataset, inst: StoredInstance) -> Dataset:
    """A retrieve sends the instance the archive holds, in another encoding: its SOP
    Instance UID stays (pydicom's ``decompress`` makes up a new one by default)."""
    ds.SOPInstanceUID = inst.sop_instance_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(inst.sop_instance_uid)
    return ds


def _uid(row: dict[str, Any], tag: int) -> str:
    return str(row[f"{tag:08X}"]["Value"][0])


class Retrieve:
    """The C-MOVE and C-GET services (pynetdicom threads; the index through the bridge)."""

    def __init__(self, res: Resources) -> None:
        self.res = res

    def _find(self, event: Any) -> list[StoredInstance]:
        request = parse_identifier(
            event.identifier, MODELS[str(event.request.AffectedSOPClassUID)], retrieve=True
        )
        return self.res.bridge.run(locate(self.res, request.query, request.level))

    def handle_move(self, event: Any) -> Iterator[Any]:
        """EVT_C_MOVE handler: the destination (a known peer), the number of
        sub-operations, then one pending (status, data set) per instance."""
        destination = str(event.move_destination or "").strip()
        address = self.res.settings.peers.get(destination)
        if address is None:
            log.warning("C-MOVE to unknown destination %r refused", destination)
            yield None, None  # pynetdicom answers A801H "Move Destination unknown"
            return
        store_assoc: list[Any] = []
        try:
            found = self._find(event)
        except Exception as exc:  # noqa: BLE001 - reported as the C-MOVE status
            # pynetdicom associates with the destination before it takes a status; a
            # Verification context is enough for that
            yield address[0], address[1], {"contexts": [build_context(VERIFICATION)]}
            yield 1
            yield failure(exc, Service.MOVE), None
            return
        options = {
            "contexts": store_contexts(found),
            "evt_handlers": [
                (evt.EVT_CONN_OPEN, no_delay),
                (evt.EVT_ACCEPTED, lambda e: store_assoc.append(e.assoc)),
            ],
        }
        yield address[0], address[1], options
        yield len(found)
        yield from self._sub_operations(event, found, lambda: offered_by(store_assoc[0]))

    def handle_get(self, event: Any) -> Iterator[Any]:
        """EVT_C_GET handler: the number of sub-operations, then one pending
        (status, data set) per instance, sent back on the same association."""
        try:
            found = self._find(event)
        except Exception as exc:  # noqa: BLE001 - reported as the C-GET status
            yield 1
            yield failure(exc, Service.GET), None
            return
        yield len(found)
        yield from self._sub_operations(event, found, lambda: offered_by(event.assoc))

    def _sub_operations(
        self, event: Any, found: list[StoredInstance], offered: Any
    ) -> Iterator[tuple[int, Dataset | None]]:
        accepted: Offered = offered()
        for inst in found:
            if event.is_cancelled:
                yield CANCEL, None  # PS3.4 C.4.2.3.1: C-CANCEL
                return
            yield PENDING, self._dataset(inst, accepted.get(inst.sop_class_uid, frozenset()))

    def _dataset(self, inst: StoredInstance, offered: frozenset[str]) -> Dataset:
        """The data set to send, or one pynetdicom cannot send (counted as a failed
        sub-operation with its SOP Instance UID in the Failed SOP Instance UID List)."""
        try:
            # through the retrieve service on the loop: bytes from the blob store,
            # re-encoding in the codec workers
            ready = self.res.bridge.run(outgoing(self.res.store, inst, offered))
            if ready is not None:
                return as_dataset(inst, *ready)
        except Exception:  # noqa: BLE001 - one failed sub-operation, the others go on
            log.exception("instance %s could not be prepared", inst.sop_instance_uid)
        unsendable = Dataset()  # no File Meta: no presentation context can carry it
        unsendable.SOPClassUID = inst.sop_class_uid
        unsendable.SOPInstanceUID = inst.sop_instance_uid
        return unsendable


async def outgoing(
    store: BlobStore, inst: StoredInstance, offered: frozenset[str]
) -> tuple[bytes, bool] | None:
    """The Part 10 file to send to a peer that accepted ``offered`` for the instance's
    SOP class, and whether it was re-encoded; None when no accepted syntax can carry it
    (C-MOVE, C-GET and DIMSE routes alike)."""
    how = plan(inst.transfer_syntax, offered)
    target = lossless_target(inst, offered) if how is Plan.ENCODE else None
    if how is None or (how is Plan.ENCODE and target is None):
        log.warning(
            "instance %s (%s) cannot be sent: the peer accepted %s for %s",
            inst.sop_instance_uid,
            inst.transfer_syntax,
            sorted(offered) or "nothing",
            inst.sop_class_uid,
        )
        return None
    if how is Plan.AS_STORED:
        return await instance_bytes(store, inst), False
    syntax = EXPLICIT_VR_LE if how is Plan.TRANSCODE else target
    assert syntax is not None
    return await transcoded(store, inst, syntax), True


def as_dataset(inst: StoredInstance, data: bytes, reencoded: bool) -> Dataset:
    ds = dcmread(io.BytesIO(data))
    return _same_instance(ds, inst) if reencoded else ds
