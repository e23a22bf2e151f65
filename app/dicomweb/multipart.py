"""A sans-IO parser of ``multipart/related`` bodies (RFC 2046 5.1, RFC 2387).

The parser does no I/O: :meth:`MultipartParser.feed` takes whatever bytes arrived and
returns events; :meth:`MultipartParser.close` checks the body ended properly. Part data
is handed out as it arrives, so a part of any size passes through a bounded buffer.

Grammar followed (RFC 2046 5.1.1): an optional preamble; each part opens with a
delimiter line ``--boundary`` (after CRLF, except at the very start of the body),
optional transport padding (spaces/tabs), CRLF, header lines, an empty line, then the
part's data up to the next CRLF ``--boundary``. The close delimiter is ``--boundary--``;
anything after it is the epilogue and is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import BadRequest

#: bounds on what the parser holds back between chunks: a part's header section, and
#: the transport padding after a boundary (RFC 2046 5.1.1 sets no limit on either)
_MAX_HEADER_BYTES = 16 * 1024
_MAX_PADDING = 256
#: the whitespace around a header field's value: SP and HTAB (RFC 9110 5.5, 5.6.3), not
#: what str.strip() takes for whitespace (NO-BREAK SPACE, NEL, ...)
_OWS = " \t"


class MultipartError(BadRequest):
    """The body is not well-formed multipart (HTTP 400, PS3.18 10.5.3.1)."""


@dataclass(slots=True)
class PartStart:
    headers: dict[str, str]  # lower-cased names


@dataclass(slots=True)
class PartData:
    #: a view into the fed chunk: consume it before feeding the next one
    data: bytes | memoryview


@dataclass(slots=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd

_PREAMBLE, _DELIMITER_LINE, _HEADERS, _BODY, _EPILOGUE = range(5)


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type/subtype; a=b; c="d"`` into the lower-cased type and its parameters.

    Parameter values may be quoted strings (RFC 9110 5.6.6) with backslash escapes.
    """
    media, params = "", {}
    i, n = 0, len(value)
    j = value.find(";")
    media = (value if j < 0 else value[:j]).strip().lower()
    i = n if j < 0 else j + 1
    while i < n:
        eq = value.find("=", i)
        if eq < 0:
            break
        name = value[i:eq].strip().lower()
        i = eq + 1
        while i < n and value[i] in " \t":
            i += 1
        if i < n and value[i] == '"':
            i += 1
            out = []
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(value[i])
                i += 1
            val = "".join(out)
            i += 1
            semi = value.find(";", i)
            i = n if semi < 0 else semi + 1
        else:
            semi = value.find(";", i)
            val = (value[i:] if semi < 0 else value[i:semi]).strip()
            i = n if semi < 0 else semi + 1
        if name:
            params[name] = val
    return media, params


