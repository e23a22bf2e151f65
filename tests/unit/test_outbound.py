"""The archive's outbound HTTP client (webhook deliveries) against receivers on loopback
that answer well, oddly or with hostility: real sockets, no mocks."""

from __future__ import annotations

import asyncio
import functools
import io
import os
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import pytest
import uvloop
from tls import self_signed

from app.services.outbound import Blob, Client, OutboundError, SourceError

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


async def _with_server(answer: Answer, client: Client, times: int = 1) -> list[int | str]:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    results: list[int | str] = []
    try:
        for _ in range(times):
            try:
                results.append(await client.post(f"http://127.0.0.1:{port}/hook", b"{}", {}))
            except OutboundError as exc:
                results.append(str(exc))
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    results.append(f"connections={connections}")
    return results


def run(answer: Answer, times: int = 1, timeout: float = 2.0) -> list[int | str]:
    return asyncio.run(_with_server(answer, Client(timeout), times))


def _replying(*responses: bytes) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await _request(reader)
            writer.write(response)
            await writer.drain()
        await reader.read()  # until the client closes

    return answer


def test_keep_alive_with_content_length_and_chunked_bodies() -> None:
    got = run(
        _replying(
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno",
        ),
        times=4,
    )
    assert got == [204, 200, 202, 500, "connections=1"]  # one connection for all four


def test_a_closed_or_close_delimited_answer_opens_a_new_connection() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nbody until close")
        await writer.drain()

    assert run(answer, times=2) == [200, 200, "connections=2"]


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 abc\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", "64 KiB"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "ValueError"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "IncompleteReadError"),
    ],
)
def test_hostile_answers_are_errors_not_crashes(response: bytes, message: str) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(response)
        await writer.drain()
        writer.close()

    got = run(answer)
    assert isinstance(got[0], str) and message in got[0], got


def test_a_body_past_the_bound_is_not_read_and_the_connection_not_kept() -> None:
    huge = b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 1000
    assert run(_replying(huge, huge), times=2) == [200, 200, "connections=2"]


def test_a_receiver_that_never_answers_times_out() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    got = run(answer, timeout=0.5)
    assert got[0] == "no answer within 0.5 s"


def test_nobody_listening_and_bad_urls() -> None:
    async def go() -> list[str]:
        client = Client(1.0)
        out = []
        for url in ("http://127.0.0.1:1/x", "ftp://127.0.0.1/x", "http:///x"):
            with pytest.raises(OutboundError) as caught:
                await client.post(url, b"", {})
            out.append(str(caught.value))
        await client.close()
        return out

    refused, ftp, hostless = asyncio.run(go())
    assert refused.startswith("cannot connect to 127.0.0.1:1")
    assert "not an http(s) URL" in ftp and "not an http(s) URL" in hostless


Piece = bytes | Blob


def _file(directory: Path, name: str, data: bytes) -> Blob:
    path = directory / name
    path.write_bytes(data)
    return Blob(functools.partial(open, path, "rb", buffering=0), len(data))


def _stream(data: bytes) -> Blob:
    """A stored file without a descriptor (as an object store's stream is)."""
    return Blob(lambda: io.BytesIO(data), len(data))


async def _sent(
    answer: Answer,
    bodies: list[list[Piece]],
    tls: tuple[Path, Path] | None = None,
    timeout: float = 2.0,
) -> list[object]:
    """``post_pieces`` of each body to one receiver (over TLS with ``tls``'s certificate
    and key); what came back (status and body, or the error), how many connections it
    took, and what the receiver read."""
    connections = 0
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                received.append(await _request(reader))
                await answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    serving = client_tls = None
    if tls is not None:
        serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        serving.load_cert_chain(*tls)
        client_tls = ssl.create_default_context(cafile=str(tls[0]))
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=serving)
    scheme = "https" if tls else "http"
    url = f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}/dicom-web/studies"
    client = Client(timeout, tls=client_tls)
    out: list[object] = []
    try:
        for pieces in bodies:
            try:
                out.append(await client.post_pieces(url, pieces, {"X-A": "1"}))
            except OutboundError as exc:
                out.append(exc)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    out.append(f"connections={connections}")
    out.append(received)
    return out


def _stow_answer(body: bytes) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    return answer


def _loop(name: str) -> Callable[[Awaitable[object]], object]:
    return uvloop.run if name == "uvloop" else asyncio.run  # type: ignore[return-value]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("over", ["http", "https"])
