"""The HL7 v2 listener: MLLP framing over TCP, one ACK per message.

MLLP (HL7 v2.5.1 Appendix C, "Minimal Lower Layer Protocol" release 2): a message is
sent as ``<VT> message <FS><CR>``, several per connection, each answered with an
acknowledgement before the next is read (original acknowledgement mode, HL7 v2.5.1
2.9.2). A message that cannot be acted on is answered AE (application error: the
reason in MSA-3 and ERR; nothing was changed) or AR (rejected: an unsupported type or
version, or the archive cannot act now and the sender should send it again later), and
the connection stays open. A frame over :data:`MAX_MESSAGE` bytes is answered AR and the
connection closed, as the rest of it cannot be told from the next message.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from app.addresses import Network, within
from app.errors import BadRequest, NotFound, PictorError
from app.hl7.messages import (
    DATA_TYPE_ERROR,
    INTERNAL_ERROR,
    UNKNOWN_KEY,
    Header,
    Message,
    MessageError,
    Order,
    ack,
    decode,
    header_of,
    parse,
)
from app.services.worklist import Item, OrderChange, Outcome, Worklist

log = logging.getLogger("pictor.hl7")

START, END = b"\x0b", b"\x1c\x0d"
#: largest message accepted (an ADT or order is a few kilobytes)
MAX_MESSAGE = 1 << 20
#: connections served at once
MAX_CONNECTIONS = 64
#: a message must arrive whole within this once it has begun
MESSAGE_TIMEOUT = 60.0
#: an idle connection is closed after this (interface engines reconnect)
IDLE_TIMEOUT = 3600.0


class FrameTooLarge(Exception):
    pass


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next MLLP frame's payload; None at the end of the stream. Bytes outside a
    frame (line noise, a stray CR) are skipped."""
    while True:
        byte = await asyncio.wait_for(reader.read(1), IDLE_TIMEOUT)
        if not byte:
            return None
        if byte == START:
            break
    try:
        data = await asyncio.wait_for(reader.readuntil(END), MESSAGE_TIMEOUT)
    except asyncio.LimitOverrunError:
        raise FrameTooLarge from None
    except asyncio.IncompleteReadError:
        return None  # the peer hung up mid-message: nothing to answer
    return data[: -len(END)]


def frame(text: str) -> bytes:
    return START + text.encode("utf-8") + END