class MultipartParser:
    def __init__(self, boundary: str) -> None:
        if not boundary or len(boundary) > 70:
            raise MultipartError("the multipart boundary must have 1 to 70 characters (RFC 2046)")
        try:
            # a header field's value is octets (RFC 9110 5.5), read as latin-1
            self._dash_boundary = b"--" + boundary.encode("latin-1")
        except UnicodeEncodeError:
            raise MultipartError(
                "the multipart boundary has a character that is not an octet (RFC 2046 5.1.1)"
            ) from None
        self._delimiter = b"\r\n" + self._dash_boundary
        self._buf = bytearray()
        self._state = _PREAMBLE
        self._parts = 0
        self._at_start = True

    @property
    def parts(self) -> int:
        return self._parts

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self._state == _BODY and len(data) > 2 * len(self._delimiter):
            data = self._body_fast_path(data, events)
            if not data:
                return events
        self._buf += data
        while True:
            progressed = self._step(events)
            if not progressed:
                return events

    def _body_fast_path(self, data: bytes, events: list[Event]) -> bytes:
        """Inside a part's body: hand out views of ``data`` without copying it.

        Returns what is left for the general state machine (from the delimiter on),
        or ``b""`` when the whole chunk was body data.
        """
        delim = self._delimiter
        keep = len(delim) - 1
        if self._buf:
            # the tail kept from the previous chunk may start a delimiter
            tail = bytes(self._buf)
            if (tail + data[:keep]).find(delim) >= 0:
                return data  # rare: let the general path handle the crossing
            events.append(PartData(tail))
            self._buf.clear()
        idx = data.find(delim)
        view = memoryview(data)
        if idx < 0:
            events.append(PartData(view[: len(data) - keep]))
            self._buf += view[len(data) - keep :]
            return b""
        if idx:
            events.append(PartData(view[:idx]))
        return data[idx:]

    def close(self) -> None:
        """The body ended: it must have ended with a close delimiter."""
        if self._state == _EPILOGUE:
            return
        if self._state == _PREAMBLE:
            raise MultipartError(
                "the body has no part: no delimiter line with the boundary was found"
            )
        raise MultipartError("the body ended in the middle of a part (no closing boundary)")

    # -- states --------------------------------------------------------------------------

    def _step(self, events: list[Event]) -> bool:
        buf = self._buf
        if self._state == _PREAMBLE:
            if self._at_start and buf.startswith(self._dash_boundary):
                del buf[: len(self._dash_boundary)]
                self._state = _DELIMITER_LINE
                return True
            if (
                self._at_start
                and len(buf) < len(self._dash_boundary)
                and self._dash_boundary.startswith(bytes(buf))
            ):
                return False  # may still become the boundary
            self._at_start = False
            idx = buf.find(self._delimiter)
            if idx < 0:
                keep = len(self._delimiter) - 1
                if len(buf) > keep:
                    del buf[: len(buf) - keep]  # preamble is discarded
                return False
            del buf[: idx + len(self._delimiter)]
            self._state = _DELIMITER_LINE
            return True
        if self._state == _DELIMITER_LINE:
            # after "--boundary": "--" closes; else transport padding then CRLF
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                del buf[:]
                self._state = _EPILOGUE
                if self._parts == 0:
                    raise MultipartError("the body has a closing boundary but no part")
                return False
            end = buf.find(b"\r\n")
            # the bound holds whatever the chunking: a CR at the end of the buffer may
            # still be the start of the CRLF
            if end > _MAX_PADDING or (end < 0 and len(buf) > _MAX_PADDING + 1):
                raise MultipartError("the boundary line is not followed by CRLF")
            if end < 0:
                return False
            if buf[:end].strip(b" \t"):
                raise MultipartError("unexpected characters after the boundary on its line")
            del buf[: end + 2]
            self._state = _HEADERS
            return True
        if self._state == _HEADERS:
            if buf.startswith(b"\r\n"):  # a part with no header at all
                del buf[:2]
                events.append(PartStart({}))
                self._begin_body()
                return True
            end = buf.find(b"\r\n\r\n")
            # as above: up to three bytes of the empty line may be at the end of the buffer
            if end > _MAX_HEADER_BYTES or (end < 0 and len(buf) > _MAX_HEADER_BYTES + 3):
                raise MultipartError("a part's header section is larger than 16 KiB")
            if end < 0:
                return False
            headers = _parse_headers(bytes(buf[:end]))
            del buf[: end + 4]
            events.append(PartStart(headers))
            self._begin_body()
            return True
        if self._state == _BODY:
            idx = buf.find(self._delimiter)
            if idx < 0:
                # hand out all but what could be the start of a delimiter
                keep = len(self._delimiter) - 1
                if len(buf) > keep:
                    cut = len(buf) - keep
                    events.append(PartData(bytes(buf[:cut])))
                    del buf[:cut]
                return False
            if idx:
                events.append(PartData(bytes(buf[:idx])))
            del buf[: idx + len(self._delimiter)]
            events.append(PartEnd())
            self._state = _DELIMITER_LINE
            return True
        # epilogue: ignored
        del buf[:]
        return False

    def _begin_body(self) -> None:
        self._parts += 1
        self._state = _BODY


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    name = ""
    for raw in block.split(b"\r\n"):
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t") and name:  # obsolete line folding
            headers[name] += " " + line.strip(_OWS)
            continue
        if ":" not in line:
            raise MultipartError(f"malformed part header line: {line[:80]!r}")
        key, _, value = line.partition(":")
        name = key.strip(_OWS).lower()
        headers[name] = value.strip(_OWS)
    return headers
