"""A small HTTP/1.1 client for what the archive sends out (webhook deliveries, route
forwards over STOW-RS): POST a body, read the answer, keep the connection for the next
one.

Why not httpx (which litestar brings): a delivery is one small POST, and httpx spends
about 1.5 ms of CPU on each on the reference machine, against 0.06 ms for the same
request over a kept-alive asyncio stream (``benchmarks/events.py`` measures what
webhooks cost ingest). This client does only that: ``http`` and ``https`` (the default
TLS context: certificates verified), ``Content-Length``, chunked and close-delimited
answers, keep-alive, and bounds on everything a receiver controls (time, header size,
body size: a body past 1 MiB is not read, the connection is dropped instead).

A route's forward is mostly stored files. Over plain HTTP they go from the file to the
socket with ``sendfile(2)``, in an I/O thread that also waits for the socket to take
more: no copy through the process and one thread trip per request, where reading each
file into memory and writing it out again cost most of the background process's CPU
(``benchmarks/events.py``). Over TLS they are read in chunks and go through the
transport, which encrypts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO
from urllib.parse import urlsplit

MAX_HEAD = 65536
MAX_BODY = 1 << 20
#: kept-alive connections per host
KEEP = 8
#: how much of a file is read at once where it cannot be sent with sendfile(2)
CHUNK = 1 << 20
#: how often a sending thread looks whether its request was given up
_POLL_MS = 200


class OutboundError(Exception):
    """The request did not get an answer; the message says why."""


def spelling_problem(url: str) -> str | None:
    """What makes ``url`` unfit for a request line, or None: a space or a control
    character (which would break or forge the request line; urlsplit quietly drops
    CR, LF and TAB), or a port that is not a number from 1 to 65535."""
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return "has a space or a control character"
    try:
        port = urlsplit(url).port
    except ValueError:
        return "has a port that is not a number from 1 to 65535"
    if port == 0:
        return "has a port that is not a number from 1 to 65535"
    return None


@dataclass(frozen=True)
class Blob:
    """A stored file as a piece of a request body: ``open()`` gives it to read from
    the start (app.storage's ``open_blob``), ``size`` is the bytes it must have."""

    open: Callable[[], IO[bytes]]
    size: int


class SourceError(OutboundError):
    """A stored file of the body could not be opened or read."""


def _source(opener: Callable[[], IO[bytes]]) -> tuple[IO[bytes], int]:
    """The opened file and its descriptor (-1: an object store's stream, read through)."""
    try:
        f = opener()
    except Exception as exc:  # noqa: BLE001 - any store's error: the request is not sent
        raise SourceError(f"a stored file could not be opened: {exc}"[:200]) from exc
    try:
        return f, f.fileno()
    except (AttributeError, OSError):
        return f, -1


def _read(f: IO[bytes], size: int) -> bytes:
    try:
        return f.read(size)
    except Exception as exc:  # noqa: BLE001
        raise SourceError(f"a stored file could not be read: {exc}"[:200]) from exc


def _send_all(
    fd: int, pieces: Sequence[bytes | Blob], deadline: float, stop: threading.Event
) -> None:
    """Write ``pieces`` to the non-blocking socket ``fd`` (a duplicate, closed here):
    files with sendfile(2) where they have a descriptor, else read in chunks. Raises
    TimeoutError past ``deadline``, InterruptedError once ``stop`` is set, ValueError
    when a file has fewer bytes than its piece says, OSError from the socket."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)

    def writable() -> None:
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if poller.poll(min(_POLL_MS, left * 1000)):
                return  # writable, or an error the next write raises
        raise InterruptedError

    def write(data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                writable()

    try:
        for piece in pieces:
            if not isinstance(piece, Blob):
                write(piece)
                continue
            sent = 0
            f, source = _source(piece.open)
            with f:
                while sent < piece.size:
                    if source < 0:
                        chunk = _read(f, min(CHUNK, piece.size - sent))
                        if not chunk:
                            break
                        write(chunk)
                        sent += len(chunk)
                        continue
                    try:
                        n = os.sendfile(fd, source, sent, piece.size - sent)
                    except BlockingIOError:
                        writable()
                        continue
                    if n == 0:
                        break  # the file ends early
                    sent += n
            if sent != piece.size:
                raise ValueError(f"a stored file was {sent} bytes, not the {piece.size} declared")
    finally:
        os.close(fd)


async def _write_in_thread(fd: int, pieces: Sequence[bytes | Blob], timeout: float) -> None:
    """:func:`_send_all` in an I/O thread, on a duplicate of ``fd``: should the request
    be given up and the connection closed, the thread's descriptor still names the same
    socket (never one opened meanwhile under the same number) until it stops."""
    stop = threading.Event()
    own = os.dup(fd)
    try:
        work = asyncio.get_running_loop().run_in_executor(
            None, _send_all, own, pieces, time.monotonic() + timeout, stop
        )
    except BaseException:
        os.close(own)
        raise
    # given up, the thread's end is nobody's to wait for: its error is dropped here
    work.add_done_callback(lambda done: done.cancelled() or done.exception())
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()  # the thread stops within _POLL_MS and closes its descriptor
        raise


async def _write_through(writer: asyncio.StreamWriter, pieces: Sequence[bytes | Blob]) -> None:
    loop = asyncio.get_running_loop()
    for piece in pieces:
        if not isinstance(piece, Blob):
            writer.write(piece)
            await writer.drain()
            continue
        f, _ = await loop.run_in_executor(None, _source, piece.open)
        try:
            sent = 0
            while sent < piece.size:
                chunk = await loop.run_in_executor(None, _read, f, min(CHUNK, piece.size - sent))
                if not chunk:
                    raise ValueError(
                        f"a stored file was {sent} bytes, not the {piece.size} declared"
                    )
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
        finally:
            f.close()


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Client:
    def __init__(
        self, timeout: float, user_agent: str = "pictor", tls: ssl.SSLContext | None = None
    ) -> None:
        """``tls``: how HTTPS servers are verified (default: the system's CAs)."""
        self.timeout = timeout
        self.user_agent = user_agent
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._tls = tls

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], method: str = "POST"
    ) -> int:
        """The answer's status code; OutboundError when there is none in time."""
        try:
            return await asyncio.wait_for(self._post(url, body, headers, method), self.timeout)
        except TimeoutError as exc:
            raise OutboundError(f"no answer within {self.timeout:g} s") from exc

    async def _post(self, url: str, body: bytes, headers: dict[str, str], method: str) -> int:
        key, head = self._head(url, headers, len(body), method)
        request = head + body
        idle = self._idle.get(key)
        conn = idle.pop() if idle else None
        if conn is not None:  # a kept connection may have been closed by the receiver
            try:
                return await self._exchange(key, conn, request)
            except (OSError, asyncio.IncompleteReadError, ValueError, OutboundError):
                conn.close()
        conn = await self._connect(key)
        try:
            return await self._exchange(key, conn, request)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            conn.close()
            raise OutboundError(f"{type(exc).__name__}: {exc}"[:200]) from exc

    async def _connect(self, key: tuple[str, str, int]) -> _Conn:
        scheme, host, port = key
        tls = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=tls, limit=MAX_HEAD)
        except OSError as exc:
            raise OutboundError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        return _Conn(reader, writer)

    async def post_pieces(
        self, url: str, pieces: Sequence[bytes | Blob], headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """POST the concatenation of ``pieces`` (bytes, and stored files read as they
        are sent: memory holds no whole file); the answer's status and body (at most
        1 MiB, else an OutboundError). On a kept connection the receiver had closed
        meanwhile, the request goes again on a new one."""
        try:
            return await asyncio.wait_for(self._post_pieces(url, pieces, headers), self.timeout)
        except TimeoutError as exc:
            raise OutboundError(f"no answer within {self.timeout:g} s") from exc

    async def _post_pieces(
        self, url: str, pieces: Sequence[bytes | Blob], headers: dict[str, str]
    ) -> tuple[int, bytes]:
        length = sum(p.size if isinstance(p, Blob) else len(p) for p in pieces)
        key, head = self._head(url, headers, length)
        idle = self._idle.get(key)
        conn = idle.pop() if idle else None
        if conn is not None and not (conn.reader.at_eof() or conn.writer.is_closing()):
            try:
                return await self._pieces(key, conn, [head, *pieces])
            except (OSError, asyncio.IncompleteReadError):
                pass  # closed by the receiver while it was kept: once more, anew
            except ValueError as exc:
                raise OutboundError(str(exc)[:200]) from exc
        elif conn is not None:
            conn.close()
        try:
            return await self._pieces(key, await self._connect(key), [head, *pieces])
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise OutboundError(f"{type(exc).__name__}: {exc}"[:200]) from exc

    async def _pieces(
        self, key: tuple[str, str, int], conn: _Conn, pieces: list[bytes | Blob]
    ) -> tuple[int, bytes]:
        try:
            sock = conn.writer.get_extra_info("socket")
            if (
                key[0] == "http"
                and sock is not None
                and not conn.writer.transport.get_write_buffer_size()
            ):
                await _write_in_thread(sock.fileno(), pieces, self.timeout)
            else:  # TLS: through the transport, which encrypts
                await _write_through(conn.writer, pieces)
            status, found = await self._answer_head(conn)
            body, keep = await self._read_body(conn, found, status)
        except BaseException:
            conn.close()
            raise
        if body is None:
            conn.close()
            raise OutboundError(f"HTTP {status} with an answer larger than 1 MiB")
        self._keep(key, conn, keep and found.get("connection", "").lower() != "close")
        return status, body

    def _head(
        self, url: str, headers: dict[str, str], length: int, method: str = "POST"
    ) -> tuple[tuple[str, str, int], bytes]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OutboundError(f"not an http(s) URL: {url[:100]}")
        if (problem := spelling_problem(url)) is not None:
            raise OutboundError(f"the URL {problem}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"User-Agent: {self.user_agent}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {length}")
        return (parts.scheme, parts.hostname, port), ("\r\n".join(lines) + "\r\n\r\n").encode(
            "latin-1"
        )

    def _keep(self, key: tuple[str, str, int], conn: _Conn, keep: bool) -> None:
        if keep:
            idle = self._idle.setdefault(key, [])
            if len(idle) < KEEP:
                idle.append(conn)
                return
        conn.close()

    async def _answer_head(self, conn: _Conn) -> tuple[int, dict[str, str]]:
        try:
            head = await conn.reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise OutboundError("the answer's head is larger than 64 KiB") from exc
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
            raise OutboundError(f"not an HTTP answer: {status_line[:80]!r}")
        found: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            if name:
                found[name.strip().lower()] = value.strip()
        return int(fields[1]), found

    @staticmethod
    async def _read_body(
        conn: _Conn, headers: dict[str, str], status: int
    ) -> tuple[bytes | None, bool]:
        """The answer's body (None: over 1 MiB, not read) and whether the connection
        can be used again."""
        if status in (204, 304) or 100 <= status < 200:
            return b"", True
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            total = 0
            while True:
                size_line = await conn.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                total += size
                if total > MAX_BODY:
                    return None, False
                parts.append((await conn.reader.readexactly(size + 2))[:-2])
                if size == 0:
                    return b"".join(parts), True
        length = headers.get("content-length")
        if length is not None and length.isdigit():
            if int(length) > MAX_BODY:
                return None, False
            return await conn.reader.readexactly(int(length)), True
        return None, False  # delimited by the close: not read, not kept

    async def _exchange(self, key: tuple[str, str, int], conn: _Conn, request: bytes) -> int:
        conn.writer.write(request)
        await conn.writer.drain()
        try:
            status, found = await self._answer_head(conn)
            _, keep = await self._read_body(conn, found, status)
        except OutboundError:
            conn.close()
            raise
        self._keep(key, conn, keep and found.get("connection", "").lower() != "close")
        return status

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
