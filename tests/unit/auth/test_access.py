"""Pure parts of access control (issue #8): study link tokens, the route table, JWT scope
claims, the loopback-only rule and the FHIR AuditEvent mapping."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from app.auth import links
from app.auth.fhir import audit_event
from app.auth.oidc import granted_scopes
from app.auth.principal import ROLES
from app.auth.routes import classify
from app.config import ConfigError, exposure_problem, load_settings

SECRET = b"k" * 32


def test_link_round_trip_expiry_and_tampering() -> None:
    token, expires = links.sign(SECRET, "1.2.3", 60)
    assert links.verify(SECRET, token) == ("1.2.3", expires)
    with pytest.raises(links.LinkError, match="expired"):
        links.verify(SECRET, token, now=expires + 1)
    with pytest.raises(links.LinkError, match="signature"):
        links.verify(b"another secret", token)
    with pytest.raises(links.LinkError):
        links.verify(SECRET, token[:-3] + "AAA")
    with pytest.raises(links.LinkError):
        links.sign(SECRET, "1.2.3", 0)
    assert [links.parse_ttl(t) for t in ("90", "30s", "30m", "1h", "7d")] == [
        90,
        30,
        1800,
        3600,
        7 * 86400,
    ]


@pytest.mark.parametrize(
    ("method", "path", "action", "scope", "uids"),
    [
        ("GET", "/dicom-web/studies", "qido-studies", "read", (None, None, None)),
        ("GET", "/dicom-web/studies/1.2/series", "qido-study-series", "read", ("1.2", None, None)),
        (
            "GET",
            "/dicom-web/studies/1.2/series/3.4/instances/5.6/frames/1",
            "wado-frames",
            "read",
            ("1.2", "3.4", "5.6"),
        ),
        (
            "GET",
            "/dicom-web/studies/1.2/series/3.4/instances/5.6/frames/1/rendered",
            "wado-frames-rendered",
            "read",
            ("1.2", "3.4", "5.6"),
        ),
        (
            "GET",
            "/dicom-web/studies/1.2/series/3.4/instances/5.6/bulk/7FE00010",
            "wado-bulk",
            "read",
            ("1.2", "3.4", "5.6"),
        ),
        (
            "GET",
            "/dicom-web/studies/1.2/thumbnail",
            "wado-study-thumbnail",
            "read",
            ("1.2", None, None),
        ),
        ("POST", "/dicom-web/studies", "stow", "write", (None, None, None)),
        ("POST", "/dicom-web/studies/1.2", "stow", "write", ("1.2", None, None)),
        ("DELETE", "/dicom-web/studies/1.2", "delete-study", "delete", ("1.2", None, None)),
        (
            "DELETE",
            "/dicom-web/studies/1.2/series/3.4/instances/5.6",
            "delete-instance",
            "delete",
            ("1.2", "3.4", "5.6"),
        ),
        ("DELETE", "/dicom-web/studies/1.2/metadata", "unknown", None, (None, None, None)),
        ("DELETE", "/admin/trash", "admin-trash-empty", "admin", (None, None, None)),
        (
            "POST",
            "/admin/studies/1.2/update",
            "admin-study-update",
            "admin",
            ("1.2", None, None),
        ),
        ("GET", "/metrics", "metrics", "admin", (None, None, None)),
        ("POST", "/admin/links", "admin-links", "admin", (None, None, None)),
        ("GET", "/IHEInvokeImageDisplay", "iid", "read", (None, None, None)),
        ("GET", "/anything/else", "unknown", None, (None, None, None)),
        ("GET", "/dicom-web/studies/1.2/series/3.4/nonsense", "unknown", None, (None, None, None)),
        ("POST", "/admin/tokens", "admin-tokens-create", "admin", (None, None, None)),
        ("DELETE", "/admin/tokens/x", "admin-tokens-revoke", "admin", (None, None, None)),
        ("GET", "/health", "health", None, (None, None, None)),
        ("GET", "/viewer/app-config.js", "viewer", None, (None, None, None)),
        ("OPTIONS", "/dicom-web/studies", "preflight", None, (None, None, None)),
    ],
)
def test_route_table(
    method: str, path: str, action: str, scope: str | None, uids: tuple[str | None, ...]
) -> None:
    target = classify(method, path)
    assert (target.action, target.scope) == (action, scope)
    assert (target.study, target.series, target.instance) == uids


def test_scopes_from_claims() -> None:
    assert granted_scopes({"scope": "openid read write"}, "scope", "") == {"read", "write"}
    assert granted_scopes({"scp": ["pictor:read"]}, "scope", "") == {"read"}
    claims = {"realm_access": {"roles": ["pictor.admin", "other"]}}
    # a role in the roles claim grants what the local role grants (issue #21)
    assert granted_scopes(claims, "scope", "realm_access.roles") == ROLES["admin"]
    assert granted_scopes({"roles": ["technologist"]}, "scope", "roles") == {"read", "write"}
    assert granted_scopes({"roles": ["radiologist", "viewer"]}, "scope", "roles") == {
        "read",
        "worklist",
    }
    # a role name in the scope claim is not a scope; nor are roles read without the claim
    assert granted_scopes({"scope": "technologist"}, "scope", "") == frozenset()
    assert granted_scopes({"roles": ["admin"]}, "scope", "") == frozenset()
    assert granted_scopes({"scope": "sudo"}, "scope", "") == frozenset()


def test_loopback_only_unless_auth_or_explicitly_insecure() -> None:
    env: dict[str, str] = {}
    assert exposure_problem(load_settings({}, env)) is None
    assert exposure_problem(load_settings({"host": "::1"}, env)) is None
    assert "refusing" in (exposure_problem(load_settings({"host": "0.0.0.0"}, env)) or "")
    assert exposure_problem(load_settings({"host": "0.0.0.0", "auth": True}, env)) is None
    assert (
        exposure_problem(load_settings({"host": "10.0.0.5", "insecure_no_auth": True}, env)) is None
    )
    with pytest.raises(ConfigError, match="not allowed"):
        load_settings({}, {"PICTOR_OIDC_ALGORITHMS": "RS256,HS256"})
    with pytest.raises(ConfigError, match="both"):
        load_settings({}, {"PICTOR_TLS_CERT": "/etc/hostname"})


def test_fhir_audit_event() -> None:
    row = {
        "id": 7,
        "at": dt.datetime.fromtimestamp(time.time(), dt.UTC),
        "who": "token:ris",
        "client": "10.0.0.9",
        "action": "qido-studies",
        "method": "GET",
        "outcome": "success",
        "status": 200,
        "study_uids": ["1.2.3"],
        "series_uids": [],
        "sop_instance_uids": [],
        "query": "PatientID=42",
        "patient_ids": ["42"],
    }
    event = audit_event(row)
    assert event["type"]["code"] == "110112" and event["action"] == "E"
    assert event["subtype"][0]["code"] == "search-type"
    assert event["outcome"] == "0" and event["recorded"].endswith("Z")
    assert event["agent"][0]["who"]["identifier"]["value"] == "token:ris"
    assert event["agent"][0]["network"] == {"address": "10.0.0.9", "type": "2"}
    roles = [e["role"]["code"] for e in event["entity"]]
    assert roles == ["1", "3", "24"]  # patient, study (report), query
    denied = audit_event({**row, "action": "stow", "status": 403, "outcome": "denied"})
    assert denied["type"]["code"] == "110107" and denied["outcome"] == "4"
    store = audit_event({**row, "action": "dimse-c-store", "status": 0xA700, "outcome": "failure"})
    assert store["outcome"] == "8" and "0xA700" in store["outcomeDesc"]
