"""The DIMSE process: one pynetdicom Application Entity next to one event loop.

``pictor serve`` starts this process (``python -m app.dimse``) before its HTTP workers,
with the same settings in the environment, and stops it when it stops. The main thread
runs the asyncio event loop, owning the one asyncpg pool, the blob store and ingest;
pynetdicom's acceptor runs associations on their own threads (PS3.8: several
associations at once) and reaches the loop through :class:`app.dimse.bridge.Bridge`.

Presentation contexts supported (PS3.8 9.3.3.2, PS3.7 annexes for the roles):

* Verification (PS3.4 A), every storage SOP class pynetdicom knows (PS3.4 B.5), the
  Patient / Study Root Query/Retrieve FIND, MOVE and GET classes (PS3.4 C.6) and the
  Modality Worklist Information Model FIND (PS3.4 K.6.1.3, :mod:`app.dimse.worklist`),
  Modality Performed Procedure Step and its Retrieve class (PS3.4 F.7, F.8,
  :mod:`app.dimse.mpps`);
* every transfer syntax of PS3.5 Annex A, preferring, when a requestor offers several
  in one context, the encapsulated (compressed) ones, so an instance is kept as the
  modality encoded it, then deflated, then Explicit and Implicit VR Little Endian;
* storage classes also in the SCP role for the requestor (SCP/SCU Role Selection,
  PS3.7 D.3.3.4), which C-GET needs to send instances back on the same association.

Calling AE titles may be restricted to the configured peers (``dimse_restrict``, and
always when access control is on, ``auth``): others
get A-ASSOCIATE-RJ, "calling AE title not recognized" (PS3.8 9.3.4), and so do requests
to another called AE title.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    evt,
    register_uid,
)
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from app.auth.audit import AuditLog
from app.bootstrap import create_pool, open_store
from app.config import ConfigError, Settings, load_settings
from app.dicom.uids import MODALITY_WORKLIST_FIND, MPPS, MPPS_RETRIEVE, VERIFICATION
from app.dimse.audit import audited
from app.dimse.bridge import Bridge
from app.dimse.find import MODELS, Find
from app.dimse.mpps import PerformedProcedureSteps
from app.dimse.network import no_delay
from app.dimse.peers import resolve_sources, source_check
from app.dimse.resources import Resources
from app.dimse.retrieve import Retrieve
from app.dimse.spool import install, prepare, release_pending
from app.dimse.status import SUCCESS
from app.dimse.store import Storage
from app.dimse.worklist import WorklistFind
from app.services.ingest import Ingest
from app.services.tiering import Tiering

log = logging.getLogger("pictor.dimse")

#: associations served at once (each has its own thread)
MAX_ASSOCIATIONS = 32
#: largest P-DATA PDU received (PS3.8 D.1): fewer, larger PDUs for big instances
MAX_PDU = 1 << 20

#: storage SOP classes of PS3.4 B.5 / PS3.6 Annex A that pynetdicom does not list
#: (retired and trial classes a legacy modality may still send, DICOS, eddy current)
EXTRA_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.3": "UltrasoundMultiFrameImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.5": "NuclearMedicineImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.6": "UltrasoundImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.12.3": "XRayAngiographicBiPlaneImageStorage",
    "1.2.840.10008.5.1.4.1.1.77.1": "VLImageStorageTrial",
    "1.2.840.10008.5.1.4.1.1.77.2": "VLMultiFrameImageStorageTrial",
    "1.2.840.10008.5.1.4.1.1.88.1": "TextSRStorageTrial",
    "1.2.840.10008.5.1.4.1.1.88.2": "AudioSRStorageTrial",
    "1.2.840.10008.5.1.4.1.1.88.3": "DetailSRStorageTrial",
    "1.2.840.10008.5.1.4.1.1.88.4": "ComprehensiveSRStorageTrial",
    "1.2.840.10008.5.1.4.1.1.501.1": "DICOSCTImageStorage",
    "1.2.840.10008.5.1.4.1.1.501.2.1": "DICOSDigitalXRayImageStorageForPresentation",
    "1.2.840.10008.5.1.4.1.1.501.2.2": "DICOSDigitalXRayImageStorageForProcessing",
    "1.2.840.10008.5.1.4.1.1.501.3": "DICOSThreatDetectionReportStorage",
    "1.2.840.10008.5.1.4.1.1.501.4": "DICOS2DAITStorage",
    "1.2.840.10008.5.1.4.1.1.501.5": "DICOS3DAITStorage",
    "1.2.840.10008.5.1.4.1.1.501.6": "DICOSQuadrupoleResonanceStorage",
    "1.2.840.10008.5.1.4.1.1.601.1": "EddyCurrentImageStorage",
    "1.2.840.10008.5.1.4.1.1.601.2": "EddyCurrentMultiFrameImageStorage",
}


def storage_sop_classes() -> list[str]:
    """pynetdicom's storage SOP classes and :data:`EXTRA_STORAGE`, registered with its
    Storage service class so that C-STOREs of them are handled."""
    known = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    for uid, name in EXTRA_STORAGE.items():
        if uid not in known and uid_to_service_class(uid) is not StorageServiceClass:
            register_uid(uid, name, StorageServiceClass)
    return known + [uid for uid in EXTRA_STORAGE if uid not in known]


def _preference(syntax: str) -> int:
    uid = UID(syntax)
    if uid.is_encapsulated:
        return 0
    if uid.is_deflated:
        return 1
    return {"1.2.840.10008.1.2.1": 2, "1.2.840.10008.1.2": 3}.get(syntax, 4)


#: the acceptor takes, of a context's transfer syntaxes, the first of this list it finds
TRANSFER_SYNTAXES = sorted(ALL_TRANSFER_SYNTAXES, key=_preference)


def share_uids_in_copies() -> None:
    """Let ``copy.deepcopy`` share pydicom UIDs, as it shares ``str`` (a UID is an
    immutable ``str``). pynetdicom deep-copies the supported presentation contexts for
    every association it accepts: here about 200 abstract syntaxes with 8,500 transfer
    syntax UIDs, which took 77 ms of the interpreter (every other association waiting)
    and takes 5.5 ms with the UIDs shared (issue #20)."""
    copy._deepcopy_dispatch[UID] = _same  # type: ignore[attr-defined]


def _same(value: UID, _memo: object) -> UID:
    return value


def build_ae(settings: Settings) -> AE:
    share_uids_in_copies()
    ae = AE(ae_title=settings.dimse_ae_title)
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.maximum_pdu_size = MAX_PDU
    ae.add_supported_context(VERIFICATION)
    for sop_class in storage_sop_classes():
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    for sop_class in MODELS:  # Patient / Study Root FIND, MOVE, GET
        ae.add_supported_context(sop_class)
    ae.add_supported_context(MODALITY_WORKLIST_FIND)  # PS3.4 K
    ae.add_supported_context(MPPS)  # PS3.4 F.7: N-CREATE, N-SET
    ae.add_supported_context(MPPS_RETRIEVE)  # PS3.4 F.8: N-GET
    if restricted(settings):  # known peers only, by AE title here, by address in peers.py
        peers = sorted(settings.peer_sources)
        if not peers:
            raise ConfigError(
                f"{'PICTOR_DIMSE_RESTRICT' if settings.dimse_restrict else 'PICTOR_AUTH'} is on "
                "but PICTOR_DIMSE_PEERS is empty: no calling AE title could associate "
                "(set the peers, or --dimse-port 0)"
            )
        ae.require_calling_aet = peers
        ae.require_called_aet = True
    return ae


def spool_directory(settings: Settings) -> Path:
    """Where received data sets too large for memory wait (:mod:`app.dimse.spool`)."""
    return Path(settings.data_dir) / "dimse-spool"


def restricted(settings: Settings) -> bool:
    """Only known peers may associate (with access control on, always)."""
    return settings.dimse_restrict or settings.auth


def handlers(res: Resources) -> list[Any]:
    storage, find, retrieve = Storage(res.ingest, res.bridge), Find(res), Retrieve(res)
    worklist, performed = WorklistFind(res), PerformedProcedureSteps(res)

    def c_find(event: Any) -> Any:
        if str(event.request.AffectedSOPClassUID) == MODALITY_WORKLIST_FIND:
            return worklist.handle(event)
        return find.handle(event)

    return metered(
        [
            (evt.EVT_CONN_OPEN, no_delay),
            (evt.EVT_CONN_CLOSE, release_pending),  # a data set cut off mid-transfer
            (evt.EVT_C_ECHO, lambda event: SUCCESS),  # PS3.7 9.1.5: Verification
            (evt.EVT_C_STORE, storage.handle),
            (evt.EVT_C_FIND, c_find),
            (evt.EVT_C_MOVE, retrieve.handle_move),
            (evt.EVT_C_GET, retrieve.handle_get),
            (evt.EVT_N_CREATE, performed.n_create),
            (evt.EVT_N_SET, performed.n_set),
            (evt.EVT_N_GET, performed.n_get),
        ]
    )


_SERVICE_NAMES = {
    evt.EVT_C_ECHO: "c-echo",
    evt.EVT_C_STORE: "c-store",
    evt.EVT_C_FIND: "c-find",
    evt.EVT_C_MOVE: "c-move",
    evt.EVT_C_GET: "c-get",
    evt.EVT_N_CREATE: "n-create",
    evt.EVT_N_SET: "n-set",
    evt.EVT_N_GET: "n-get",
}


def metered(pairs: list[Any]) -> list[Any]:
    """``pairs`` with each request counted by service, and the associations counted
    (established, rejected, aborted) and gauged while open, for /metrics."""
    from app.observability import DIMSE_ACTIVE, DIMSE_ASSOCIATIONS, DIMSE_OPERATIONS

    def counted(name: str, handler: Any) -> Any:
        def handle(event: Any) -> Any:
            DIMSE_OPERATIONS.labels(name).inc()
            return handler(event)

        return handle

    def outcome(name: str) -> Any:
        return lambda _event: DIMSE_ASSOCIATIONS.labels(name).inc()

    out = [
        (event, counted(_SERVICE_NAMES[event], handler) if event in _SERVICE_NAMES else handler)
        for event, handler in pairs
    ]
    return out + [
        # open connections: opened and closed in pairs, however an association ends
        (evt.EVT_CONN_OPEN, lambda _event: DIMSE_ACTIVE.inc()),
        (evt.EVT_CONN_CLOSE, lambda _event: DIMSE_ACTIVE.dec()),
        (evt.EVT_ESTABLISHED, outcome("established")),
        (evt.EVT_ABORTED, outcome("aborted")),
        (evt.EVT_REJECTED, outcome("rejected")),
    ]


async def serve(settings: Settings) -> None:
    """Accept associations until SIGTERM / SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ae = build_ae(settings)
    # received data sets beyond a few MiB wait on the archive's disk, not in memory
    spool = spool_directory(settings)
    await asyncio.to_thread(prepare, spool)
    install(spool, floor=settings.min_free_bytes)
    pool = await create_pool(settings.database_url, min_size=1, max_size=6)
    audit = AuditLog(pool) if settings.audit_enabled else None
    try:
        store = open_store(settings)
        res = Resources(settings, pool, store, Ingest(settings, pool, store), Bridge(loop))
        # C-MOVE / C-GET reads keep studies hot; this process may be the tier mover
        # unless pictor serve runs a background process for that (app.background)
        tiering = Tiering(settings, pool, store, moves=not settings.background_process)
        tiering.start()
        evt_handlers = handlers(res)
        if restricted(settings):
            networks = await asyncio.to_thread(resolve_sources, settings.peer_sources)
            evt_handlers.insert(0, source_check(networks))
        if audit is not None:
            audit.start()
            evt_handlers = audited(evt_handlers, audit)
        ae.start_server(
            (settings.host, settings.dimse_port), block=False, evt_handlers=evt_handlers
        )
        print(
            f"Pictor DIMSE {settings.dimse_ae_title} at {settings.host}:{settings.dimse_port}",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            # associations still running finish their work on the loop while it turns
            await asyncio.to_thread(ae.shutdown)
            await tiering.stop()
    finally:
        if audit is not None:
            await audit.stop()
        await pool.close()


def main() -> int:
    from app.process import die_with_supervisor

    die_with_supervisor()  # no orphan DIMSE process when pictor serve is killed
    try:
        settings = load_settings()
        if not settings.database_url:
            raise ConfigError("the DIMSE process needs DATABASE_URL (pictor serve sets it)")
        level = settings.log_level.upper()
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("pynetdicom").setLevel("DEBUG" if level == "DEBUG" else "WARNING")
        if level != "DEBUG":
            # pynetdicom's own event logging only writes INFO and DEBUG lines, which are
            # not shown; off, it costs nothing per message and cannot fail (its N-GET
            # line raises on an empty Attribute Identifier List, F.8.2.1.1: all)
            from pynetdicom import _config

            _config.LOG_HANDLER_LEVEL = "none"
        import uvloop

        uvloop.run(serve(settings))
    except ConfigError as exc:
        print(f"pictor dimse: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(f"pictor dimse: {exc}", file=sys.stderr)
        return 1
    return 0