def test_bytes_and_stored_files_arrive_whole_and_the_answer_comes_back(
    tmp_path: Path, loop: str, over: str
) -> None:
    """Files larger than what a socket takes at once (the sending thread waits for it
    to take more), a file without a descriptor, and an empty one, between bytes."""
    big = os.urandom(9 << 20)
    small = b"c" * 300000
    pieces: list[Piece] = [
        b"head",
        _file(tmp_path, "big", big),
        b"b" * 5,
        _stream(small),
        _file(tmp_path, "empty", b""),
        b"tail",
    ]
    tls = self_signed(tmp_path) if over == "https" else None
    out = _loop(loop)(_sent(_stow_answer(b'{"x": 1}'), [pieces, pieces], tls))
    assert isinstance(out, list)
    assert out[0] == out[1] == (202, b'{"x": 1}')
    assert out[2] == "connections=1"  # kept alive for the next batch
    received = out[3]
    assert isinstance(received, list) and len(received) == 2
    expected = b"head" + big + b"bbbbb" + small + b"tail"
    for request in received:
        head, _, body = request.partition(b"\r\n\r\n")
        assert body == expected
        assert b"Content-Length: %d" % len(expected) in head and b"X-A: 1" in head


@pytest.mark.parametrize("over", ["http", "https"])
def test_a_file_shorter_than_declared_or_unreadable_and_a_huge_answer_are_errors(
    tmp_path: Path, over: str
) -> None:
    tls = self_signed(tmp_path) if over == "https" else None
    short = Blob(_file(tmp_path, "short", b"abc").open, 10)
    gone = Blob(functools.partial(open, tmp_path / "absent", "rb"), 10)
    out = asyncio.run(_sent(_stow_answer(b"{}"), [[b"x", short], [b"x", gone], [b"ok"]], tls))
    assert "3 bytes, not the 10 declared" in str(out[0])
    # not taken for a receiver that closed a kept connection: no second try
    assert isinstance(out[1], SourceError) and "could not be opened" in str(out[1])
    assert out[2] == (202, b"{}")  # each failed request's connection was closed
    assert out[3] == "connections=3"
    huge = asyncio.run(_sent(_stow_answer(b"x" * (2 << 20)), [[b"abc"]], tls))
    assert "larger than 1 MiB" in str(huge[0])


def test_a_receiver_that_stops_reading_times_out_and_the_sending_thread_ends(
    tmp_path: Path,
) -> None:
    """The request is given up at the timeout; the I/O thread stops soon after and
    closes its duplicate of the socket: no thread and no descriptor is left behind."""

    async def scenario() -> tuple[str, float, int, int]:
        # a receiver that reads nothing: the socket fills and stays full
        server = await asyncio.start_server(lambda r, w: asyncio.sleep(30), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        body = [_file(tmp_path, "f", b"z" * (64 << 20))]
        client = Client(0.5)
        started = time.monotonic()
        try:
            with pytest.raises(OutboundError) as raised:
                await client.post_pieces(f"http://127.0.0.1:{port}/x", body, {})
            took = time.monotonic() - started
            await client.close()
            for _ in range(40):  # the thread notices within its poll interval
                if _client_sockets(port) == 0 and _sender_threads() == 0:
                    break
                await asyncio.sleep(0.05)
            return str(raised.value), took, _client_sockets(port), _sender_threads()
        finally:
            server.close()

    error, took, sockets, busy = asyncio.run(scenario())
    assert "no answer within 0.5 s" in error
    assert took < 2.0
    assert sockets == 0 and busy == 0


def _client_sockets(port: int) -> int:
    """This process's descriptors of connections to ``port``."""
    return sum(
        1 for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port
    )


def _sender_threads() -> int:
    """I/O threads still inside a request body's sending."""
    count = 0
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code.co_name == "_send_all":
                count += 1
                break
            frame = frame.f_back  # type: ignore[assignment]
    return count


def test_a_kept_connection_the_receiver_closed_is_not_used() -> None:
    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    out = asyncio.run(_sent(answer_and_close, [[b"abc"]] * 3))
    assert out[:3] == [(200, b"")] * 3 and out[3] == "connections=3"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999/x", "http://127.0.0.1:0/x", "http://127.0.0.1/a b"]
)
def test_urls_that_would_break_the_request_line_are_errors(url: str) -> None:
    """A URL stored before its spelling was checked fails as a delivery that can be
    retried and given up, not as an exception that kills the sending task."""

    async def both() -> list[str]:
        client = Client(1.0)
        out = []
        for call in (
            client.post(url, b"{}", {}),
            client.post_pieces(url, [b"x"], {}),
        ):
            with pytest.raises(OutboundError) as raised:
                await call
            out.append(str(raised.value))
        await client.close()
        return out

    assert all("the URL has" in m for m in asyncio.run(both()))
