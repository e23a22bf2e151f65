"""openapi.yaml describes exactly the routes the app serves."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.config import load_settings
from app.main import create_app

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"


def served() -> set[tuple[str, str]]:
    app = create_app(load_settings({}, {}))
    out = set()
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in getattr(route, "methods", set()):
            if method not in ("HEAD", "OPTIONS"):
                out.add((method.lower(), path))
    return out


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
