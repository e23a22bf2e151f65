"""Public URLs of DICOMweb resources (DESIGN.md decision 9).

The base URL is, in order: the configured ``public_base_url``; the proxy's
``Forwarded`` (RFC 7239) or ``X-Forwarded-Proto/Host/Prefix`` headers; the request's
own scheme and host. Resource paths follow PS3.18 10.4 (Table 10.4.1-1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DICOMWEB_PREFIX = "/dicom-web"


def _forwarded(value: str) -> dict[str, str]:
    first = value.split(",")[0]
    out = {}
    for pair in first.split(";"):
        key, _, val = pair.strip().partition("=")
        out[key.strip().lower()] = val.strip().strip('"')
    return out


def base_url(configured: str, headers: Mapping[str, str], scheme: str, host: str) -> str:
    """The DICOMweb root URL as clients should see it (no trailing slash)."""
    if configured:
        return configured
    fwd = _forwarded(headers["forwarded"]) if "forwarded" in headers else {}
    proto = fwd.get("proto") or headers.get("x-forwarded-proto", "").split(",")[0].strip() or scheme
    fhost = fwd.get("host") or headers.get("x-forwarded-host", "").split(",")[0].strip() or host
    prefix = headers.get("x-forwarded-prefix", "").split(",")[0].strip().rstrip("/")
    return f"{proto}://{fhost}{prefix}{DICOMWEB_PREFIX}"


def scope_base_url(configured: str, scope: Any) -> str:
    """:func:`base_url` for a raw ASGI request (the pure ASGI fast paths); the first of
    repeated headers counts, as in litestar's ``request.headers``."""
    if configured:
        return configured
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    server = scope.get("server") or ("", "")
    host = headers.get("host") or f"{server[0]}:{server[1]}"
    return base_url(configured, headers, scope.get("scheme", "http"), host)


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def instance_url(base: str, study: str, series: str, sop: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{sop}"


def request_base_url(configured: str, headers: Mapping[str, str], url: object) -> str:
    """:func:`base_url` for a request (litestar ``request.url``)."""
    scheme = getattr(url, "scheme", "http")
    host = headers.get("host") or f"{getattr(url, 'hostname', '')}:{getattr(url, 'port', '')}"
    return base_url(configured, headers, scheme, host)
