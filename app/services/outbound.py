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
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

MAX_HEAD = 65536
MAX_BODY = 1 << 20
#: kept-alive connections per host
KEEP = 8


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


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Client:
    def __init__(self, timeout: float, user_agent: str = "pictor") -> None:
        self.timeout = timeout
        self.user_agent = user_agent
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._tls: ssl.SSLContext | None = None

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

    async def post_stream(
        self,
        url: str,
        chunks: Callable[[], AsyncIterator[bytes]],
        length: int,
        headers: dict[str, str],
    ) -> tuple[int, bytes]:
        """POST ``length`` bytes that ``chunks()`` yields (written as they come: memory
        holds one chunk); the answer's status and body (at most 1 MiB, else an
        OutboundError). On a kept connection the receiver had closed meanwhile, the
        request goes again on a new one, with the body made anew by ``chunks()``."""
        try:
            return await asyncio.wait_for(
                self._post_stream(url, chunks, length, headers), self.timeout
            )
        except TimeoutError as exc:
            raise OutboundError(f"no answer within {self.timeout:g} s") from exc

    async def _post_stream(
        self,
        url: str,
        chunks: Callable[[], AsyncIterator[bytes]],
        length: int,
        headers: dict[str, str],
    ) -> tuple[int, bytes]:
        key, head = self._head(url, headers, length)
        idle = self._idle.get(key)
        conn = idle.pop() if idle else None
        if conn is not None and not (conn.reader.at_eof() or conn.writer.is_closing()):
            try:
                return await self._stream(key, conn, head, chunks(), length)
            except (OSError, asyncio.IncompleteReadError):
                pass  # closed by the receiver while it was kept: once more, anew
            except ValueError as exc:
                raise OutboundError(str(exc)[:200]) from exc
        elif conn is not None:
            conn.close()
        try:
            return await self._stream(key, await self._connect(key), head, chunks(), length)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise OutboundError(f"{type(exc).__name__}: {exc}"[:200]) from exc

    async def _stream(
        self,
        key: tuple[str, str, int],
        conn: _Conn,
        head: bytes,
        chunks: AsyncIterator[bytes],
        length: int,
    ) -> tuple[int, bytes]:
        try:
            conn.writer.write(head)
            sent = 0
            async for chunk in chunks:
                sent += len(chunk)
                conn.writer.write(chunk)
                await conn.writer.drain()
            if sent != length:
                raise ValueError(f"the body was {sent} bytes, not the {length} declared")
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
