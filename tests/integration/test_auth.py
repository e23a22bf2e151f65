"""Access control and the audit trail (issue #8) on a real ``pictor serve --auth``.

Bearer tokens per RFC 6750 (401 / 403 with ``WWW-Authenticate``), API tokens made with
the real CLI, OIDC JWTs (RFC 7519) signed by keys this test generates and publishes as a
JWK Set (RFC 7517) from a loopback HTTP server, study links, the append-only audit trail
and its FHIR AuditEvent export (IHE BALP), DIMSE peers, HTTPS and the loopback-only rule.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind
from tls import self_signed
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from app.auth import links

from conftest import Archive, Pictor, content_type, multipart
from server import PictorProcess, free_port
from synth import ct_slice, new_uids, rejection_note, sop_instance_uid

PICTOR = [sys.executable, "-m", "app.cli"]
ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://idp.test/realms/pictor"
AUDIENCE = "pictor-api"
PEER = "TESTSCU"


# -- a JWKS endpoint on loopback --------------------------------------------------------


class Jwks:
    """Signing keys and the JWK Set (RFC 7517) published for them."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.published: list[dict[str, Any]] = []
        self.fetches = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                jwks.fetches += 1
                body = json.dumps({"keys": jwks.published}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, kid: str, kind: str = "RSA", publish: bool = True) -> None:
        if kind == "RSA":
            key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            jwk["alg"] = "RS256"
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            jwk["alg"] = "ES256"
        self.keys[kid] = key
        if publish:
            self.publish(kid)

    def publish(self, kid: str) -> None:
        key = self.keys[kid]
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            jwk["alg"] = "RS256"
        else:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            jwk["alg"] = "ES256"
        jwk.update(kid=kid, use="sig")
        self.published.append(jwk)

    def token(self, kid: str = "rsa-1", **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
            "scope": "openid read",
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        key = self.keys[kid]
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- the archive under test -------------------------------------------------------------


@dataclass
class Secured:
    archive: Archive
    jwks: Jwks
    dimse_port: int
    tokens: dict[str, str]
    study: str
    series: str
    sop: str
    other: str
    other_series: str
    other_sop: str

    @property
    def base(self) -> str:
        return self.archive.process.base

    def get(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.request(
            kw.pop("method", "GET"), self.base + path, headers=headers, timeout=60, **kw
        )

    def audit(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return self.archive.query(sql, *args)

    def wait_audit(self, where: str, *args: Any, count: int = 1) -> list[asyncpg.Record]:
        """Audit rows matching ``where`` once the batched writer has flushed them."""
        deadline = time.monotonic() + 10
        while True:
            rows = self.audit(f"SELECT * FROM audit_event WHERE {where} ORDER BY id", *args)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.2)


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICTOR_")}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [*PICTOR, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


def make_token(data_dir: Path, name: str, scopes: str) -> str:
    done = cli(data_dir, "token", "create", "--name", name, "--scopes", scopes)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    jwks = Jwks()
    jwks.add("rsa-1")
    jwks.add("ec-1", "EC")
    dimse_port = free_port()
    data = tmp_path_factory.mktemp("secured") / "data"
    process = PictorProcess(
        data,
        env={
            "PICTOR_AUTH": "true",
            "PICTOR_OIDC_ISSUER": ISSUER,
            "PICTOR_OIDC_AUDIENCE": AUDIENCE,
            "PICTOR_OIDC_JWKS_URL": jwks.url,
            "PICTOR_OIDC_ROLES_CLAIM": "realm_access.roles",
            "PICTOR_OIDC_JWKS_COOLDOWN": "0.5",
            "PICTOR_AUTH_CACHE_SECONDS": "1",
            "PICTOR_DIMSE_PORT": str(dimse_port),
            "PICTOR_DIMSE_PEERS": f"{PEER}@127.0.0.1:{free_port()}",
        },
    ).start()
    archive = Archive(process)
    try:
        tokens = {
            "reader": make_token(data, "reader", "read"),
            "writer": make_token(data, "writer", "write"),
            "admin": make_token(data, "admin", "read,write,admin"),
            "readwrite": make_token(data, "readwrite", "read,write"),
        }
        study, series = new_uids()
        other, other_series = new_uids()
        files = [ct_slice(study, series, 0, rows=64, cols=64, patient_id="AUTHPAT")]
        files.append(ct_slice(other, other_series, 0, rows=64, cols=64, patient_id="OTHERPAT"))
        r = httpx.post(
            process.dicomweb + "/studies",
            content=multipart(files),
            headers={"Content-Type": content_type(), "Authorization": f"Bearer {tokens['writer']}"},
        )
        assert r.status_code == 200, r.text
        yield Secured(
            archive,
            jwks,
            dimse_port,
            tokens,
            study,
            series,
            sop_instance_uid(series, 0),
            other,
            other_series,
            sop_instance_uid(other_series, 0),
        )
    finally:
        archive.http.close()
        process.stop()
        jwks.server.shutdown()


def read_routes(study: str, series: str, sop: str) -> list[str]:
    """Every read route of PS3.18 (QIDO, WADO, rendered, thumbnails) and IHE IID."""
    s = f"/dicom-web/studies/{study}"
    se = f"{s}/series/{series}"
    i = f"{se}/instances/{sop}"
    return [
        f"{s}",
        f"{s}/metadata",
        f"{s}/series",
        f"{s}/instances",
        f"{s}/rendered",
        f"{s}/thumbnail",
        f"{se}",
        f"{se}/metadata",
        f"{se}/instances",
        f"{se}/rendered",
        f"{se}/thumbnail",
        f"{i}",
        f"{i}/metadata",
        f"{i}/rendered",
        f"{i}/thumbnail",
        f"{i}/frames/1",
        f"{i}/frames/1/rendered",
        f"{i}/frames/1/thumbnail",
        f"{i}/bulk/7FE00010",
        f"/IHEInvokeImageDisplay?requestType=STUDY&studyUID={study}",
    ]


SEARCHES = ["/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances"]
ADMIN = [("GET", "/metrics"), ("GET", "/admin/tokens"), ("POST", "/admin/links")]


def all_routes(s: Secured) -> list[tuple[str, str]]:
    routes = [("GET", p) for p in SEARCHES + read_routes(s.study, s.series, s.sop)]
    routes += [("GET", "/fhir/ImagingStudy?accession=A"), ("GET", f"/fhir/ImagingStudy/{s.study}")]
    routes += [("POST", "/dicom-web/studies"), ("POST", f"/dicom-web/studies/{s.study}")]
    return routes + UPS + ADMIN + [("DELETE", "/admin/tokens/reader")]


#: UPS-RS (issue #18): performers write; watchers (search, retrieve, subscriptions and
#: the notification channel's GET) read
_W = "/dicom-web/workitems/1.2.3"
UPS = [
    ("POST", "/dicom-web/workitems"),
    ("GET", "/dicom-web/workitems"),
    ("GET", _W),
    ("POST", _W),
    ("PUT", f"{_W}/state"),
    ("POST", f"{_W}/cancelrequest"),
    ("POST", f"{_W}/subscribers/AE1"),
    ("DELETE", f"{_W}/subscribers/AE1"),
    ("POST", "/dicom-web/workitems/1.2.840.10008.5.1.4.34.5/subscribers/AE1/suspend"),
    ("GET", "/dicom-web/subscribers/AE1"),
]


def _needed(method: str, path: str) -> str:
    if path.startswith(("/admin", "/metrics")):
        return "admin"
    if "/subscribers/" in path:
        return "read"
    return "write" if method in ("POST", "PUT") else "read"


# -- 401 / 403 ------------------------------------------------------------------------------


def test_every_route_without_a_token_is_401(secured: Secured) -> None:
    for method, path in all_routes(secured):
        r = secured.get(path, method=method)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["www-authenticate"] == 'Bearer realm="pictor"'  # RFC 6750 3
        assert r.json() == {"status": 401, "message": r.json()["message"]}
        bad = secured.get(path, "pt_" + "x" * 43, method=method)
        assert bad.status_code == 401, (method, path)
        assert 'error="invalid_token"' in bad.headers["www-authenticate"]


def test_open_routes_stay_open(secured: Secured) -> None:
    assert secured.get("/health").status_code == 200
    assert secured.get("/viewer/").status_code in (200, 404)  # bundle or "not installed"
    assert secured.get("/fhir/metadata").status_code == 200  # FHIR clients read it first
    preflight = secured.get(
        "/dicom-web/studies",
        method="OPTIONS",
        headers={"Origin": "https://x.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code not in (401, 403)


def test_wrong_scope_is_403(secured: Secured) -> None:
    t = secured.tokens
    for method, path in all_routes(secured):
        needed = _needed(method, path)
        wrong = {"read": t["writer"], "write": t["reader"], "admin": t["readwrite"]}[needed]
        r = secured.get(path, wrong, method=method)
        assert r.status_code == 403, (method, path, r.status_code)
        challenge = r.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge and f'scope="{needed}"' in challenge
        assert r.json()["status"] == 403


def test_right_scope_passes(secured: Secured) -> None:
    t = secured.tokens
    s, se, i = secured.study, secured.series, secured.sop
    assert secured.get(f"/dicom-web/studies/{s}/metadata", t["reader"]).status_code == 200
    frame = secured.get(
        f"/dicom-web/studies/{s}/series/{se}/instances/{i}/frames/1",
        t["reader"],
        headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
    )
    assert frame.status_code == 200  # through the frames fast path, behind the check
    assert secured.get("/metrics", t["admin"]).status_code == 200
    # RFC 6750 2.3: the access_token query parameter, removed before QIDO sees it
    r = secured.get(f"/dicom-web/studies?PatientID=AUTHPAT&access_token={t['reader']}")
    assert r.status_code == 200 and len(r.json()) == 1


def test_the_notification_channel_is_guarded_as_the_get_it_opens_with(secured: Secured) -> None:
    """The UPS-RS channel (PS3.18 11.13) is a WebSocket whose handshake is a GET (RFC
    6455 4.1): it needs the read scope like any read, refused before the upgrade with
    the same answers; a study link may not watch the worklist; the audit names it."""
    t = secured.tokens
    channel = secured.base.replace("http://", "ws://") + "/dicom-web/subscribers/AUTHWS"
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer pt_" + "x" * 43}, 401),
        ({"Authorization": f"Bearer {t['writer']}"}, 403),
        ({"Authorization": f"Bearer {_link(secured, secured.study).rsplit('/', 1)[1]}"}, 404),
    ):
        with pytest.raises(InvalidStatus) as refused:
            connect(channel, additional_headers=headers, open_timeout=10)
        assert refused.value.response.status_code == status, headers
    with (
        connect(channel, additional_headers={"Authorization": f"Bearer {t['reader']}"}) as ws,
        pytest.raises(TimeoutError),
    ):
        ws.recv(timeout=0.5)
    with (
        connect(f"{channel}?access_token={t['reader']}") as ws,
        pytest.raises(TimeoutError),
    ):  # RFC 6750 2.3: browsers
        ws.recv(timeout=0.5)
    rows = secured.wait_audit("action = 'ups-channel' AND status = 101", count=2)
    assert len(rows) >= 2 and {r["who"] for r in rows} == {"token:reader"}


def test_delete_needs_the_delete_scope_which_admin_includes(secured: Secured) -> None:
    """Issue #15: DELETE takes scope delete (or admin); the trash, corrections and merge
    take admin; a study link changes nothing. The delete's audit event names the token."""
    t = secured.tokens
    data = secured.archive.data_dir
    deleter = make_token(data, "deleter", "delete")
    studies = []
    for _ in range(2):
        study, series = new_uids()
        r = secured.get(
            "/dicom-web/studies",
            t["writer"],
            method="POST",
            content=multipart([ct_slice(study, series, 0, rows=16, cols=16)]),
            headers={"Content-Type": content_type()},
        )
        assert r.status_code == 200, r.text
        studies.append(study)
    path = f"/dicom-web/studies/{studies[0]}"
    for name in ("reader", "writer", "readwrite"):
        r = secured.get(path, t[name], method="DELETE")
        assert r.status_code == 403, name
        assert 'scope="delete"' in r.headers["www-authenticate"]
    link = _link(secured, studies[0]).rsplit("/", 1)[1]
    assert secured.get(path, link, method="DELETE").status_code == 403
    assert secured.get(path, deleter, method="DELETE").status_code == 204
    assert (
        secured.get(f"/dicom-web/studies/{studies[1]}", t["admin"], method="DELETE").status_code
        == 204
    )
    # the trash and corrections are admin work, even for a deleter
    for method, admin_path in [
        ("GET", "/admin/trash"),
        ("POST", "/admin/trash/restore"),
        ("DELETE", "/admin/trash"),
        ("POST", f"/admin/studies/{studies[0]}/update"),
        ("POST", "/admin/patients/merge"),
    ]:
        assert secured.get(admin_path, deleter, method=method).status_code == 403, admin_path
        assert secured.get(admin_path, method=method).status_code == 401, admin_path
    restored = secured.get(
        "/admin/trash/restore", t["admin"], method="POST", json={"study": studies[0]}
    )
    assert restored.status_code == 200 and restored.json()["instances"] == 1
    rows = secured.audit(
        "SELECT who, detail FROM audit_event WHERE action = 'delete' AND $1 = ANY(study_uids)"
        " AND detail IS NOT NULL",
        studies[0],
    )
    assert [r[0] for r in rows] == ["token:deleter"]


def test_a_write_token_cannot_purge_through_a_rejection_note(secured: Secured) -> None:
    """A 113039 note ("Data Retention Policy Expired") purges at once only for a storer
    that may delete; from a write-only token what it rejects waits in the trash."""
    study, series = new_uids()
    sop = sop_instance_uid(series, 0)
    note = rejection_note(study, new_uids()[1], [(series, sop)], "113039")
    for body in ([ct_slice(study, series, 0, rows=16, cols=16)], [note]):
        r = secured.get(
            "/dicom-web/studies",
            secured.tokens["writer"],
            method="POST",
            content=multipart(body),
            headers={"Content-Type": content_type()},
        )
        assert r.status_code == 200, r.text
    trashed = secured.audit("SELECT reason FROM trash_instance WHERE sop_instance_uid = $1", sop)
    assert [t[0] for t in trashed] == ["rejected:113039"]  # hidden, not destroyed
    r = secured.get(
        f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata",
        secured.tokens["reader"],
    )
    assert r.status_code == 404


# -- study links ----------------------------------------------------------------------------


def _link(secured: Secured, study: str, ttl: str = "1h") -> str:
    done = cli(secured.archive.data_dir, "link", study, "--ttl", ttl, "--base-url", secured.base)
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert url.startswith(f"{secured.base}/link/pl_")
    return url


def test_link_reads_its_study_only(secured: Secured) -> None:
    url = _link(secured, secured.study)
    token = url.rsplit("/", 1)[1]
    # any other study: 404, as if it did not exist
    for path in read_routes(secured.other, secured.other_series, secured.other_sop):
        r = secured.get(path, token)
        assert r.status_code == 404, (path, r.status_code)
    # its own study reads
    s, se, i = secured.study, secured.series, secured.sop
    assert secured.get(f"/dicom-web/studies/{s}/metadata", token).status_code == 200
    assert (
        secured.get(f"/dicom-web/studies/{s}/series/{se}/instances/{i}/frames/1", token).status_code
        == 200
    )
    # searches across the archive are confined to the linked study: the study is ANDed
    # with the parsed query, so no spelling of the key (issue #13, item 2) widens it
    o = secured.other
    naming_the_other = [
        f"?StudyInstanceUID={o}",
        f"?0020000D={o}",
        f"?StudyInstanceUID+={o}",  # a trailing space in the key
        f"?+StudyInstanceUID={o}",  # a leading one
        f"?%20StudyInstanceUID%20={o}",
        f"?0020000d={o}",  # the tag in lower case
        f"?%200020000D={o}",
        f"?StudyInstanceUID={o}&StudyInstanceUID={s}",  # a repeated key is a list
        f"?StudyInstanceUID={o},{s}",
        f"?StudyInstanceUID={o}%5C{s}",
        "?StudyInstanceUID=*",
        "?StudyInstanceUID=",
        f"?PatientID=OTHERPAT&StudyInstanceUID+={o}",
    ]
    for path in SEARCHES:
        r = secured.get(path, token)
        assert r.status_code == 200
        assert {item["0020000D"]["Value"][0] for item in r.json()} == {s}, path
        for query in naming_the_other:
            r = secured.get(path + query, token)
            assert r.status_code in (200, 400), (path, query, r.status_code)
            if r.status_code == 200:
                studies = {item["0020000D"]["Value"][0] for item in r.json()}
                assert studies <= {s}, (path, query)
    # IHE Invoke Image Display searches are confined the same way
    iid = secured.get("/IHEInvokeImageDisplay?requestType=PATIENT&patientID=OTHERPAT", token)
    assert iid.status_code == 404
    iid = secured.get(f"/IHEInvokeImageDisplay?requestType=STUDY&studyUID={o},{s}", token)
    assert iid.status_code == 303 and o not in iid.headers["location"]
    # FHIR (issue #18) is not for study links: not even the linked study, as if absent
    for fhir in (f"/fhir/ImagingStudy/{s}", f"/fhir/ImagingStudy?identifier=urn:oid:{s}"):
        assert secured.get(fhir, token).status_code == 404, fhir
    assert secured.get(f"/fhir/ImagingStudy?identifier=urn:oid:{o}", token).status_code == 404
    # writes and admin are refused
    assert secured.get("/dicom-web/studies", token, method="POST").status_code == 403
    assert secured.get("/metrics", token).status_code == 403
    assert secured.get("/admin/tokens", token).status_code == 403


def test_link_url_sets_a_cookie_and_opens_the_viewer(secured: Secured) -> None:
    url = _link(secured, secured.study)
    r = httpx.get(url)
    assert r.status_code == 303
    assert r.headers["location"] == f"../viewer?StudyInstanceUIDs={secured.study}"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    token = url.rsplit("/", 1)[1]
    assert cookie.startswith(f"pictor_link={token};")
    jar = {"pictor_link": token}
    ok = httpx.get(f"{secured.base}/dicom-web/studies/{secured.study}/metadata", cookies=jar)
    assert ok.status_code == 200
    other = httpx.get(f"{secured.base}/dicom-web/studies/{secured.other}/metadata", cookies=jar)
    assert other.status_code == 404


def test_expired_and_tampered_links_are_401(secured: Secured) -> None:
    # the archive's secret is in the index, shared by every node (issue #16)
    (row,) = secured.archive.query("SELECT value FROM archive_secret WHERE name = 'link-secret'")
    secret = row["value"].encode()
    assert len(secret) == 64 and not (secured.archive.data_dir / "link-secret").exists()
    expired, _ = links.sign(secret, secured.study, 60, now=time.time() - 3600)
    good = _link(secured, secured.study).rsplit("/", 1)[1]
    body, mac = good[3:].split(".")
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    forged_payload = payload.replace(secured.study.encode(), secured.other.encode())
    forged = f"pl_{_b64(forged_payload)}.{mac}"  # another study, the old signature
    flipped = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
    for token in (expired, forged, flipped):
        for method, path in all_routes(secured):
            r = secured.get(path, token, method=method)
            assert r.status_code == 401, (token, method, path, r.status_code)
            assert 'error="invalid_token"' in r.headers["www-authenticate"]
        assert httpx.get(f"{secured.base}/link/{token}").status_code == 401


# -- JWTs -----------------------------------------------------------------------------------


def test_jwts(secured: Secured) -> None:
    jwks = secured.jwks
    path = f"/dicom-web/studies/{secured.study}/metadata"
    assert secured.get(path, jwks.token()).status_code == 200  # RS256
    assert secured.get(path, jwks.token("ec-1")).status_code == 200  # ES256
    assert secured.get(path, jwks.token(scope=None, scp=["read"])).status_code == 200
    roles = jwks.token(scope=None, realm_access={"roles": ["pictor:read"]})
    assert secured.get(path, roles).status_code == 200
    assert secured.get(path, jwks.token(scope="openid")).status_code == 403
    assert (
        secured.get("/dicom-web/studies", jwks.token(scope="write"), method="POST").status_code
        != 403
    )

    def refused(token: str) -> str:
        r = secured.get(path, token)
        assert r.status_code == 401, r.text
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        return str(r.json()["message"])

    now = int(time.time())
    refused(jwks.token(exp=now - 600, iat=now - 900))
    refused(jwks.token(aud="someone-else"))
    refused(jwks.token(iss="https://evil.test"))
    refused(jwks.token(exp=None))
    # alg none (RFC 7519 6.1: an unsecured JWT)
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode())
    claims = _b64(
        json.dumps(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 300, "scope": "read"}
        ).encode()
    )
    assert "algorithm" in refused(f"{header}.{claims}.")
    # HS256 with the RSA public key as the HMAC secret (algorithm confusion)
    pem = (
        jwks.keys["rsa-1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    mac = hmac.new(pem, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    refused(f"{header}.{claims}.{_b64(mac)}")
    # a forged signature
    good = jwks.token()
    refused(good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"))


def test_jwks_rotation(secured: Secured) -> None:
    """An unknown key id is refused; once the issuer publishes it, it works (the JWK Set
    is fetched again on an unknown kid)."""
    jwks = secured.jwks
    jwks.add("rsa-2", publish=False)
    path = f"/dicom-web/studies/{secured.study}/metadata"
    token = jwks.token("rsa-2")
    time.sleep(0.6)  # PICTOR_OIDC_JWKS_COOLDOWN=0.5 here (10 s by default)
    fetches = jwks.fetches
    r = secured.get(path, token)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert jwks.fetches == fetches + 1  # an unknown kid made it look again
    jwks.publish("rsa-2")
    time.sleep(0.6)
    for _ in range(4):  # each server process fetches the set for itself
        assert secured.get(path, jwks.token("rsa-2")).status_code == 200


# -- API tokens through the CLI ---------------------------------------------------------------


def test_token_cli_create_list_revoke(secured: Secured) -> None:
    data = secured.archive.data_dir
    token = make_token(data, "script-1", "read")
    assert token.startswith("pt_") and len(token) > 40
    path = f"/dicom-web/studies/{secured.study}/metadata"
    assert secured.get(path, token).status_code == 200
    listed = cli(data, "token", "list")
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if x.startswith("script-1\t"))
    assert "\tread\t" in line and line.endswith("active")
    assert token not in listed.stdout
    stored = secured.audit("SELECT token_hash FROM api_token WHERE name = 'script-1'")
    assert stored[0]["token_hash"] == hashlib.sha256(token.encode()).digest()
    assert cli(data, "token", "create", "--name", "script-1").returncode != 0  # name taken
    assert cli(data, "token", "create", "--name", "x", "--scopes", "sudo").returncode != 0
    done = cli(data, "token", "revoke", "script-1")
    assert done.returncode == 0, done.stderr
    time.sleep(1.2)  # PICTOR_AUTH_CACHE_SECONDS=1 here
    assert secured.get(path, token).status_code == 401
    assert cli(data, "token", "list").stdout.count("revoked") >= 1
    assert cli(data, "token", "revoke", "script-1").returncode != 0


def test_admin_api_links_and_tokens(secured: Secured) -> None:
    admin = secured.tokens["admin"]
    r = secured.get(
        "/admin/links", admin, method="POST", json={"study": secured.study, "ttl": "10m"}
    )
    assert r.status_code == 201, r.text
    url = r.json()["url"]
    assert url.startswith(f"{secured.base}/link/pl_")
    for ttl in ("\u00b2h", "9" * 5000, "1.5h", "", "-1m"):  # never a 500
        bad = secured.get(
            "/admin/links", admin, method="POST", json={"study": secured.study, "ttl": ttl}
        )
        assert bad.status_code == 400 and "TTL" in bad.json()["message"], (ttl[:10], bad.text)
    assert (
        secured.get(f"/dicom-web/studies/{secured.study}/metadata", r.json()["token"]).status_code
        == 200
    )
    r = secured.get(
        "/admin/tokens", admin, method="POST", json={"name": "api-made", "scopes": ["read"]}
    )
    assert r.status_code == 201
    made = r.json()["token"]
    assert secured.get("/dicom-web/studies", made).status_code == 200
    names = [t["name"] for t in secured.get("/admin/tokens", admin).json()]
    assert "api-made" in names and "reader" in names
    assert secured.get("/admin/tokens/api-made", admin, method="DELETE").status_code == 204


# -- the audit trail ------------------------------------------------------------------------


def test_audit_rows_for_each_kind_of_access(secured: Secured) -> None:
    t = secured.tokens
    s, se, i = secured.study, secured.series, secured.sop
    marker = f"AUDIT{uuid.uuid4().hex[:8].upper()}"
    start = dt.datetime.now(dt.UTC)
    # QIDO, WADO, frames, rendered (read token); anonymous 401; wrong scope 403; link 404
    assert secured.get(f"/dicom-web/studies?PatientID={marker}", t["reader"]).status_code == 200
    assert (
        secured.get(f"/dicom-web/studies/{s}/series/{se}/metadata", t["reader"]).status_code == 200
    )
    assert (
        secured.get(
            f"/dicom-web/studies/{s}/series/{se}/instances/{i}/frames/1", t["reader"]
        ).status_code
        == 200
    )
    assert (
        secured.get(
            f"/dicom-web/studies/{s}/series/{se}/instances/{i}/rendered", t["reader"]
        ).status_code
        == 200
    )
    assert secured.get(f"/dicom-web/studies/{s}/metadata").status_code == 401
    assert secured.get("/dicom-web/studies", t["reader"], method="POST").status_code == 403
    link = _link(secured, s).rsplit("/", 1)[1]
    assert secured.get(f"/dicom-web/studies/{secured.other}/metadata", link).status_code == 404
    # STOW: the stored instance's UIDs
    new_study, new_series = new_uids()
    r = httpx.post(
        secured.archive.process.dicomweb + "/studies",
        content=multipart([ct_slice(new_study, new_series, 0, rows=32, cols=32)]),
        headers={"Content-Type": content_type(), "Authorization": f"Bearer {t['writer']}"},
    )
    assert r.status_code == 200
    # a JWT
    assert secured.get(f"/dicom-web/studies/{s}/metadata", secured.jwks.token()).status_code == 200

    rows = secured.wait_audit("at >= $1", start, count=9)
    by = {(r["who"], r["action"], r["status"]): r for r in rows}
    qido = by[("token:reader", "qido-studies", 200)]
    assert qido["outcome"] == "success" and marker in qido["query"]
    assert qido["client"] == "127.0.0.1" and qido["method"] == "GET"
    meta = by[("token:reader", "wado-series-metadata", 200)]
    assert meta["study_uids"] == [s] and meta["series_uids"] == [se]
    frames = by[("token:reader", "wado-frames", 200)]
    assert (frames["study_uids"], frames["series_uids"], frames["sop_instance_uids"]) == (
        [s],
        [se],
        [i],
    )
    assert ("token:reader", "wado-instance-rendered", 200) in by
    anonymous = by[("anonymous", "wado-study-metadata", 401)]
    assert anonymous["outcome"] == "denied" and anonymous["study_uids"] == [s]
    assert by[("token:reader", "stow", 403)]["outcome"] == "denied"
    hidden = by[(f"link:{s}", "wado-study-metadata", 404)]
    assert hidden["outcome"] == "not-found" and hidden["study_uids"] == [secured.other]
    stow = by[("token:writer", "stow", 200)]
    assert stow["study_uids"] == [new_study]
    assert stow["sop_instance_uids"] == [sop_instance_uid(new_series, 0)]
    assert ("jwt:alice", "wado-study-metadata", 200) in by


def test_audit_table_is_append_only(secured: Secured) -> None:
    secured.get("/dicom-web/studies", secured.tokens["reader"])
    assert secured.wait_audit("true")
    for sql in (
        "UPDATE audit_event SET who = 'someone else'",
        "DELETE FROM audit_event",
        "TRUNCATE audit_event",
    ):
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            secured.audit(sql)


def test_dimse_peers_only_and_audited(secured: Secured) -> None:
    start = dt.datetime.now(dt.UTC)
    intruder = AE(ae_title="INTRUDER")
    intruder.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = intruder.associate("127.0.0.1", secured.dimse_port, ae_title="PICTOR")
    assert assoc.is_rejected
    peer = AE(ae_title=PEER)
    peer.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    peer.add_requested_context(CTImageStorage)
    assoc = peer.associate("127.0.0.1", secured.dimse_port, ae_title="PICTOR")
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = secured.study
        query.PatientID = ""
        answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        assert answers[-1][0].Status == 0
        study, series = new_uids()
        from pydicom import dcmread
        from pydicom.filebase import DicomBytesIO

        ds = dcmread(DicomBytesIO(ct_slice(study, series, 0, rows=32, cols=32)))
        assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()
    rows = secured.wait_audit("at >= $1 AND action LIKE 'dimse-%'", start, count=3)
    by = {(r["who"], r["action"]): r for r in rows}
    rejected = by[("aet:INTRUDER", "dimse-associate")]
    assert rejected["outcome"] == "denied" and rejected["client"] == "127.0.0.1"
    find = by[(f"aet:{PEER}", "dimse-c-find")]
    assert find["study_uids"] == [secured.study] and find["status"] == 0
    assert "QueryRetrieveLevel=STUDY" in find["query"]
    store = by[(f"aet:{PEER}", "dimse-c-store")]
    assert store["study_uids"] == [study] and store["series_uids"] == [series]
    assert store["outcome"] == "success"


def test_audit_cli_and_fhir_export(secured: Secured) -> None:
    s = secured.study
    secured.get(f"/dicom-web/studies/{s}/metadata", secured.tokens["reader"])
    secured.get(f"/dicom-web/studies/{s}/metadata")  # 401
    assert secured.wait_audit("$1 = ANY(study_uids) AND status = 401", s)
    data = secured.archive.data_dir
    text = cli(data, "audit", "--study", s, "--user", "token:reader")
    assert text.returncode == 0, text.stderr
    assert text.stdout and all(
        "token:reader" in line and s in line for line in text.stdout.splitlines()
    )
    by_patient = cli(data, "audit", "--patient", "AUTHPAT", "--since", "2000-01-01")
    lines = by_patient.stdout.splitlines()
    assert lines and all(s in line for line in lines)  # (the first STOW stored both studies)
    assert cli(data, "audit", "--until", "2000-01-01").stdout == ""

    done = cli(data, "audit", "--fhir", "--patient", "AUTHPAT")
    assert done.returncode == 0, done.stderr
    bundle = json.loads(done.stdout)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert bundle["total"] == len(bundle["entry"]) > 0
    outcomes = set()
    for entry in bundle["entry"]:
        uuid.UUID(entry["fullUrl"].removeprefix("urn:uuid:"))
        event = entry["resource"]
        # FHIR R4 AuditEvent: type 1..1, recorded 1..1, agent 1..*, source 1..1
        assert event["resourceType"] == "AuditEvent"
        assert {"system", "code"} <= set(event["type"])
        assert event["action"] in ("C", "R", "U", "D", "E")
        dt.datetime.fromisoformat(event["recorded"].replace("Z", "+00:00"))
        assert event["outcome"] in ("0", "4", "8", "12")
        outcomes.add(event["outcome"])
        assert event["agent"] and all(isinstance(a["requestor"], bool) for a in event["agent"])
        assert sum(a["requestor"] for a in event["agent"]) == 1
        assert event["source"]["observer"]
        entities = event["entity"]
        patients = [e for e in entities if e["role"]["code"] == "1"]
        assert "AUTHPAT" in [p["what"]["identifier"]["value"] for p in patients]
        studies = [e["what"]["identifier"]["value"] for e in entities if e["role"]["code"] == "3"]
        assert f"urn:oid:{s}" in studies
        for e in entities:
            if "query" in e:
                base64.b64decode(e["query"], validate=True)
    assert {"0", "4"} <= outcomes  # the read, and the refused one
    kinds = {e["resource"]["type"]["code"] for e in bundle["entry"]}
    assert "110106" in kinds  # Export: data left the archive


# -- HTTPS and the loopback-only rule -----------------------------------------------------------


def test_https(tmp_path: Path, pictor: Pictor) -> None:
    cert, key = self_signed(tmp_path)
    process = pictor(
        tmp_path / "data",
        workers=1,
        env={"PICTOR_TLS_CERT": str(cert), "PICTOR_TLS_KEY": str(key)},
    )
    assert process.base.startswith("https://127.0.0.1:")
    trusted = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(verify=trusted) as client:
        assert client.get(process.base + "/health").status_code == 200
        assert client.get(process.dicomweb + "/studies").status_code == 200
    with pytest.raises(httpx.ConnectError):  # not trusted without that certificate
        httpx.get(process.base + "/health", verify=ssl.create_default_context())
    # pictor health (the image's HEALTHCHECK) follows the port and TLS of the settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICTOR_")}
    env.update(PICTOR_PORT=str(process.port), PICTOR_TLS_CERT=str(cert), PICTOR_TLS_KEY=str(key))
    probe = subprocess.run(
        [*PICTOR, "health"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert f"https://127.0.0.1:{process.port}/health: ok" in probe.stdout


def test_non_loopback_without_auth_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICTOR_")}
    done = subprocess.run(
        [
            *PICTOR,
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
            "--dimse-port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode != 0
    assert "refusing to listen on 0.0.0.0 without access control" in done.stderr
    assert "--auth" in done.stderr and "--insecure-no-auth" in done.stderr
    assert not (tmp_path / "data" / "pg").exists()  # nothing was started


def test_insecure_flag_warns_loudly(tmp_path: Path) -> None:
    """With the explicit flag it starts (bound to 0.0.0.0 only for this moment; the test
    talks to 127.0.0.1 only) and logs a warning."""
    process = PictorProcess(
        tmp_path / "data",
        workers=1,
        env={"PICTOR_HOST": "0.0.0.0", "PICTOR_INSECURE_NO_AUTH": "true"},
    ).start()
    try:
        log = process.log_path.read_text()
        assert "INSECURE" in log and "WITHOUT ACCESS CONTROL" in log
    finally:
        assert process.stop() == 0


def test_links_issued_before_the_secret_moved_to_the_index_still_open(tmp_path: Path) -> None:
    """Before schema 10 the secret was the data directory's ``link-secret`` file; the
    first start after the upgrade makes that the archive's secret, so links already
    handed to an EMR keep working (and every node then shares it, issue #16)."""
    data = tmp_path / "data"
    data.mkdir()
    old = "ab" * 32
    (data / "link-secret").write_text(old + "\n")
    issued, _ = links.sign(old.encode(), "1.2.3.4", 3600)
    process = PictorProcess(data, workers=1, env={"PICTOR_AUTH": "true"}).start()
    archive = Archive(process)
    try:
        rows = archive.query("SELECT value FROM archive_secret WHERE name = 'link-secret'")
        assert [r["value"] for r in rows] == [old]
        opened = httpx.get(f"{process.base}/link/{issued}")
        assert opened.status_code == 303, opened.text
        forged, _ = links.sign(b"cd" * 32, "1.2.3.4", 3600)
        assert httpx.get(f"{process.base}/link/{forged}").status_code == 401
    finally:
        archive.http.close()
        process.stop()
