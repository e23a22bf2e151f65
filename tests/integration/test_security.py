"""Hostile input against a real ``pictor serve --auth`` (issue #13): each class of fault
the probe found, with several spellings of it, sent as raw bytes where a client library
would tidy the request up first. See docs/security.md for the threat model.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pydicom
import pytest
from pydicom.datadict import DicomDictionary
from pydicom.filebase import DicomBytesIO
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from app.dicomweb.qido import ClientGone, until_disconnect

from conftest import Archive, content_type, embedded_dsn, multipart
from server import PictorProcess, free_port
from synth import ct_slice, new_uids, sop_instance_uid

ROOT = Path(__file__).resolve().parents[2]
PEER = "SECSCU"  # known, but only from 127.0.0.2
NET_PEER = "SECNET"  # known from 127.0.0.0/30


def _cli(data_dir: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICTOR_")}
    env.pop("DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@dataclass
class Target:
    archive: Archive
    port: int
    dimse_port: int
    read: str
    write: str
    admin: str
    study: str
    series: str
    sop: str

    def raw(self, request: bytes, timeout: float = 10) -> bytes:
        """Send ``request`` as it is; the whole answer (until the server closes or the
        answer's Content-Length is in)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(request)
            return _read_answer(s)

    def get(self, target: str, token: str | None = None, method: str = "GET") -> bytes:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        head = f"{method} {target} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\n"
        return self.raw((head + "Connection: close\r\n\r\n").encode("latin-1"))

    def audit(self, sql: str, *args: object) -> list[asyncpg.Record]:
        return self.archive.query(sql, *args)


def _read_answer(s: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and len(body) >= int(value):
                    return data


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    dimse_port = free_port()
    data = tmp_path_factory.mktemp("security") / "data"
    peers = f"{PEER}@127.0.0.2:{free_port()},{NET_PEER}@127.0.0.0/30"
    process = PictorProcess(
        data,
        env={
            "PICTOR_AUTH": "true",
            "PICTOR_DIMSE_PORT": str(dimse_port),
            "PICTOR_DIMSE_PEERS": peers,
            "PICTOR_HEADER_TIMEOUT": "1",
            "PICTOR_BODY_TIMEOUT": "1",
            "PICTOR_AUTH_CACHE_SECONDS": "0",
        },
    ).start()
    archive = Archive(process)
    try:
        read = _cli(data, "token", "create", "--name", "reader", "--scopes", "read")
        write = _cli(data, "token", "create", "--name", "writer", "--scopes", "write")
        admin = _cli(data, "token", "create", "--name", "admin", "--scopes", "read,write,admin")
        study, series = new_uids()
        files = [
            ct_slice(study, series, i, rows=32, cols=32, patient_id="SECPAT") for i in range(2)
        ]
        r = httpx.post(
            process.dicomweb + "/studies",
            content=multipart(files),
            headers={"Content-Type": content_type(), "Authorization": f"Bearer {write}"},
        )
        assert r.status_code == 200, r.text
        yield Target(
            archive,
            process.port,
            dimse_port,
            read,
            write,
            admin,
            study,
            series,
            sop_instance_uid(series, 0),
        )
    finally:
        archive.http.close()
        process.stop()


# -- 1: access is decided on the path the router dispatches -----------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "//admin/tokens"),
        ("POST", "///admin//tokens/"),
        ("GET", "//admin/tokens"),
        ("POST", "//admin/links"),
        ("GET", "//metrics"),
        ("GET", "/metrics/"),
        ("DELETE", "//admin/tokens/admin"),
        ("POST", "//dicom-web/studies"),
        ("POST", "/dicom-web//studies"),
        ("POST", "/dicom-web/studies/"),
    ],
)
def test_doubled_slashes_need_the_same_scope_as_the_route(
    target: Target, method: str, path: str
) -> None:
    """Issue #13 item 1: a read token got an admin token from ``POST //admin/tokens``."""
    answer = target.get(path, target.read, method=method)
    assert status(answer) == 403, answer[:300]
    assert b"insufficient_scope" in answer


