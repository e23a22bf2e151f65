"""People sign in (issue #21): local accounts made with the real ``pictor user`` CLI,
the ``/login`` form, the session cookie, roles, cross-site refusals, timeouts and
lockouts, on a real ``pictor serve --auth`` with its embedded PostgreSQL.

Failed sign-ins count per account and per client address, so each test that fails on
purpose sends from its own loopback address (127.0.0.N) and uses its own accounts.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from conftest import Archive, Pictor, content_type, multipart, pictor_cli, stand_in_viewer
from synth import ct_slice, new_uids

PASSWORD = "correct horse battery"
IDLE = 2.0
ABSOLUTE = 9.0
LOCK = 6.0
ACCOUNT_LIMIT = 3
ADDRESS_LIMIT = 8
ROLES = ("viewer", "technologist", "radiologist", "admin")


@dataclass
class Site:
    archive: Archive
    data: Path
    study: str

    @property
    def base(self) -> str:
        return self.archive.process.base

    @property
    def origin(self) -> str:
        return self.base

    def client(self, address: str = "127.0.0.1") -> httpx.Client:
        """A browser-like client sending from ``address`` (any of 127.0.0.0/8) that
        keeps cookies and does not follow redirects."""
        transport = httpx.HTTPTransport(local_address=address)
        return httpx.Client(base_url=self.base, transport=transport, timeout=60)

    def user(self, *args: str, password: str | None = PASSWORD) -> subprocess.CompletedProcess[str]:
        """``pictor user ARGS`` beside the running server (the password on stdin)."""
        takes = args[0] in ("add", "passwd") and password is not None
        return pictor_cli(
            "user",
            *args,
            *(["--password-stdin"] if takes else []),
            data_dir=self.data,
            stdin=(password + "\n") if takes else "",
        )

    def add(self, name: str, role: str, password: str = PASSWORD) -> None:
        done = self.user("add", name, "--role", role, password=password)
        assert done.returncode == 0, done.stderr

    def audit(self, where: str, *args: Any, count: int = 1) -> list[Any]:
        """Audit rows matching ``where`` once the batched writer has flushed them."""
        deadline = time.monotonic() + 10
        while True:
            rows = self.archive.query(f"SELECT * FROM audit_event WHERE {where} ORDER BY id", *args)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.2)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pictor_module: Pictor) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("login")
    data = root / "data"
    process = pictor_module(
        data,
        workers=1,
        env={
            "PICTOR_AUTH": "true",
            "PICTOR_AUTH_CACHE_SECONDS": "0",
            "PICTOR_VIEWER_DIR": str(stand_in_viewer(root / "bundle")),
            "PICTOR_SESSION_IDLE_SECONDS": str(IDLE),
            "PICTOR_SESSION_MAX_SECONDS": str(ABSOLUTE),
            "PICTOR_LOGIN_LOCK_SECONDS": str(LOCK),
            "PICTOR_LOGIN_MAX_FAILURES": str(ACCOUNT_LIMIT),
            "PICTOR_LOGIN_ADDRESS_MAX_FAILURES": str(ADDRESS_LIMIT),
        },
    )
    archive = Archive(process)
    done = pictor_cli("token", "create", "--name", "loader", "--scopes", "write", data_dir=data)
    assert done.returncode == 0, done.stderr
    study, series = new_uids()
    stored = httpx.post(
        process.dicomweb + "/studies",
        content=multipart([ct_slice(study, series, 0, rows=32, cols=32, patient_id="LOGIN1")]),
        headers={"Content-Type": content_type(), "Authorization": f"Bearer {done.stdout.strip()}"},
    )
    assert stored.status_code == 200, stored.text
    s = Site(archive, data, study)
    for role in ROLES:
        s.add(f"{role}1", role)
    try:
        yield s
    finally:
        archive.http.close()


def sign_in(
    client: httpx.Client, name: str, password: str = PASSWORD, **fields: str
) -> httpx.Response:
    return client.post(
        "/login",
        data={"username": name, "password": password, **fields},
        headers={"Origin": str(client.base_url).rstrip("/")},
    )


def stow(site: Site, client: httpx.Client, **headers: str) -> httpx.Response:
    study, series = new_uids()
    body = multipart([ct_slice(study, series, 0, rows=16, cols=16)])
    return client.post(
        "/dicom-web/studies", content=body, headers={"Content-Type": content_type(), **headers}
    )


# -- the form and a successful sign-in ---------------------------------------------------


def test_the_form_then_a_session_cookie_that_opens_the_archive(site: Site) -> None:
    with site.client() as c:
        page = c.get("/login")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "name='username'" in page.text and "type='password'" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert c.get("/dicom-web/studies").status_code == 401  # not yet signed in

        r = sign_in(c, "viewer1")
        assert r.status_code == 303 and r.headers["location"] == "viewer/"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("pictor_session=ps_")
        for attribute in ("HttpOnly", "SameSite=Lax", "Path=/", f"Max-Age={int(ABSOLUTE)}"):
            assert attribute in cookie, cookie
        assert "Secure" not in cookie  # plain HTTP on loopback
        found = c.get("/dicom-web/studies", params={"StudyInstanceUID": site.study})
        assert found.status_code == 200 and len(found.json()) == 1
        # the form knows who is signed in
        assert "Signed in as <b>viewer1</b>" in c.get("/login").text
    rows = site.audit("action = 'login' AND who = 'user:viewer1' AND status = 303")
    assert rows and rows[0]["outcome"] == "success" and rows[0]["client"] == "127.0.0.1"
    reads = site.audit("action = 'qido-studies' AND who = 'user:viewer1'")
    assert reads and reads[0]["status"] == 200


def test_under_https_the_cookie_is_secure_and_host_only(site: Site) -> None:
    https = {"X-Forwarded-Proto": "https"}
    with site.client() as c:
        r = c.post("/login", data={"username": "viewer1", "password": PASSWORD}, headers=https)
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        # RFC 6265bis __Host-: this host only, HTTPS only, Path=/ (no cookie tossing)
        assert cookie.startswith("__Host-pictor_session=ps_") and "; Secure" in cookie
        value = cookie.split(";")[0].split("=", 1)[1]
    url = site.base + "/dicom-web/studies"
    assert (
        httpx.get(url, headers=https, cookies={"__Host-pictor_session": value}).status_code == 200
    )
    # under HTTPS a session cookie without the prefix (one a sibling site could set) is none
    assert httpx.get(url, headers=https, cookies={"pictor_session": value}).status_code == 401


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(site: Site) -> None:
    answers = []
    with site.client("127.0.0.11") as c:
        for name in ("technologist1", "nobody-here"):
            r = sign_in(c, name, "wrong password!")
            assert r.status_code == 401 and "set-cookie" not in r.headers
            assert "Wrong user name or password" in r.text and "name='username'" in r.text
            answers.append(r.text.replace(name, "NAME"))
            assert c.get("/dicom-web/studies").status_code == 401
    assert answers[0] == answers[1]  # nothing tells which accounts exist
    assert site.audit("action = 'login' AND status = 401 AND who = 'user:nobody-here'")


# -- roles -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "reads", "writes", "administers"),
    [
        ("viewer", True, False, False),
        ("technologist", True, True, False),
        ("radiologist", True, False, False),
        ("admin", True, True, True),
    ],
)
def test_roles_grant_their_scopes(
    site: Site, role: str, reads: bool, writes: bool, administers: bool
) -> None:
    with site.client() as c:
        assert sign_in(c, f"{role}1").status_code == 303
        r = c.get(f"/dicom-web/studies/{site.study}/metadata")
        assert r.status_code == (200 if reads else 403)
        r = stow(site, c, Origin=site.origin)
        assert r.status_code == (200 if writes else 403), r.text
        assert c.get("/admin/tokens").status_code == (200 if administers else 403)
        assert c.get("/metrics").status_code == (200 if administers else 403)


# -- cross-site requests -----------------------------------------------------------------


def test_cookie_writes_from_another_origin_are_refused(site: Site) -> None:
    with site.client() as c:
        assert sign_in(c, "admin1").status_code == 303
        before = site.archive.query("SELECT count(*) AS n FROM instance")[0]["n"]
        port = site.archive.process.port
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": f"http://127.0.0.1:{port + 1}"},  # same site, another origin
            {"Origin": f"http://localhost:{port}"},  # another host name
            {"Origin": "null"},
            {},  # a cookie alone says nothing of where the request comes from
            {"Referer": "http://evil.example/page"},
            {"Origin": site.origin, "Sec-Fetch-Site": "cross-site"},
            {"Origin": site.origin, "Sec-Fetch-Site": "same-site"},
        ):
            r = stow(site, c, **headers)
            assert r.status_code == 403, (headers, r.status_code, r.text)
            assert r.json()["message"], headers
            r = c.delete(f"/dicom-web/studies/{site.study}", headers=headers)
            assert r.status_code == 403, headers
            r = c.post("/admin/tokens", json={"name": "x", "scopes": ["read"]}, headers=headers)
            assert r.status_code == 403, headers
        assert site.archive.query("SELECT count(*) AS n FROM instance")[0]["n"] == before
        # its own pages may (the viewer's upload sends Origin; Referer when it does not)
        assert stow(site, c, Origin=site.origin).status_code == 200
        assert stow(site, c, Referer=site.origin + "/viewer/").status_code == 200
        assert (
            stow(site, c, Origin=site.origin, **{"Sec-Fetch-Site": "same-origin"}).status_code
            == 200
        )
        # reading is not a change: allowed whatever the origin (CORS guards the answer)
        r = c.get("/dicom-web/studies", headers={"Origin": "http://evil.example"})
        assert r.status_code == 200
    # a bearer token is no cookie: no Origin needed
    done = pictor_cli(
        "token", "create", "--name", "csrf-writer", "--scopes", "write", data_dir=site.data
    )
    with site.client() as c:
        assert stow(site, c, Authorization=f"Bearer {done.stdout.strip()}").status_code == 200


def test_a_websocket_from_another_origin_gets_no_session(site: Site) -> None:
    """A WebSocket is not bound by the same-origin policy (RFC 6455 10.2): a page
    elsewhere could open the UPS-RS notification channel (PS3.18 11.13) with the
    person's cookie. Only the server's own origin may."""
    channel = site.base.replace("http://", "ws://") + "/dicom-web/subscribers/WSREADER"
    with site.client() as c:
        assert sign_in(c, "admin1").status_code == 303
        cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
    for origin in ("http://evil.example", "null", f"http://localhost:{site.archive.process.port}"):
        with pytest.raises(InvalidStatus) as refused:
            connect(channel, origin=Origin(origin), additional_headers={"Cookie": cookie})
        assert refused.value.response.status_code == 403, origin
    with pytest.raises(InvalidStatus) as anonymous:
        connect(channel, origin=Origin(site.origin))
    assert anonymous.value.response.status_code == 401
    with (
        connect(channel, origin=Origin(site.origin), additional_headers={"Cookie": cookie}) as ws,
        pytest.raises(TimeoutError),
    ):
        ws.recv(timeout=0.5)  # open, and nothing queued for this AE


def test_sign_in_and_sign_out_forms_from_another_origin_are_refused(site: Site) -> None:
    with site.client("127.0.0.12") as c:
        r = c.post(
            "/login",
            data={"username": "viewer1", "password": PASSWORD},
            headers={"Origin": "http://evil.example"},
        )
        assert r.status_code == 403 and "set-cookie" not in r.headers  # no login CSRF
        assert sign_in(c, "viewer1").status_code == 303
        r = c.post("/logout", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        r = c.post("/logout")  # a cookie with no Origin or Referer
        assert r.status_code == 403
        assert c.get("/dicom-web/studies").status_code == 200  # still signed in
    assert site.audit("action = 'logout' AND status = 403", count=2)


# -- forged, replayed and ended sessions ---------------------------------------------------


def test_forged_and_replayed_cookies_are_401(site: Site) -> None:
    forged = [
        "ps_" + secrets.token_urlsafe(32),
        "ps_",
        "garbage",
        "ps_" + "A" * 5000,
        "pl_" + secrets.token_urlsafe(40),
    ]
    for value in forged:
        r = httpx.get(site.base + "/dicom-web/studies", cookies={"pictor_session": value})
        assert r.status_code == 401, value[:20]
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
    with site.client() as c:
        assert sign_in(c, "viewer1").status_code == 303
        cookie = c.cookies["pictor_session"]
        out = c.post("/logout", headers={"Origin": site.origin})
        assert out.status_code == 303 and out.headers["location"].startswith("login")
        assert "Max-Age=0" in out.headers["set-cookie"]
    replayed = httpx.get(site.base + "/dicom-web/studies", cookies={"pictor_session": cookie})
    assert replayed.status_code == 401 and "sign in again" in replayed.json()["message"]
    digest = hashlib.sha256(cookie.encode()).digest()
    assert not site.archive.query("SELECT 1 FROM user_session WHERE id_hash = $1", digest)
    assert site.audit("action = 'logout' AND who = 'user:viewer1' AND status = 303")


def test_a_session_ends_when_idle_and_at_its_absolute_timeout(site: Site) -> None:
    with site.client() as idle, site.client() as busy:
        assert sign_in(idle, "viewer1").status_code == 303
        assert sign_in(busy, "viewer1").status_code == 303
        started = time.monotonic()

        def keep_busy(until: float) -> None:
            while time.monotonic() - started < until:
                assert busy.get("/dicom-web/studies").status_code == 200
                time.sleep(0.8)

        for _ in range(2):  # used within the idle timeout: alive
            keep_busy(time.monotonic() - started + IDLE * 0.6)
            assert idle.get("/dicom-web/studies").status_code == 200
        keep_busy(time.monotonic() - started + IDLE + 1.2)  # idle past the timeout
        assert idle.get("/dicom-web/studies").status_code == 401
        # the busy one lives until the absolute timeout, however much it is used
        keep_busy(ABSOLUTE - 1.0)
        time.sleep(max(0.0, ABSOLUTE + 1.0 - (time.monotonic() - started)))
        assert busy.get("/dicom-web/studies").status_code == 401
        # an ended session on a viewer page: back to the form, not an error
        r = busy.get("/viewer/viewer", params={"StudyInstanceUIDs": site.study})
        assert r.status_code == 303 and "login?next=viewer" in r.headers["location"]


def test_disabling_or_a_new_password_ends_the_sessions(site: Site) -> None:
    site.add("dora", "viewer")
    with site.client("127.0.0.13") as c:
        assert sign_in(c, "dora").status_code == 303
        assert site.user("disable", "dora").returncode == 0
        assert c.get("/dicom-web/studies").status_code == 401
        assert sign_in(c, "dora").status_code == 401
        assert site.user("enable", "dora").returncode == 0
        assert sign_in(c, "dora").status_code == 303
        assert c.get("/dicom-web/studies").status_code == 200
        done = site.user("passwd", "dora", password="a new password 2")
        assert done.returncode == 0, done.stderr
        assert c.get("/dicom-web/studies").status_code == 401
        assert sign_in(c, "dora").status_code == 401
        assert sign_in(c, "dora", "a new password 2").status_code == 303
        # a new role applies to the session at once (no cache here)
        assert stow(site, c, Origin=site.origin).status_code == 403
        assert site.user("role", "dora", "technologist").returncode == 0
        assert stow(site, c, Origin=site.origin).status_code == 200


# -- slowed, then locked -----------------------------------------------------------------


def test_an_account_is_slowed_then_locked(site: Site) -> None:
    site.add("carol", "viewer")
    with site.client("127.0.0.14") as c:
        took = []
        for _ in range(ACCOUNT_LIMIT - 1):
            t = time.monotonic()
            assert sign_in(c, "carol", "not her password").status_code == 401
            took.append(time.monotonic() - t)
        assert took[1] > took[0] + 0.1  # each failure waits longer
        r = sign_in(c, "carol", "not her password")
        assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= LOCK
        assert "Too many failed sign-ins" in r.text
        # locked: even the right password is refused, and tells nothing
        r = sign_in(c, "carol")
        assert r.status_code == 429 and "set-cookie" not in r.headers
        # another account from the same address is not locked
        assert sign_in(c, "viewer1").status_code == 303
        time.sleep(LOCK + 0.5)
        assert sign_in(c, "carol").status_code == 303
        # an administrator lifts a lock without waiting
        for _ in range(ACCOUNT_LIMIT):
            sign_in(c, "carol", "not her password")
        assert sign_in(c, "carol").status_code == 429
        done = site.user("unlock", "carol")
        assert done.returncode == 0 and "unlocked" in done.stderr
        assert sign_in(c, "carol").status_code == 303
    assert site.audit("action = 'login' AND who = 'user:carol' AND status = 429", count=2)


def test_an_address_is_locked_across_accounts(site: Site) -> None:
    with site.client("127.0.0.15") as c:
        answers = [
            sign_in(c, f"guess{i}", "not a password").status_code for i in range(ADDRESS_LIMIT)
        ]
        assert answers[:-1] == [401] * (ADDRESS_LIMIT - 1) and answers[-1] == 429
        r = sign_in(c, "viewer1")
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    with site.client("127.0.0.16") as other:  # another address may still sign in
        assert sign_in(other, "viewer1").status_code == 303


# -- hostile input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("next_page", "location"),
    [
        ("viewer/viewer?StudyInstanceUIDs=1.2.3", "viewer/viewer?StudyInstanceUIDs=1.2.3"),
        (
            "IHEInvokeImageDisplay?requestType=STUDY&studyUID=1.2",
            "IHEInvokeImageDisplay?requestType=STUDY&studyUID=1.2",
        ),
        ("//evil.example/x", "viewer/"),
        ("https://evil.example/", "viewer/"),
        ("/\\evil.example", "viewer/"),
        ("viewer//evil.example", "viewer/"),
        ("viewer:evil", "viewer/"),
        ("javascript:alert(1)", "viewer/"),
        ("viewer\r\nSet-Cookie: x=y", "viewer/"),
        ("", "viewer/"),
    ],
)
def test_sign_in_never_sends_anyone_to_another_site(
    site: Site, next_page: str, location: str
) -> None:
    with site.client() as c:
        r = sign_in(c, "viewer1", next=next_page)
        assert r.status_code == 303 and r.headers["location"] == location


def test_hostile_sign_in_requests(site: Site) -> None:
    with site.client("127.0.0.17") as c:
        origin = {"Origin": site.origin}
        r = c.post("/login", json={"username": "viewer1", "password": PASSWORD}, headers=origin)
        assert r.status_code == 415
        r = c.post(
            "/login",
            content=b"username=viewer1&password=" + b"x" * 9000,
            headers={**origin, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 413
        for body in (
            b"username=" + b"u" * 5000 + b"&password=x",
            b"username=\xff\xfe&password=\xff",
            b"",
            b"password=" + PASSWORD.replace(" ", "+").encode(),
            b"username=viewer1&username=admin1&password=wrong",
            b"username=%00admin1&password=x",
            b"username=viewer1&password=" + b"p" * 3000,
        ):
            r = c.post(
                "/login",
                content=body,
                headers={**origin, "Content-Type": "application/x-www-form-urlencoded"},
            )
            assert r.status_code in (401, 429), (body[:40], r.status_code)
            assert "set-cookie" not in r.headers
        # a program without Origin or Referer may sign in (no browser, no CSRF)
        time.sleep(LOCK + 0.5)
        r = c.post("/login", data={"username": "viewer1", "password": PASSWORD})
        assert r.status_code == 303


def test_without_auth_there_is_nothing_to_sign_in_to(tmp_path: Path, pictor: Pictor) -> None:
    process = pictor(tmp_path / "data", workers=1)
    assert httpx.get(process.base + "/login").status_code == 404
    r = httpx.post(process.base + "/login", data={"username": "a", "password": "b"})
    assert r.status_code == 404 and "access control is off" in r.json()["message"]


# -- the viewer behind the sign-in -------------------------------------------------------


def test_the_viewer_sends_strangers_to_sign_in_and_back(site: Site) -> None:
    with site.client() as c:
        r = c.get("/viewer/")
        assert r.status_code == 303 and r.headers["location"] == "./../login?next=viewer%2F"
        r = c.get("/viewer/viewer", params={"StudyInstanceUIDs": site.study})
        assert r.status_code == 303
        assert r.headers["location"].startswith(
            "./../login?next=viewer%2Fviewer%3FStudyInstanceUIDs"
        )
        # the bundle's files and configuration stay open: no patient data in them
        assert c.get("/viewer/app.bundle.0123456789abcdef.js").status_code == 200
        config = c.get("/viewer/app-config.js")
        assert config.status_code == 200 and "httpErrorHandler" in config.text
        assert sign_in(c, "viewer1").status_code == 303
        page = c.get("/viewer/viewer", params={"StudyInstanceUIDs": site.study})
        assert page.status_code == 200 and 'id="pictor-sign-out"' in page.text
        assert 'action="./../logout"' in page.text and "Signed in as viewer1" in page.text


def test_an_invoke_image_display_link_goes_through_the_sign_in(site: Site) -> None:
    """IHE RAD TF-2 4.106: an EMR opens the link in a browser; a person who has not
    signed in signs in first and lands on the study."""
    params = {"requestType": "STUDY", "studyUID": site.study}
    page = {"Accept": "text/html,application/xhtml+xml"}
    with site.client() as c:
        r = c.get("/IHEInvokeImageDisplay", params=params, headers=page)
        assert r.status_code == 303 and r.headers["location"].startswith(
            "login?next=IHEInvokeImageDisplay%3FrequestType%3DSTUDY"
        )
        next_page = r.headers["location"].split("next=", 1)[1]
        # a program (no text/html) gets the 401 it can act on
        assert c.get("/IHEInvokeImageDisplay", params=params).status_code == 401
        signed = c.post(
            "/login",
            content=f"username=viewer1&password={PASSWORD.replace(' ', '+')}&next={next_page}",
            headers={"Origin": site.origin, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert signed.status_code == 303
        assert signed.headers["location"].startswith("IHEInvokeImageDisplay?requestType=STUDY")
        opened = c.get("/" + signed.headers["location"], headers=page)
        assert opened.status_code == 303 and site.study in opened.headers["location"]


def test_user_cli(site: Site) -> None:
    bad = site.user("add", "eve", "--role", "superuser")
    assert bad.returncode != 0 and "role must be one of" in bad.stderr
    short = site.user("add", "eve", "--role", "viewer", password="short")
    assert short.returncode != 0 and "at least 8" in short.stderr
    assert site.user("add", "bad name!", "--role", "viewer").returncode != 0
    no_tty = pictor_cli("user", "add", "eve", "--role", "viewer", data_dir=site.data, stdin="")
    assert no_tty.returncode != 0 and "--password-stdin" in no_tty.stderr
    site.add("eve", "radiologist")
    again = site.user("add", "eve", "--role", "viewer")
    assert again.returncode != 0 and "exists" in again.stderr
    assert site.user("disable", "nobody-at-all").returncode != 0
    listed = site.user("list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["eve"]["role"] == "radiologist" and rows["eve"]["scopes"] == ["read", "worklist"]
    assert rows["eve"]["disabled"] is None
    # the password is kept as argon2id, never in clear
    stored = site.archive.query("SELECT password_hash FROM app_user WHERE name = 'eve'")[0][0]
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_an_ended_session_stops_working_at_once_in_every_worker(
    tmp_path: Path, pictor: Pictor
) -> None:
    """Two workers, each caching verified sessions for 5 s (the default): a sign-out
    or a disabled account is announced through the index, and no worker's cache
    accepts the session afterwards."""
    data = tmp_path / "data"
    process = pictor(data, workers=2, env={"PICTOR_AUTH": "true"})
    site = Site(Archive(process), data, "")
    site.add("wanda", "viewer")
    for end in ("logout", "disable"):
        with site.client() as c:
            assert sign_in(c, "wanda").status_code == 303
            # enough requests, on fresh connections, for both workers to cache it
            cookie = {"pictor_session": c.cookies["pictor_session"]}
            for _ in range(16):
                r = httpx.get(process.base + "/dicom-web/studies", cookies=cookie)
                assert r.status_code == 200
            if end == "logout":
                assert c.post("/logout", headers={"Origin": site.origin}).status_code == 303
            else:
                assert site.user("disable", "wanda").returncode == 0
            statuses = {
                httpx.get(process.base + "/dicom-web/studies", cookies=cookie).status_code
                for _ in range(16)
            }
            assert statuses == {401}, (end, statuses)
        assert site.user("enable", "wanda").returncode == 0


def test_with_an_identity_provider_the_viewer_signs_in_there(
    tmp_path: Path, pictor: Pictor
) -> None:
    """With PICTOR_OIDC_CLIENT_ID, /login hands over to the viewer's OIDC client, whose
    configuration names the provider; the viewer's pages load without a session (OHIF
    itself sends strangers to the provider). The real provider and browser run in
    tests/e2e/browser/test_ohif.py."""
    process = pictor(
        tmp_path / "data",
        workers=1,
        env={
            "PICTOR_AUTH": "true",
            "PICTOR_VIEWER_DIR": str(stand_in_viewer(tmp_path / "bundle")),
            "PICTOR_OIDC_ISSUER": "https://idp.example.org/realms/h",
            "PICTOR_OIDC_AUDIENCE": "pictor-api",
            "PICTOR_OIDC_JWKS_URL": "https://idp.example.org/realms/h/certs",
            "PICTOR_OIDC_CLIENT_ID": "pictor-viewer",
            "PICTOR_OIDC_ROLES_CLAIM": "realm_access.roles",
        },
    )
    r = httpx.get(process.base + "/login", params={"next": "viewer/viewer?StudyInstanceUIDs=1.2"})
    assert r.status_code == 303 and r.headers["location"] == "viewer/viewer?StudyInstanceUIDs=1.2"
    assert (
        httpx.get(process.base + "/login", params={"next": "//evil"}).headers["location"]
        == "viewer/"
    )
    page = httpx.get(process.base + "/viewer/viewer", params={"StudyInstanceUIDs": "1.2"})
    assert page.status_code == 200 and "pictor-sign-out" not in page.text
    config = httpx.get(process.base + "/viewer/app-config.js").text
    assert '"authority": "https://idp.example.org/realms/h"' in config
    assert '"client_id": "pictor-viewer"' in config and '"response_type": "code"' in config
    assert "end_session_endpoint" in config and "oidc.user:" in config
    # DICOMweb still wants a token
    assert httpx.get(process.dicomweb + "/studies").status_code == 401


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PICTOR_OIDC_CLIENT_ID": "v"}, "PICTOR_OIDC_JWKS_URL"),
        (
            {
                "PICTOR_OIDC_CLIENT_ID": "v",
                "PICTOR_OIDC_ISSUER": "https://idp",
                "PICTOR_OIDC_JWKS_URL": "https://idp/certs",
                "PICTOR_OIDC_VIEWER_SCOPE": "profile",
            },
            "must include openid",
        ),
        (
            {"PICTOR_SESSION_IDLE_SECONDS": "100", "PICTOR_SESSION_MAX_SECONDS": "50"},
            "PICTOR_SESSION_IDLE_SECONDS",
        ),
        ({"PICTOR_LOGIN_MAX_FAILURES": "0"}, "MAX_FAILURES"),
    ],
)
def test_sign_in_settings_are_checked_at_start(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    done = pictor_cli("serve", "--auth", data_dir=tmp_path / "data", env=env)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-500:]
