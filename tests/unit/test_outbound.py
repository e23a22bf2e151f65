"""The archive's outbound HTTP client (webhook deliveries) against receivers on loopback
that answer well, oddly or with hostility: real sockets, no mocks."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from app.services.outbound import Client, OutboundError

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


async def _streamed(answer: Answer, bodies: list[tuple[list[bytes], int]]) -> list[object]:
    """``post_stream`` of each (chunks, declared length) to one receiver; what came back
    (status and body, or the error) and how many connections it took."""
    connections = 0
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                received.append(await _request(reader))
                await answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/dicom-web/studies"
    client = Client(2.0)
    out: list[object] = []
    try:
        for parts, length in bodies:
            try:
                made = functools.partial(chunks, parts)
                out.append(await client.post_stream(url, made, length, {"X-A": "1"}))
            except OutboundError as exc:
                out.append(str(exc))
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


def test_a_streamed_body_arrives_whole_and_the_answer_comes_back() -> None:
    parts = [b"a" * 70000, b"b" * 5, b"c" * 300000]
    out = asyncio.run(_streamed(_stow_answer(b'{"x": 1}'), [(parts, 370005), (parts, 370005)]))
    assert out[0] == out[1] == (202, b'{"x": 1}')
    assert out[2] == "connections=1"  # kept alive for the next batch
    received = out[3]
    assert isinstance(received, list) and len(received) == 2
    head, _, body = received[0].partition(b"\r\n\r\n")
    assert body == b"".join(parts) and b"Content-Length: 370005" in head and b"X-A: 1" in head


def test_a_body_shorter_than_declared_and_a_huge_answer_are_errors() -> None:
    out = asyncio.run(_streamed(_stow_answer(b"{}"), [([b"abc"], 10)]))
    assert "not the 10 declared" in str(out[0])
    huge = asyncio.run(_streamed(_stow_answer(b"x" * (2 << 20)), [([b"abc"], 3)]))
    assert "larger than 1 MiB" in str(huge[0])


def test_a_kept_connection_the_receiver_closed_is_not_used() -> None:
    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario() -> list[object]:
        return await _streamed(answer_and_close, [([b"abc"], 3)] * 3)

    out = asyncio.run(scenario())
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
            client.post_stream(url, functools.partial(_once, b"x"), 1, {}),
        ):
            with pytest.raises(OutboundError) as raised:
                await call
            out.append(str(raised.value))
        await client.close()
        return out

    assert all("the URL has" in m for m in asyncio.run(both()))


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