def test_a_read_token_cannot_mint_tokens_by_any_path(target: Target) -> None:
    before = target.audit("SELECT count(*) AS n FROM api_token")[0]["n"]
    payload = b'{"name": "evil", "scopes": ["admin"]}'
    for path in ("//admin/tokens", "/admin//tokens", "/%2Fadmin/tokens", "/admin%2Ftokens"):
        raw = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {target.read}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + payload
        assert status(target.raw(raw)) == 403, path
    assert target.audit("SELECT count(*) AS n FROM api_token")[0]["n"] == before


@pytest.mark.parametrize(
    "path",
    [
        "/admin/../admin/tokens",
        "/viewer/../admin/tokens",
        "/dicom-web/./studies",
        "/dicom-web/studies/%2e%2e/%2e%2e/admin/tokens",
        "/dicom-web/studies/%00",
    ],
)
def test_dot_segments_and_controls_are_400_before_anything(target: Target, path: str) -> None:
    answer = target.get(path, target.admin)
    assert status(answer) == 400, answer[:300]


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/nowhere", 404),
        ("GET", "/admin", 404),
        ("GET", "/dicom-web", 404),
        ("GET", "/dicom-web/studies/1.2/nonsense", 404),
        ("PUT", "/dicom-web/studies", 405),
        ("DELETE", "/dicom-web/studies/1.2/metadata", 405),
        ("PUT", "/dicom-web/studies/1.2", 405),
        ("PATCH", "/admin/tokens", 405),
        ("POST", "/metrics", 405),
    ],
)
def test_what_no_route_takes_is_refused_not_defaulted(
    target: Target, method: str, path: str, expected: int
) -> None:
    answer = target.get(path, target.read, method=method)
    assert status(answer) == expected, answer[:300]
    if expected == 405:
        assert b"\r\nallow: " in answer.lower()


def test_refusals_are_audited_by_their_route_never_as_other(target: Target) -> None:
    start = time.time()
    target.get("//admin/tokens", target.read, method="POST")
    target.get("/nowhere", target.read)
    deadline = time.monotonic() + 10
    wanted = {("admin-tokens-create", 403), ("unknown", 404)}
    actions: set[tuple[str, int]] = set()
    while not wanted <= actions and time.monotonic() < deadline:
        time.sleep(0.2)  # the audit trail is written in batches
        rows = target.audit(
            "SELECT action, status FROM audit_event WHERE at >= to_timestamp($1) ORDER BY id",
            start - 1,
        )
        actions = {(r["action"], r["status"]) for r in rows}
    assert ("admin-tokens-create", 403) in actions and ("unknown", 404) in actions
    assert all(r["action"] != "other" for r in rows)


# -- 3 and 5: every request dimension is bounded ---------------------------------------


def test_request_dimensions_are_bounded(target: Target) -> None:
    q = "/dicom-web/studies?"
    tags = [f"{tag:08X}" for tag in sorted(DicomDictionary) if tag < 0x7FE00000][:200]
    cases = {
        q + "includefield=" + ",".join(tags): b"includefield",
        q + "&".join(f"includefield={tag}" for tag in tags): b"includefield",
        q + "&".join(["PatientComments=x"] * 300): b"parameters",
        q + "StudyInstanceUID=" + ",".join(f"1.2.{i}" for i in range(600)): b"values",
        q + "orderby=" + ",".join(["StudyDate"] * 9): b"orderby",
        q + "PatientName=" + "A" * 2000: b"longer",
    }
    for path, word in cases.items():
        answer = target.get(path, target.read)
        assert status(answer) == 400, (path[:80], answer[:300])
        assert word in body(answer), (path[:80], body(answer))
    answer = target.get(q + "PatientName=" + "A" * 17000, target.read)
    assert status(answer) == 414


