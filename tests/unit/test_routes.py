"""The route table (app.routes): the one description of the HTTP surface that access
control decides on, checked against the framework's own routes, and the canonical path
every layer routes on (issue #13, item 1: a doubled slash escalated a read token)."""

from __future__ import annotations

import pytest
from litestar.utils import normalize_path

from app.auth.routes import classify
from app.config import Settings
from app.main import create_app
from app.routes import ROUTES, BadPath, canonical_path, match


def _framework_routes() -> set[tuple[str, str, str]]:
    app = create_app(Settings())
    found = set()
    for route in app.routes:
        for handler in route.route_handlers:
            for method in handler.http_methods:
                if method != "OPTIONS":  # litestar answers preflights for every path
                    found.add((handler.name, method, route.path_format))
    return found


def test_the_table_is_exactly_the_framework_routes() -> None:
    table = {(r.name, r.method, r.template.replace(":path", "")) for r in ROUTES}
    assert table == _framework_routes()


def test_every_route_but_the_open_ones_needs_a_scope() -> None:
    open_routes = {r.name for r in ROUTES if r.scope is None}
    # signing in and out is open by nature; those handlers audit themselves. FHIR's
    # CapabilityStatement says what the server does, nothing of what it holds
    assert open_routes == {
        "health",
        "viewer-root",
        "viewer",
        "login",
        "login-submit",
        "logout",
        "fhir-metadata",
    }


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("/admin/tokens", "/admin/tokens"),
        ("//admin/tokens", "/admin/tokens"),
        ("///admin//tokens/", "/admin/tokens"),
        ("/dicom-web//studies", "/dicom-web/studies"),
        ("/dicom-web/studies/", "/dicom-web/studies"),
        ("//metrics", "/metrics"),
        ("/", "/"),
        ("", "/"),
    ],
)
def test_canonical_path_is_what_the_router_sees(path: str, canonical: str) -> None:
    assert canonical_path(path) == canonical
    # litestar's router reduces a path the same way, and leaves the canonical one alone
    assert normalize_path(path) == canonical == normalize_path(canonical)


@pytest.mark.parametrize(
    "path",
    [
        "/admin/../admin/tokens",
        "/dicom-web/./studies",
        "/dicom-web/studies/..",
        "/viewer/../admin/tokens",
        "/viewer/..",
        "/dicom-web/studies\x00",
        "/admin/tokens\r\nX: y",
        "/metrics\t",
    ],
)
def test_dot_segments_and_control_characters_are_refused(path: str) -> None:
    with pytest.raises(BadPath):
        canonical_path(path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "//admin/tokens"),
        ("GET", "//metrics"),
        ("POST", "//admin/links"),
        ("POST", "//dicom-web/studies"),
        ("DELETE", "/admin//tokens/reader"),
        ("GET", "/admin/tokens/"),
    ],
)
def test_doubled_slashes_are_classified_as_the_router_dispatches_them(
    method: str, path: str
) -> None:
    canonical = canonical_path(path)
    target = classify(method, canonical)
    assert target.route is not None and target.scope in ("admin", "write")


@pytest.mark.parametrize(
    ("method", "path", "refusal"),
    [
        ("GET", "/nowhere", 404),
        ("GET", "/dicom-web", 404),
        ("GET", "/dicom-web/studies/1/series/2/instances/3/frames/1/2", 404),
        ("GET", "/admin", 404),
        ("GET", "/link", 404),
        ("PUT", "/dicom-web/studies", 405),
        ("DELETE", "/dicom-web/studies/1.2/metadata", 405),
        ("PUT", "/dicom-web/studies/1.2", 405),
        ("PATCH", "/admin/tokens", 405),
        ("HEAD", "/metrics", 405),
        ("POST", "/metrics", 405),
        ("TRACE", "/health", 405),
    ],
)
def test_what_the_table_does_not_know_is_refused(method: str, path: str, refusal: int) -> None:
    target = classify(method, path)
    assert target.refusal == refusal and target.scope is None and target.route is None


def test_match_gives_parameters_and_allowed_methods() -> None:
    found = match("GET", "/dicom-web/studies/1.2/series/3.4/instances/5.6/bulk/7FE00010")
    assert found.route is not None and found.route.name == "wado-bulk"
    assert found.params == {
        "study": "1.2",
        "series": "3.4",
        "instance": "5.6",
        "path": "7FE00010",
    }
    assert match("GET", "/viewer/a/b/c.js").params == {"path": "a/b/c.js"}
    assert set(match("PUT", "/admin/tokens").allowed) == {"GET", "POST"}
