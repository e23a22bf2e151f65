"""Who a request acts for, and the scopes it may use."""

from __future__ import annotations

from typing import Any

import msgspec

#: the ASGI scope key where a route handler leaves the UIDs it touched beyond its path
#: (STOW-RS: the stored instances) as (study, series, instance) triples, for the audit
AUDIT_UIDS_KEY = "pictor.audit.uids"
#: the ASGI scope key where access control leaves who the request acts for (the audit
#: trail's ``who``: lifecycle changes record it with their old and new values)
WHO_KEY = "pictor.who"
#: the ASGI scope key where access control leaves the one study a study link may search
#: (app.index.query.confine applies it to the parsed query)
CONFINED_KEY = "pictor.confined.study"


def confined_study(scope: Any) -> str | None:
    """The study a request is confined to (a study link's), if any."""
    study = scope.get(CONFINED_KEY)
    return study if isinstance(study, str) else None


#: the ASGI scope key where access control leaves the scopes the request holds
GRANTED_KEY = "pictor.granted"


def may(scope: Any, needed: str) -> bool:
    """Whether the request holds ``needed`` (True when access control does not run:
    Pictor then listens on loopback only and trusts its callers)."""
    granted = scope.get(GRANTED_KEY)
    return True if granted is None else grants(granted, needed)


def who_of(scope: Any) -> str:
    """Who a request acts for (``anonymous`` when access control is off)."""
    who = scope.get(WHO_KEY)
    return who if isinstance(who, str) else "anonymous"


READ = "read"
WRITE = "write"
#: delete studies, series and instances (issue #15); ``admin`` includes it
DELETE = "delete"
ADMIN = "admin"
#: claim, update and complete reading work items (the worklist of issue #18)
WORKLIST = "worklist"
SCOPES = (READ, WRITE, DELETE, ADMIN, WORKLIST)
#: scopes a granted scope carries with it
IMPLIED = {ADMIN: frozenset({DELETE})}

#: what a person's role lets them do (issue #21): local accounts have one role; an
#: identity provider's roles claim may name several (their scopes add up)
ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({READ}),
    "technologist": frozenset({READ, WRITE}),
    "radiologist": frozenset({READ, WORKLIST}),
    "admin": frozenset(SCOPES),
}


def parse_role(text: str) -> str:
    """A role name, validated (ValueError naming the roles otherwise)."""
    role = text.strip().lower()
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {text!r}")
    return role


def grants(scopes: frozenset[str], needed: str) -> bool:
    """Whether holding ``scopes`` allows what needs ``needed``."""
    return needed in scopes or any(needed in IMPLIED.get(s, ()) for s in scopes)


class Principal(msgspec.Struct, frozen=True):
    """An authenticated caller.

    ``who`` is what the audit trail records: ``token:NAME``, ``jwt:SUBJECT``,
    ``user:NAME`` (a signed-in person), ``link:STUDY_UID``, ``aet:AE_TITLE`` or
    ``anonymous``. A study link's principal
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