class Listener:
    """Handles each message with the worklist service; ``peers`` (networks), when
    given, are the only sources whose connections are accepted."""

    def __init__(self, worklist: Worklist, *, peers: Sequence[Network] | None) -> None:
        self.worklist = worklist
        self.peers = peers
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.connection, host, port, limit=MAX_MESSAGE)

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        address = str(peer[0])
        try:
            if self.peers is not None and not within(self.peers, address):
                log.warning("HL7 connection refused from %s: not in PICTOR_HL7_PEERS", address)
                return
            if self._slots.locked():
                log.warning(
                    "HL7 connection from %s refused: %d already open", address, MAX_CONNECTIONS
                )
                return
            async with self._slots:
                await self._messages(reader, writer, address)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _messages(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> None:
        while True:
            try:
                raw = await read_frame(reader)
            except FrameTooLarge:
                error = MessageError(
                    f"the message is larger than {MAX_MESSAGE} bytes", code=DATA_TYPE_ERROR
                )
                writer.write(frame(ack(None, "AR", str(error), error=error)))
                await writer.drain()
                return
            if raw is None:
                return
            writer.write(frame(await self.handle(raw, address)))
            await writer.drain()

    async def handle(self, raw: bytes, address: str) -> str:
        """The ACK for one message (never raises). A message acted on before (the same
        MSH-3, MSH-4, MSH-10 and content: an engine that timed out waiting for the ACK
        sends it again) gets the AA it got then and is not acted on twice; one that
        changed nothing (AE, AR) is handled again."""
        header = None
        try:
            text = decode(raw)
            header = header_of(text)
            sender = (header.sending_application, header.sending_facility, header.control_id)
            digest = hashlib.sha256(raw).digest()
            if header.control_id:
                before = await self.worklist.answered(sender, digest)
                if before is not None:
                    log.info("HL7 message %s from %s answered again", header.control_id, address)
                    return before
            answer, code = await self._answer(text, header, address)
            if header.control_id and code == "AA":
                try:
                    await self.worklist.remember_answer(sender, digest, answer)
                except PictorError as exc:  # acted on: the answer stands all the same
                    log.warning("HL7 message %s not remembered: %s", header.control_id, exc)
            return answer
        except MessageError as exc:
            code = "AR" if exc.reject else "AE"
            log.info("HL7 %s from %s: %s", code, address, exc)
            return ack(header, code, str(exc), error=exc)
        except PictorError as exc:  # the index is down or busy: send it again later
            log.warning("HL7 message from %s not processed: %s", address, exc)
            error = MessageError(
                "the archive cannot process it now; send it again", code=INTERNAL_ERROR
            )
            return ack(header, "AR", str(error), error=error)
        except Exception:  # noqa: BLE001 - the sender gets an answer, the log the cause
            log.exception("HL7 message from %s failed", address)
            error = MessageError("internal error", code=INTERNAL_ERROR)
            return ack(header, "AR", str(error), error=error)

    async def _answer(self, text: str, header: Header, address: str) -> tuple[str, str]:
        """The ACK for a message whose header was read, and its code (AA, AE, AR)."""
        try:
            message = parse(text)
            outcome = await self._act(message, f"hl7:{header.sending_application}@{address}")
            return ack(header, "AA", _summary(outcome)), "AA"
        except MessageError as exc:
            code = "AR" if exc.reject else "AE"
            log.info("HL7 %s from %s: %s", code, address, exc)
            return ack(header, code, str(exc), error=exc), code
        except NotFound as exc:
            error = MessageError(exc.message, code=UNKNOWN_KEY)
            return ack(header, "AE", exc.message, error=error), "AE"
        except BadRequest as exc:
            error = MessageError(exc.message, code=DATA_TYPE_ERROR)
            return ack(header, "AE", exc.message, error=error), "AE"

    async def _act(self, message: Message, who: str) -> Outcome:
        patient = message.patient
        assert patient is not None  # parse() requires PID
        kind = message.kind
        if kind[0] == "ADT" and kind[1] == "A40":
            assert message.prior is not None
            return await self.worklist.merge(
                (message.prior.patient_id, message.prior.issuer),
                (patient.patient_id, patient.issuer),
                patient.attrs,
                who=who,
            )
        if kind[0] == "ADT":
            return await self.worklist.patient(
                patient.patient_id,
                patient.issuer,
                patient.attrs,
                register=kind[1] in ("A01", "A04"),
                who=who,
            )
        changes = [
            OrderChange(o.control, _item(o, patient.attrs, patient.patient_id, patient.issuer))
            for o in message.orders
        ]
        return await self.worklist.orders(
            (patient.patient_id, patient.issuer), patient.attrs, changes, who=who
        )


def _item(order: Order, patient: dict[str, Any], patient_id: str, issuer: str) -> Item:
    name = patient.get("00100010", {}).get("Value") or [{}]
    return Item(
        placer=order.placer,
        filler=order.filler,
        accession_number=order.accession_number,
        requested_procedure_id=order.requested_procedure_id,
        sps_id=order.sps_id,
        study_uid=order.study_uid,
        patient_id=patient_id,
        issuer=issuer,
        patient_name=name[0].get("Alphabetic") or None,
        modality=order.modality,
        station_aet=order.station_aet,
        performing_physician=order.performing_physician,
        start=order.start,
        priority=order.priority,
        attrs={**patient, **order.attrs},
    )


def _summary(outcome: Outcome) -> str:
    parts = []
    if outcome.studies:
        parts.append(f"{outcome.studies} stored studies corrected")
    if outcome.items:
        parts.append(f"{outcome.items} worklist items written")
    return "; ".join(parts) or "accepted"
