"""Forwarding over DICOMweb (issue #17): a route's batch as one STOW-RS request to the
destination (PS3.18 10.5: ``POST {base}/studies``, ``multipart/related;
type="application/dicom"``), the instances streamed from the blob store as stored.

The answer says what was taken (PS3.18 10.5.3, Table 10.5.3-1): 200 all of it; 202 or
409 with the Store Instances Response Module, where the Referenced SOP Sequence
(0008,1199) lists what was stored and the Failed SOP Sequence (0008,1198) what was not,
with a Failure Reason (0008,1197). Any other answer, or none within
``PICTOR_ROUTE_TIMEOUT``, acknowledges nothing; nor does an answer whose body is
larger than 1 MiB (a response module for 50 instances is a few KB).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import msgspec

from app import __version__
from app.config import Settings
from app.dicomweb.responses import close_delimiter, new_boundary, part_head
from app.services.outbound import Blob, Client, OutboundError
from app.services.retrieve import StoredInstance, deidentified, instance_bytes
from app.services.routes import Deid, Sender
from app.storage import BlobStore

_REFERENCED = "00081199"
_FAILED = "00081198"
_REASON = "00081197"
_SOP_INSTANCE = "00081155"
_MEDIA_TYPE = 'multipart/related; type="application/dicom"; boundary='
_ACCEPT = {"Accept": "application/dicom+json"}
_answer = msgspec.json.Decoder(dict[str, Any])


def _uids(answer: dict[str, Any], key: str) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []
    for item in (answer.get(key) or {}).get("Value") or []:
        if not isinstance(item, dict):
            continue
        uid = ((item.get(_SOP_INSTANCE) or {}).get("Value") or [None])[0]
        reason = ((item.get(_REASON) or {}).get("Value") or [None])[0]
        if isinstance(uid, str):
            out.append((uid, reason if isinstance(reason, int) else None))
    return out


class DicomwebSender:
    """STOW-RS to one base URL, on one kept-alive connection for a job's batches."""

    def __init__(self, store: BlobStore, http: Client, base: str, token: str | None) -> None:
        self.store = store
        self.http = http
        self.url = f"{base}/studies"
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}

    async def send(
        self, batch: Sequence[StoredInstance], deid: Deid | None
    ) -> tuple[set[str], str | None]:
        boundary = new_boundary()
        # corrected and de-identified instances are made first, so that the length is
        # known: some servers take no chunked request body
        rewritten: dict[str, bytes] = {}
        #: the SOP Instance UID the destination sees -> the archive's
        original = {i.sop_instance_uid: i.sop_instance_uid for i in batch}
        for inst in batch:
            if deid is not None:
                data, uid = await deidentified(self.store, inst, deid.key, deid.options)
                rewritten[inst.sop_instance_uid] = data
                original[uid] = inst.sop_instance_uid
                del original[inst.sop_instance_uid]
            elif inst.patch is not None:
                rewritten[inst.sop_instance_uid] = await instance_bytes(self.store, inst)
        head = part_head(boundary, "application/dicom")
        pieces: list[bytes | Blob] = []
        for inst in batch:
            pieces.append(head)
            made = rewritten.get(inst.sop_instance_uid)
            pieces.append(  # as stored: from the file to the socket
                Blob(functools.partial(self.store.open_blob, inst.file_key), inst.file_size)
                if made is None
                else made
            )
        pieces.append(close_delimiter(boundary))
        headers = {"Content-Type": _MEDIA_TYPE + boundary, **_ACCEPT, **self.auth}
        try:
            status, content = await self.http.post_pieces(self.url, pieces, headers)
        except OutboundError as exc:
            return set(), f"{self.url}: {exc}"[:300]
        sent = {i.sop_instance_uid for i in batch}
        if status == 200:
            return sent, None
        if status not in (202, 409):
            return set(), f"{self.url} answered HTTP {status}"
        try:
            parsed = _answer.decode(content)
        except msgspec.DecodeError:
            return set(), f"{self.url} answered HTTP {status} without a response module"
        taken = {original[uid] for uid, _ in _uids(parsed, _REFERENCED) if uid in original}
        failed = [(original.get(uid, uid), reason) for uid, reason in _uids(parsed, _FAILED)]
        if not failed and taken == sent:
            return taken, None
        first = failed[0] if failed else (next(iter(sent - taken)), None)
        reason = f" (Failure Reason {first[1]:04X}H)" if first[1] is not None else ""
        return taken, (
            f"{self.url}: {len(sent) - len(taken)} of {len(sent)} instances not stored, "
            f"{first[0]} among them{reason}"
        )

    async def close(self) -> None:
        return None  # the connections are the process's, kept for the next job


class DicomwebSenders:
    """The factory :class:`app.services.routes.Routes` calls for a ``dicomweb:`` route:
    one HTTP client per process, its TLS context and kept-alive connections serving
    every job (an httpx client made per job cost more than the forward itself, and
    httpx's request machinery was most of what remained: app.services.outbound's
    small client writes the stored bytes straight to the socket)."""

    def __init__(self, store: BlobStore, settings: Settings) -> None:
        self.store = store
        self.http = Client(settings.route_timeout, f"pictor/{__version__} (route)")

    def __call__(self, target: str, token: str | None, study: str) -> Sender:
        return DicomwebSender(self.store, self.http, target, token)

    async def aclose(self) -> None:
        await self.http.close()
