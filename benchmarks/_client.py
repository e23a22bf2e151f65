"""A lean HTTP/1.1 client for benchmarks: keep-alive, prebuilt bodies, no parsing overhead.

Sending through a full-featured client (httpx) cost as much CPU as the server itself on
this 2-core machine; the benchmark would then measure the client.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BOUNDARY = "pictor-bench-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart_body(files: Iterable[bytes]) -> bytes:
    parts = [
        b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n"
        for f in files
    ]
    return b"".join(parts) + b"--" + BOUNDARY.encode() + b"--\r\n"


class Connection:
    """One keep-alive HTTP/1.1 connection.

    ``timeout`` (seconds, default none) bounds each whole request, from connecting to
    the last byte of the answer: a peer that died or hangs raises ``TimeoutError`` (the
    connection is then closed) instead of stalling the benchmark.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        authorization: str | None = None,
    ) -> None:
        """``authorization``: an ``Authorization`` header value sent with every request
        (e.g. ``Bearer <token>``); none by default."""
        self.host, self.port = host, port
        self.timeout = timeout
        self.extra = f"Authorization: {authorization}\r\n" if authorization else ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, limit=1 << 20
        )

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        if self.timeout is None:
            return await self._post(path, body, content_type)
        try:
            async with asyncio.timeout(self.timeout):
                return await self._post(path, body, content_type)
        except TimeoutError:
            await self.close()
            raise

    async def _post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        if self.writer is None:
            await self._connect()
        assert self.writer is not None
        self.writer.write(self._head(path, content_type, len(body)))
        view = memoryview(body)
        for i in range(0, len(body), 1 << 20):  # no copy of a large body into the transport
            self.writer.write(view[i : i + (1 << 20)])
            await self.writer.drain()
        return await self._response()

    async def post_stream(
        self, path: str, chunks: AsyncIterator[bytes], length: int, content_type: str
    ) -> tuple[int, bytes]:
        if self.writer is None:
            await self._connect()
        assert self.writer is not None
        self.writer.write(self._head(path, content_type, length))
        async for chunk in chunks:
            self.writer.write(chunk)
            await self.writer.drain()
        return await self._response()

    async def get(
        self, path: str, accept: str = "application/dicom+json"
    ) -> tuple[int, dict[str, str], bytes]:
        """GET ``path``; returns (status, headers with lower-case names, body).

        A keep-alive connection the server closed while idle is reopened once, as any
        HTTP/1.1 client does (only when nothing of the answer has arrived).
        """
        if self.timeout is None:
            return await self._get(path, accept)
        try:
            async with asyncio.timeout(self.timeout):
                return await self._get(path, accept)
        except TimeoutError:
            await self.close()
            raise

    async def _get(self, path: str, accept: str) -> tuple[int, dict[str, str], bytes]:
        head = (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept: {accept}\r\n"
            f"{self.extra}\r\n"
        ).encode()
        for attempt in (0, 1):
            reused = self.writer is not None
            if self.writer is None:
                await self._connect()
            assert self.writer is not None and self.reader is not None
            try:
                self.writer.write(head)
                await self.writer.drain()
                status_line = await self.reader.readline()
            except (ConnectionError, OSError):
                status_line = b""
            if status_line:
                break
            await self.close()
            if not reused or attempt:
                raise ConnectionError(f"GET {path}: connection closed before the answer")
        status, headers, body = await self._rest_of_response(status_line)
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body

    async def _rest_of_response(self, status_line: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await self.reader.readline()) not in (b"\r\n", b""):
                        pass  # trailers
                    break
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(chunks)
        else:
            length = int(headers.get("content-length", "0"))
            body = await self.reader.readexactly(length) if length else b""
        return status, headers, body

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        """Any method (DELETE, POST, ...) with a small body; (status, body)."""
        if self.writer is None:
            await self._connect()
        assert self.writer is not None
        self.writer.write(self._head(path, content_type, len(body), method) + body)
        await self.writer.drain()
        return await self._response()

    def _head(self, path: str, content_type: str, length: int, method: str = "POST") -> bytes:
        return (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
            f"Accept: application/dicom+json\r\n{self.extra}\r\n"
        ).encode()

    async def _response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        status_line = await self.reader.readline()
        if not status_line:
            await self.close()
            raise ConnectionError("connection closed before the answer")
        status, headers, body = await self._rest_of_response(status_line)  # also chunked
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = None


async def stow(
    port: int, files: list[bytes], authorization: str | None = None, batch: int = 20
) -> None:
    """Store ``files`` over STOW-RS, ``batch`` per request, on one connection; any answer
    but 200 is an error."""
    conn = Connection("127.0.0.1", port, authorization=authorization)
    try:
        for i in range(0, len(files), batch):
            status, body = await conn.post(
                "/dicom-web/studies", multipart_body(files[i : i + batch]), MULTIPART
            )
            if status != 200:
                raise RuntimeError(f"STOW answered {status}: {body[:300]!r}")
    finally:
        await conn.close()
