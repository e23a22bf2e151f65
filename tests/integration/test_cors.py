"""CORS (WHATWG Fetch standard, 3.2 "CORS protocol") on a real server: preflights for
every kind of route, headers on successful and error answers, nothing for an origin not
allowed, nothing at all by default. The browser side is in tests/browser/test_ohif.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import ConfigError, load_settings
from app.dicomweb.cors import ALLOWED_REQUEST_HEADERS

from conftest import Pictor

ALLOWED = "http://viewer.example.org:3000"
OTHER = "http://evil.example.net"
STUDY = "1.2.3.4"
ROUTES = [
    "/dicom-web/studies",
    f"/dicom-web/studies/{STUDY}",
    f"/dicom-web/studies/{STUDY}/series",
    f"/dicom-web/studies/{STUDY}/metadata",
    f"/dicom-web/studies/{STUDY}/series/1.2/instances/1.2.3/frames/1",
    f"/dicom-web/studies/{STUDY}/series/1.2/instances/1.2.3/thumbnail",
    "/viewer/app-config.js",
    "/IHEInvokeImageDisplay",
]


@pytest.fixture(scope="module")
def cors_server(
    tmp_path_factory: pytest.TempPathFactory, pictor_module: Pictor
) -> Iterator[httpx.Client]:
    data = tmp_path_factory.mktemp("cors") / "data"
    process = pictor_module(
        data, workers=1, env={"PICTOR_CORS_ORIGINS": f"{ALLOWED}, http://127.0.0.1:9"}
    )
    with httpx.Client(base_url=process.base, timeout=30) as client:
        yield client


def preflight(client: httpx.Client, path: str, origin: str, method: str = "GET") -> httpx.Response:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "accept, authorization",
        },
    )


@pytest.mark.parametrize("path", ROUTES)
def test_preflight_allowed_origin_every_route(cors_server: httpx.Client, path: str) -> None:
    r = preflight(cors_server, path, ALLOWED)
    assert r.status_code in (200, 204)
    assert r.headers["access-control-allow-origin"] == ALLOWED
    methods = {m.strip() for m in r.headers["access-control-allow-methods"].split(",")}
    assert "GET" in methods and "OPTIONS" not in methods
    allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"accept", "authorization", "content-type"} <= allowed
    assert int(r.headers["access-control-max-age"]) > 0
    assert "origin" in r.headers["vary"].lower()
    assert "access-control-allow-credentials" not in r.headers


def test_preflight_names_the_methods_of_the_resource(cors_server: httpx.Client) -> None:
    """STOW-RS (PS3.18 10.5) is a POST on /studies; metadata is GET only."""
    stow = preflight(cors_server, "/dicom-web/studies", ALLOWED, "POST")
    assert {"GET", "POST"} <= set(
        stow.headers["access-control-allow-methods"].replace(" ", "").split(",")
    )
    meta = preflight(cors_server, f"/dicom-web/studies/{STUDY}/metadata", ALLOWED)
    assert "POST" not in meta.headers["access-control-allow-methods"]


def test_preflight_other_origin_gets_no_permission(cors_server: httpx.Client) -> None:
    r = preflight(cors_server, "/dicom-web/studies", OTHER)
    assert not any(h.startswith("access-control-") for h in r.headers)


def test_preflight_unknown_path_fails(cors_server: httpx.Client) -> None:
    assert preflight(cors_server, "/dicom-web/nothing-here", ALLOWED).status_code == 404


def test_simple_request_headers(cors_server: httpx.Client) -> None:
    r = cors_server.get("/dicom-web/studies", headers={"Origin": ALLOWED})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"warning", "etag", "content-length", "content-range", "location"} <= exposed
    assert "origin" in r.headers["vary"].lower()
    # a default port written out in the setting still matches the browser's Origin
    assert (
        cors_server.get("/health", headers={"Origin": "http://127.0.0.1:9"}).headers[
            "access-control-allow-origin"
        ]
        == "http://127.0.0.1:9"
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/dicom-web/studies?limit=nope", 400),  # the QIDO parser's BadRequest
        (f"/dicom-web/studies/{STUDY}/metadata", 404),  # NotFound from the index
        ("/dicom-web/no-such-resource", 404),  # litestar's own routing error
        ("/IHEInvokeImageDisplay?requestType=NOPE", 400),  # an HTML error page
    ],
)
def test_error_answers_carry_cors_headers(
    cors_server: httpx.Client, path: str, status: int
) -> None:
    r = cors_server.get(path, headers={"Origin": ALLOWED, "Accept": "application/dicom+json"})
    assert r.status_code == status
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert "warning" in r.headers["access-control-expose-headers"].lower()


def test_existing_vary_is_kept(cors_server: httpx.Client) -> None:
    """Vary is extended, not replaced (RFC 9110 12.5.5)."""
    r = cors_server.get("/viewer/", headers={"Origin": OTHER})
    assert "origin" in r.headers["vary"].lower()
    assert "access-control-allow-origin" not in r.headers


def test_no_cors_by_default(tmp_path: Path, pictor: Pictor) -> None:
    process = pictor(tmp_path / "data", workers=1)
    with httpx.Client(base_url=process.base, timeout=30) as client:
        r = preflight(client, "/dicom-web/studies", ALLOWED)
        assert not any(h.startswith("access-control-") for h in r.headers)
        r = client.get("/dicom-web/studies", headers={"Origin": ALLOWED})
        assert r.status_code == 200
        assert not any(h.startswith("access-control-") for h in r.headers)


def test_any_origin_only_when_asked(tmp_path: Path, pictor: Pictor) -> None:
    process = pictor(tmp_path / "data", workers=1, env={"PICTOR_CORS_ORIGINS": "*"})
    with httpx.Client(base_url=process.base, timeout=30) as client:
        r = client.get("/dicom-web/studies", headers={"Origin": OTHER})
        assert r.headers["access-control-allow-origin"] == "*"
        r = preflight(client, "/dicom-web/studies", OTHER, "POST")
        assert r.headers["access-control-allow-origin"] == "*"
        assert set(ALLOWED_REQUEST_HEADERS) == {
            h.strip() for h in r.headers["access-control-allow-headers"].split(",")
        }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ()),
        ("https://A.example.org/", ("https://a.example.org",)),
        ("https://a.example.org:443,http://b:80", ("https://a.example.org", "http://b")),
        ("http://[::1]:8080", ("http://[::1]:8080",)),
        ("*", ("*",)),
        ("null", ("null",)),
    ],
)
def test_origin_setting_normalized(value: str, expected: tuple[str, ...]) -> None:
    assert load_settings({}, {"PICTOR_CORS_ORIGINS": value}).cors_origin_list == expected


@pytest.mark.parametrize("value", ["example.org", "https://a.example.org/path", "https://"])
def test_origin_setting_rejected(value: str) -> None:
    with pytest.raises(ConfigError, match="CORS origin"):
        load_settings({"cors_origins": value}, {})
