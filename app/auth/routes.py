"""What an HTTP request asks for, read from its method and canonical path before the
framework routes it: the action's name (the route's name in :mod:`app.routes`, as in
the metrics), the scope it needs, and the study / series / instance it touches.

The decision is made on the same path and the same table the router dispatches on
(:func:`app.routes.match`); a request the table does not know is refused, never given a
default scope.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.routes import Match, Route, match


@dataclass(frozen=True)
class Target:
    action: str
    #: scope needed; None: open to anyone (not audited)
    scope: str | None
    study: str | None = None
    series: str | None = None
    instance: str | None = None
    route: Route | None = None
    #: refused before dispatch: 404 (no such path) or 405 (not with this method)
    refusal: int | None = None
    allowed: tuple[str, ...] = ()

    @property
    def is_search_everywhere(self) -> bool:
        """A QIDO search not confined to one study by its path."""
        return self.route is not None and self.route.is_search_everywhere


PREFLIGHT = Target("preflight", None)


def classify(method: str, path: str) -> Target:
    """``path`` is canonical (:func:`app.routes.canonical_path`)."""
    return target_of(method, match(method, path))


def target_of(method: str, found: Match) -> Target:
    if method == "OPTIONS":
        return PREFLIGHT  # CORS preflights carry no credentials (Fetch 4.8)
    route = found.route
    if route is None:
        status = 405 if found.allowed else 404
        return Target("unknown", None, refusal=status, allowed=found.allowed)
    p = found.params
    return Target(
        route.name, route.scope, p.get("study"), p.get("series"), p.get("instance"), route
    )
