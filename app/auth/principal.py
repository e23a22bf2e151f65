"""Who a request acts for, and the scopes it may use."""

from __future__ import annotations

from typing import Any

import msgspec

#: the ASGI scope key where a route handler leaves the UIDs it touched beyond its path
#: (STOW-RS: the stored instances) as (study, series, instance) triples, for the audit
AUDIT_UIDS_KEY = "pictor.audit.uids"
#: the ASGI scope key where access control leaves the one study a study link may search
#: (app.index.query.confine applies it to the parsed query)
CONFINED_KEY = "pictor.confined.study"


def confined_study(scope: Any) -> str | None:
    """The study a request is confined to (a study link's), if any."""
    study = scope.get(CONFINED_KEY)
    return study if isinstance(study, str) else None


READ = "read"
WRITE = "write"
ADMIN = "admin"
SCOPES = (READ, WRITE, ADMIN)


class Principal(msgspec.Struct, frozen=True):
    """An authenticated caller.

    ``who`` is what the audit trail records: ``token:NAME``, ``jwt:SUBJECT``,
    ``link:STUDY_UID``, ``aet:AE_TITLE`` or ``anonymous``. A study link's principal
    has ``study`` set: it may read that study and nothing else.
    """

    who: str
    scopes: frozenset[str]
    study: str | None = None


ANONYMOUS = Principal("anonymous", frozenset(SCOPES))


def parse_scopes(text: str) -> list[str]:
    """``read,write`` (commas or spaces) -> validated scope names."""
    scopes = [s for s in text.replace(",", " ").split() if s]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {text!r}")
    return sorted(set(scopes), key=SCOPES.index)