def test_many_keys_are_refused(target: Target) -> None:
    names = [
        entry[4] for tag, entry in sorted(DicomDictionary.items()) if entry[0] == "LO" and entry[4]
    ][:70]
    answer = target.get("/dicom-web/instances?" + "&".join(f"{n}=x" for n in names), target.read)
    assert status(answer) == 400 and b"matching keys" in body(answer), answer[:300]


def test_frame_lists_are_bounded_and_deduplicated(target: Target) -> None:
    t = target
    base = f"/dicom-web/studies/{t.study}/series/{t.series}/instances/{t.sop}/frames/"
    for frames in (",".join(["1"] * 30000), ",".join(["1"] * 1001), "1," + "9" * 40):
        answer = t.get(base + frames, t.read)
        assert status(answer) in (400, 414), answer[:200]
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    r = httpx.get(
        f"http://127.0.0.1:{t.port}{base}1,1,1",
        headers={"Authorization": f"Bearer {t.read}", "Accept": accept},
    )
    assert r.status_code == 200
    assert r.content.count(b"Content-Type: application/octet-stream") == 1  # one part
    decoded = httpx.get(
        f"http://127.0.0.1:{t.port}{base}1,1",
        headers={
            "Authorization": f"Bearer {t.read}",
            "Accept": "multipart/related; type=application/octet-stream",
        },
    )
    assert decoded.status_code == 200


def test_thumbnail_parameters_cannot_fill_the_cache(target: Target) -> None:
    t = target
    base = f"/dicom-web/studies/{t.study}/series/{t.series}/instances/{t.sop}/thumbnail"
    for query in ("", "?viewport=10,10", "?viewport=11,11", "?quality=7", "?window=40,400"):
        r = httpx.get(
            f"http://127.0.0.1:{t.port}{base}{query}",
            headers={"Authorization": f"Bearer {t.read}", "Accept": "image/jpeg"},
        )
        assert r.status_code == 200, (query, r.text)
    cached = list((t.archive.data_dir / "cache" / "thumbnails").glob(f"{t.sop}-*"))
    assert len(cached) == 1  # the default thumbnail only


def test_a_search_is_cancelled_in_the_database_when_the_client_leaves(target: Target) -> None:
    """The search's task is cancelled once ``http.disconnect`` arrives, and asyncpg then
    cancels the statement in PostgreSQL (checked in pg_stat_activity)."""
    dsn = embedded_dsn(target.archive.data_dir)

    async def run() -> list[asyncpg.Record]:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        assert pool is not None
        try:

            async def receive() -> dict[str, str]:
                await asyncio.sleep(0.5)
                return {"type": "http.disconnect"}

            with pytest.raises(ClientGone):
                await until_disconnect(pool.fetch("SELECT pg_sleep(60) AS marker"), receive)
            await asyncio.sleep(0.5)
            return await pool.fetch(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'"
                " AND state = 'active'"
            )
        finally:
            await pool.close()

    assert asyncio.run(run()) == []


# -- 4: hostile values are 400s naming the parameter; 5xx tell nothing ------------------


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("PatientName=%00", "PatientName"),
        ("PatientName=DOE%00*", "PatientName"),
        ("PatientID=%01%02", "PatientID"),
        ("AccessionNumber=A%0D%0AB", "AccessionNumber"),
        ("StudyDescription=%7F", "StudyDescription"),
        ("NumberOfStudyRelatedInstances=999999999999999999999999", "NumberOfStudyRelatedInstances"),
        ("PatientWeight=1e999", "PatientWeight"),
        ("PatientWeight=nan", "PatientWeight"),
        ("PatientWeight=1_0", "PatientWeight"),
        ("PatientSize=%D9%A1", "PatientSize"),  # an Arabic-Indic digit
        ("StudyDate=%FF", ""),  # not UTF-8
        ("limit=%D9%A1", "limit"),
    ],
)
def test_hostile_values_are_400_naming_the_parameter(target: Target, query: str, name: str) -> None:
    answer = target.get("/dicom-web/studies?" + query, target.read)
    assert status(answer) == 400, answer[:400]
    assert name.encode() in body(answer)
    assert b"asyncpg" not in answer and b"invalid byte" not in answer


