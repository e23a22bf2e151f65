"""Small pieces shared by the pure ASGI layers (CORS, access, metrics, the frames fast
path) and the framework's error answers: no framework here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from app.errors import PictorError

Send = Callable[[Any], Awaitable[None]]


def header(scope: Any, name: bytes) -> str | None:
    """The first value of request header ``name`` (lower case, as ASGI gives names)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def quoted(text: str, limit: int = 300) -> str:
    """``text`` as the inside of an HTTP quoted-string (RFC 9110 5.6.4): visible ASCII,
    control characters as spaces, other characters as escapes, quotes and backslashes
    escaped, cut at ``limit`` characters."""
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else " " for ch in text)
    clean = text.encode("ascii", "backslashreplace").decode("ascii")
    return clean.replace("\\", "\\\\").replace('"', '\\"')[:limit]


def warning_header(texts: list[str]) -> str:
    """``Warning: 299 pictor "..."`` values (RFC 7234 5.5, PS3.18 8.4.4), at most ten.
    The texts may quote a client's own (non-ASCII) input: see :func:`quoted`."""
    return ", ".join(f'299 pictor "{quoted(text)}"' for text in texts[:10])


def error_body(status: int, message: str) -> bytes:
    """The JSON body of every error Pictor answers: ``{"status": ..., "message": ...}``."""
    return msgspec.json.encode({"status": status, "message": message})


async def send_whole(
    send: Send, status: int, body: bytes | bytearray, headers: list[tuple[bytes, bytes]]
) -> None:
    """One complete answer with a Content-Length, in two messages."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class StatusRecorder:
    """Wraps ``send`` to remember the answer's status (500 until one starts; 101 for a
    WebSocket that was accepted)."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 500

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "websocket.accept":
            self.status = 101
        await self.send(message)


class HandshakeSend:
    """``send`` of a WebSocket scope for layers that answer HTTP: an answer given before
    the handshake is accepted goes out as the ASGI WebSocket Denial Response (the
    status, headers and body as given); a server without that extension is sent a close,
    which it answers 403. WebSocket messages pass unchanged."""

    __slots__ = ("denial", "send")

    def __init__(self, scope: Any, send: Send) -> None:
        self.send = send
        self.denial = "websocket.http.response" in (scope.get("extensions") or {})

    async def __call__(self, message: Any) -> None:
        kind = message["type"]
        if kind.startswith("http.response."):
            if self.denial:
                await self.send({**message, "type": "websocket." + kind})
            elif kind == "http.response.start":
                await self.send({"type": "websocket.close", "code": 1008})
            return
        await self.send(message)


def error_answer(exc: PictorError) -> tuple[int, list[tuple[str, str]], bytes]:
    """The one rendering of a domain error as HTTP (status, headers, body): the JSON
    body, its message in a ``Warning: 299`` header (PS3.18 8.4.4) and the headers the
    error calls for. The framework's handler (app.dicomweb.errors) and the fast paths
    both answer through this."""
    headers = [
        ("content-type", "application/json"),
        ("warning", warning_header([exc.message])),
        *((k.lower(), v) for k, v in exc.headers.items()),
    ]
    return exc.status_code, headers, error_body(exc.status_code, exc.message)


async def send_error(send: Send, exc: PictorError) -> None:
    status, headers, body = error_answer(exc)
    await send_whole(send, status, body, [(k.encode(), v.encode("latin-1")) for k, v in headers])
