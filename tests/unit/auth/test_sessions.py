"""The pure parts of signing in (issue #21): the cross-site check, where a sign-in may
send the browser, password rules and hashing, roles, the slow-down."""

from __future__ import annotations

from typing import Any

import pytest

from app.auth import passwords, sessions
from app.auth.principal import ROLES, parse_role
from app.dicomweb.login import safe_next
from app.services.users import _delay, valid_name


def _scope(method: str = "POST", scheme: str = "http", **headers: str) -> dict[str, Any]:
    raw = [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "method": method, "scheme": scheme, "headers": raw}


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({"host": "pacs:8042", "origin": "http://pacs:8042"}, False),
        ({"host": "pacs:8042", "origin": "HTTP://PACS:8042"}, False),
        ({"host": "pacs:8042", "referer": "http://pacs:8042/viewer/x?y"}, False),
        (
            {"host": "pacs:8042", "origin": "http://pacs:8042", "sec_fetch_site": "same-origin"},
            False,
        ),
        ({"host": "pacs:8042", "origin": "http://pacs:8043"}, True),
        ({"host": "pacs:8042", "origin": "https://pacs:8042"}, True),
        ({"host": "pacs:8042", "origin": "http://pacs:8042.evil.example"}, True),
        ({"host": "pacs:8042", "origin": "null"}, True),
        ({"host": "pacs:8042"}, True),
        ({"host": "pacs:8042", "origin": "http://pacs:8042", "sec_fetch_site": "same-site"}, True),
        ({"host": "pacs:8042", "origin": "http://pacs:8042", "sec_fetch_site": "cross-site"}, True),
        ({"host": "pacs:8042", "origin": "not a url at all"}, True),
        ({"host": "pacs:8042", "origin": "http://pacs:8042@evil.example"}, True),
        # behind a proxy that says how it was reached
        (
            {
                "host": "127.0.0.1:8042",
                "x_forwarded_host": "pacs.example.org",
                "x_forwarded_proto": "https",
                "origin": "https://pacs.example.org",
            },
            False,
        ),
        ({"host": "pacs.example.org", "origin": "https://pacs.example.org"}, True),  # http here
    ],
)
def test_cross_site(headers: dict[str, str], refused: bool) -> None:
    assert (sessions.cross_site(_scope(**headers)) is not None) is refused


def test_cross_site_accepts_the_configured_public_origin() -> None:
    scope = _scope(host="10.0.0.5:8042", origin="https://pacs.example.org")
    assert sessions.cross_site(scope) is not None
    assert sessions.cross_site(scope, "https://pacs.example.org/dicom-web") is None


def test_cookie_attributes() -> None:
    plain = sessions.set_cookie(_scope(), "c", "v", 60).decode()
    assert plain == "c=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
    assert sessions.set_cookie(_scope(scheme="https"), "c", "v", 60).decode().endswith("; Secure")
    proxied = _scope(forwarded='for=1.2.3.4;proto=https;host="pacs"')
    assert (
        sessions.set_cookie(proxied, "c", "", 0)
        .decode()
        .endswith("Max-Age=0; HttpOnly; SameSite=Lax; Secure")
    )


def test_cookie_value_takes_the_first_of_repeated_cookies() -> None:
    scope = _scope(cookie="a=1; pictor_session=ps_one; pictor_session=ps_two")
    assert sessions.cookie_value(scope, "pictor_session") == "ps_one"
    assert sessions.cookie_value(scope, "missing") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("viewer/viewer?StudyInstanceUIDs=1.2", "viewer/viewer?StudyInstanceUIDs=1.2"),
        ("viewer", "viewer"),
        ("viewer?patientName=DOE", "viewer?patientName=DOE"),
        ("IHEInvokeImageDisplay?requestType=STUDY", "IHEInvokeImageDisplay?requestType=STUDY"),
        ("//evil.example", "viewer/"),
        ("/viewer/", "viewer/"),
        ("https://evil.example/viewer", "viewer/"),
        ("viewerx", "viewer/"),
        ("viewer:evil", "viewer/"),
        ("viewer/\\\\evil", "viewer/"),
        ("viewer/ok\nLocation: x", "viewer/"),
        ("viewer//evil.example", "viewer/"),
        ("dicom-web/studies", "viewer/"),
        ("viewer/" + "a" * 5000, "viewer/"),
        (None, "viewer/"),
    ],
)
def test_safe_next(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected


def test_password_rules_and_argon2id() -> None:
    for bad in ("short", " leading space", "trailing space ", "tab\tinside", "x" * 257):
        with pytest.raises(passwords.PasswordError):
            passwords.check_new(bad)
    phc = passwords.hash_now("a good password")
    assert phc.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert passwords.verify_now(phc, "a good password")
    assert not passwords.verify_now(phc, "a good passworD")
    assert not passwords.verify_now("not a hash", "a good password")
    assert not passwords.needs_rehash(phc)
    weaker = "$argon2id$v=19$m=1024,t=1,p=1$" + phc.split("$", 4)[-1]
    assert passwords.needs_rehash(weaker)
    # two hashes of one password differ (a salt each)
    assert passwords.hash_now("a good password") != phc


def test_roles() -> None:
    assert ROLES["viewer"] == {"read"}
    assert ROLES["technologist"] == {"read", "write"}
    assert ROLES["radiologist"] == {"read", "worklist"}
    assert ROLES["admin"] >= {"read", "write", "delete", "admin", "worklist"}
    assert parse_role(" Admin ") == "admin"
    with pytest.raises(ValueError, match="role must be one of"):
        parse_role("root")


def test_names_and_the_slow_down() -> None:
    assert valid_name("alice") and valid_name("a.b_c-d@example.org") and valid_name("x" * 64)
    for bad in ("", "x" * 65, "-alice", "al ice", "al\x00ice", "élodie"):
        assert not valid_name(bad), bad
    assert [_delay(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