@pytest.mark.parametrize(
    "query",
    [
        "InstanceNumber=999999999999999999999999",
        "InstanceNumber=-2147483649",
        "InstanceNumber=%00",
        "SeriesNumber=99999999999",
        "00200013=2147483648",
    ],
)
def test_hostile_values_at_every_level(target: Target, query: str) -> None:
    for path in ("/dicom-web/instances", f"/dicom-web/studies/{target.study}/instances"):
        answer = target.get(path + "?" + query, target.read)
        assert status(answer) == 400, (path, query, answer[:300])
        assert b"out of int32" not in answer


def test_hostile_c_find_values_are_a900_not_internal_errors(target: Target) -> None:
    ae = AE(ae_title=NET_PEER)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", target.dimse_port, ae_title="PICTOR")
    assert assoc.is_established
    try:
        for keyword, value in (("PatientName", "DOE\x00*"), ("StudyDescription", "x\x01")):
            ds = pydicom.Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            setattr(ds, keyword, value)
            ds.StudyInstanceUID = ""
            answers = list(assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind))
            final = answers[-1][0]
            assert final.Status == 0xA900, (keyword, hex(final.Status))
            assert "Postgres" not in str(final.get("ErrorComment", ""))
    finally:
        assoc.release()
    # the hostile keys are in the audit trail (escaped), and did not block it
    deadline = time.monotonic() + 10
    rows: list[asyncpg.Record] = []
    while not rows and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = target.audit(
            "SELECT query FROM audit_event WHERE action = 'dimse-c-find' AND query LIKE $1",
            "%DOE\\\\x00*%",
        )
    assert rows, "the C-FIND with a NUL in its keys was not audited"


# -- 6: DIMSE peers are known by AE title and address ---------------------------------


def _associate(port: int, aet: str, source: str) -> bool:
    ae = AE(ae_title=aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PICTOR", bind_address=(source, 0))
    ok = bool(assoc.is_established)
    if ok:
        assoc.release()
    return ok


def test_dimse_peers_must_call_from_their_address(target: Target) -> None:
    assert not _associate(target.dimse_port, PEER, "127.0.0.1")  # the right AE, wrong host
    assert _associate(target.dimse_port, PEER, "127.0.0.2")
    assert _associate(target.dimse_port, NET_PEER, "127.0.0.3")  # inside 127.0.0.0/30
    assert not _associate(target.dimse_port, NET_PEER, "127.0.0.9")
    assert not _associate(target.dimse_port, "NOBODY", "127.0.0.2")  # unknown AE title
    deadline = time.monotonic() + 10
    refused: set[tuple[str, str]] = set()
    wanted = {(f"aet:{PEER}", "127.0.0.1"), ("aet:NOBODY", "127.0.0.2")}
    while not wanted <= refused and time.monotonic() < deadline:
        time.sleep(0.2)  # the audit trail is written in batches
        rows = target.audit(
            "SELECT who, client FROM audit_event"
            " WHERE action = 'dimse-associate' AND outcome = 'denied'"
        )
        refused = {(r["who"], r["client"]) for r in rows}
    assert (f"aet:{PEER}", "127.0.0.1") in refused
    assert ("aet:NOBODY", "127.0.0.2") in refused


# -- 7: identifying UIDs have one value ---------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "values"),
    [
        ("SOPInstanceUID", ["1.2.3", "..", "x"]),
        ("SOPInstanceUID", ["1.2.3", "1.2.4"]),
        ("StudyInstanceUID", ["1.2.3", "1.2.4"]),
        ("SeriesInstanceUID", ["1.2.5", "1.2.6"]),
        ("SOPClassUID", [CTImageStorage, CTImageStorage]),
    ],
)
def test_multi_valued_uids_are_refused_with_a900(
    target: Target, keyword: str, values: list[str]
) -> None:
    study, series = new_uids()
    ds = pydicom.dcmread(DicomBytesIO(ct_slice(study, series, 0, rows=8, cols=8)))
    ds[keyword].VR = "UI"
    ds[keyword].value = values
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    r = httpx.post(
        f"http://127.0.0.1:{target.port}/dicom-web/studies",
        content=multipart([out.getvalue()]),
        headers={"Content-Type": content_type(), "Authorization": f"Bearer {target.write}"},
    )
    assert r.status_code == 409, r.text
    failed = r.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xA900]
    assert target.audit("SELECT 1 FROM study WHERE study_uid = $1", study) == []


