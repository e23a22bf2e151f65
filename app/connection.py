"""The HTTP connection itself: uvicorn's httptools protocol with the bounds a server on
a network needs (issue #13, item 8; DESIGN.md decision 12).

* **Request head**: the request line and headers must arrive within ``header_timeout``
  seconds of the connection opening (or of the first byte of a next request on a
  kept-alive one), and hold at most :data:`MAX_HEAD_BYTES`: else 408 (RFC 9110 15.5.9)
  or 431 (RFC 6585 5), and the connection is closed. A client that sends a byte every
  few seconds can no longer hold a connection (and a worker's memory) for ever.
* **Request body**: at most ``body_timeout`` seconds between two chunks of the body
  (nginx's ``client_body_timeout`` rule) while the server is ready to read; a client
  that stalls gets 408 if no answer has started, and its connection is closed. The
  application sees the hang-up (``http.disconnect``) and, for STOW-RS, keeps nothing
  of the unfinished upload.

Time the server itself spends not reading (back-pressure while a part is written to
disk) is not counted against the client.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import load_settings

#: request line plus headers (nginx's default large_client_header_buffers: 4 x 8 KiB)
MAX_HEAD_BYTES = 65536

_settings = load_settings()
HEADER_TIMEOUT = _settings.header_timeout
BODY_TIMEOUT = _settings.body_timeout

_STATUS = {408: b"408 Request Timeout", 431: b"431 Request Header Fields Too Large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with a deadline for the head, a size bound on it and an
    idle timeout for the body."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._in_body = False
        self._last_body = 0.0
        self._refusal: int | None = None

    # -- the head ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(HEADER_TIMEOUT, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete and not self._in_body:
            self._arm_head_timer()  # an answer is still going out; the next head waits
            return
        self._refuse(408, "the request head did not arrive in time")

    def data_received(self, data: bytes) -> None:
        if not self._in_body and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()  # a next request on a kept-alive connection
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm_head_timer()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refusal = 431
            raise ValueError("request head too large")  # httptools stops parsing

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        if self._refusal == 431:
            self._refuse(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes")
        else:
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        self._in_body = True
        self._last_body = self.loop.time()
        self._arm_body_timer()

    # -- the body ----------------------------------------------------------------------

    def _arm_body_timer(self, delay: float = BODY_TIMEOUT) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self.loop.call_later(delay, self._body_timed_out)

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # the server is not reading (back-pressure): not the client's delay
            self._last_body = now
            self._arm_body_timer()
            return
        idle = now - self._last_body
        if idle < BODY_TIMEOUT:  # a chunk came meanwhile: look again when it would be due
            self._arm_body_timer(max(BODY_TIMEOUT - idle, 0.05))
            return
        started = self.cycle is not None and self.cycle.response_started
        if started:
            self.transport.close()
        else:
            self._refuse(408, "the request body stalled")

    def on_body(self, body: bytes) -> None:
        self._last_body = self.loop.time()  # one store per chunk; the timer checks it
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        super().connection_lost(exc)

    # -- refusing ----------------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> None:
        if self.transport.is_closing():
            return
        body = message.encode()
        self.transport.write(
            b"HTTP/1.1 "
            + _STATUS[status]
            + b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            + b"content-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        self.transport.close()
