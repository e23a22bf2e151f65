"""openapi.yaml describes exactly the routes the app serves: the documented entries of
the route table (app.routes), from which the framework's routes are generated."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.config import load_settings
from app.main import create_app
from app.routes import ROUTES

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"


def served() -> set[tuple[str, str]]:
    app = create_app(load_settings({}, {}))
    out = set()
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for handler in route.route_handlers:
            out |= {(m.lower(), path) for m in handler.http_methods if m != "OPTIONS"}
    return out


def test_the_table_documents_what_the_framework_serves() -> None:
    table = {(r.method.lower(), r.template.replace(":path", "")) for r in ROUTES}
    assert table == served() == documented()


def documented() -> set[tuple[str, str]]:
    spec = yaml.safe_load(SPEC.read_text())
    return {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }


def test_every_route_is_documented_and_every_documented_path_served() -> None:
    assert served() == documented()