def test_multi_valued_uids_are_refused_over_dimse_too(target: Target) -> None:
    study, series = new_uids()
    ds = pydicom.dcmread(DicomBytesIO(ct_slice(study, series, 0, rows=8, cols=8)))
    ds.StudyInstanceUID = [study, "1.2.3"]
    ae = AE(ae_title=NET_PEER)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", target.dimse_port, ae_title="PICTOR")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0xA900
    finally:
        assoc.release()


# -- 8: slow clients ------------------------------------------------------------------------


def test_a_head_that_never_ends_is_cut_off(target: Target) -> None:
    with socket.create_connection(("127.0.0.1", target.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        answer = _read_answer(s)
        assert status(answer) == 408 and time.monotonic() - start < 5
    with socket.create_connection(("127.0.0.1", target.port), timeout=10) as s:
        start = time.monotonic()
        closed = False
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for _ in range(40):  # a byte every 0.2 s: slowloris
            try:
                s.sendall(b"a")
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        assert closed or s.recv(100).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - start < 6
    with socket.create_connection(("127.0.0.1", target.port), timeout=10) as s:
        assert _read_answer(s).startswith(b"HTTP/1.1 408")  # silent from the start


def test_an_oversized_head_is_431(target: Target) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Junk: " + b"a" * 70000 + b"\r\n\r\n"
    assert status(target.raw(head)) == 431


def test_a_stalled_upload_is_408_and_keeps_nothing(target: Target) -> None:
    study, series = new_uids()
    payload = multipart([ct_slice(study, series, 0, rows=64, cols=64)])
    head = (
        "POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {target.write}\r\nContent-Type: {content_type()}\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", target.port), timeout=10) as s:
        s.sendall(head + payload[: len(payload) // 2])
        start = time.monotonic()
        answer = _read_answer(s)
        assert time.monotonic() - start < 5
    assert answer == b"" or status(answer) == 408
    time.sleep(0.5)
    assert target.audit("SELECT 1 FROM study WHERE study_uid = $1", study) == []
    assert target.archive.tmp_files() == []


# -- 9: credentials only where the README names them -----------------------------------


def test_credentials_only_where_documented(target: Target) -> None:
    t = target
    q = "/dicom-web/studies?PatientID=SECPAT"
    assert status(t.get(f"{q}&access_token={t.read}")) == 200  # RFC 6750 2.3, documented
    for extra in (
        f"&token={t.read}",
        f"&Access_Token={t.read}",
        f"&%61ccess_token={t.read}",
        f"&access_token%20={t.read}",
    ):
        answer = t.get(q + extra)
        assert status(answer) == 401, (extra, answer[:200])
    answer = t.get(f"{q}&access_token={t.read}&access_token={t.read}")
    assert status(answer) == 401
    # the study-link cookie carries a study link, never an API token
    raw = (
        f"GET {q} HTTP/1.1\r\nHost: x\r\nCookie: pictor_link={t.read}\r\nConnection: close\r\n\r\n"
    ).encode()
    assert status(t.raw(raw)) == 401
