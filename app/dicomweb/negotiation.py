"""Content negotiation as data (DESIGN.md decision 5; PS3.18 8.7, RFC 9110 12.5.1).

Each resource offers a list of media types; the ``Accept`` header (with q-values and
wildcards) is matched against it. Nothing acceptable: 406 naming what is offered.
"""

from __future__ import annotations

import functools

from app.dicomweb.multipart import parse_media_type
from app.errors import NotAcceptable

#: QIDO-RS responses (PS3.18 10.6.3.2): DICOM JSON; plain JSON as an alias
SEARCH_MEDIA_TYPES = ("application/dicom+json", "application/json")


@functools.lru_cache(maxsize=256)
def parse_accept(header: str | None) -> tuple[tuple[str, dict[str, str], float], ...]:
    """Media ranges of an Accept header with their parameters and q-values. Cached: a
    viewer sends the same few headers thousands of times (callers must not modify the
    parameter dicts)."""
    if header is None or not header.strip():
        return (("*/*", {}, 1.0),)
    ranges = []
    for item in _split(header):
        media, params = parse_media_type(item)
        if not media:
            continue
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 0.0
        ranges.append((media, params, q))
    return tuple(ranges)


def _split(header: str) -> list[str]:
    """Split on commas outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in (part.strip() for part in parts) if p]


def _matches(media_range: str, offered: str) -> bool:
    if media_range in ("*/*", offered):
        return True
    kind, _, sub = media_range.partition("/")
    return sub == "*" and offered.startswith(kind + "/")


def choose(header: str | None, offered: tuple[str, ...]) -> str:
    """The offered media type the client prefers (highest q, then our order)."""
    best: tuple[float, int, str] | None = None
    for media, _, q in parse_accept(header):
        if q <= 0:
            continue
        for rank, candidate in enumerate(offered):
            if _matches(media, candidate):
                key = (q, -rank, candidate)
                if best is None or key > best:
                    best = key
    if best is None:
        raise NotAcceptable(
            f"none of the media types in Accept ({header}) can be produced here; "
            f"available: {', '.join(offered)}"
        )
    return best[2]
