"""UPS-RS, the worklist (PS3.18 11; PS3.4 CC), against a real ``pictor serve``: workitems
created, searched, claimed, updated and ended over HTTP, and their event reports read
from the notification channel with the ``websockets`` client (PS3.18 11.13)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from conftest import Archive

DICOM_JSON = {"Content-Type": "application/dicom+json"}
GLOBAL = "1.2.840.10008.5.1.4.34.5"
FILTERED = "1.2.840.10008.5.1.4.34.5.1"
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"

STATE, READINESS, TRANSACTION = "00741000", "00404041", "00081195"
EVENT_TYPE, AFFECTED = "00001002", "00001000"


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def workitem(priority: str = "MEDIUM", label: str = "Read CT head", **extra: Any) -> dict[str, Any]:
    """The attributes an SCU must give a new workitem (PS3.4 Table CC.2.5-3)."""
    return {
        STATE: element("CS", "SCHEDULED"),
        "00741200": element("CS", priority),
        "00741204": element("LO", label),
        "00404005": element("DT", "20261203090000"),
        READINESS: element("CS", "READY"),
        "00100010": element("PN", {"Alphabetic": "Doe^Jane"}),
        "00100020": element("LO", "UPS-PAT"),
        "0020000D": element("UI", generate_uid()),
        **extra,
    }


def value(attrs: dict[str, Any], tag: str) -> Any:
    values = attrs.get(tag, {}).get("Value") or [None]
    return values[0]


class Worklist:
    def __init__(self, archive: Archive) -> None:
        self.http = archive.http
        self.ws = archive.url.replace("http://", "ws://")

    def create(self, attrs: dict[str, Any], uid: str | None = None) -> str:
        uid = uid or generate_uid()
        r = self.http.post(f"/workitems?{uid}", content=json.dumps(attrs), headers=DICOM_JSON)
        assert r.status_code == 201, r.text
        assert r.headers["location"].endswith(f"/dicom-web/workitems/{uid}")
        return uid

    def get(self, uid: str) -> dict[str, Any]:
        r = self.http.get(f"/workitems/{uid}")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/dicom+json")
        items = r.json()
        assert len(items) == 1
        return items[0]  # type: ignore[no-any-return]

    def state(self, uid: str, state: str, transaction: str) -> httpx.Response:
        body = {STATE: element("CS", state), TRANSACTION: element("UI", transaction)}
        return self.http.put(
            f"/workitems/{uid}/state", content=json.dumps(body), headers=DICOM_JSON
        )

    def update(self, uid: str, attrs: dict[str, Any], transaction: str | None) -> httpx.Response:
        query = f"?transaction={transaction}" if transaction else ""
        return self.http.post(
            f"/workitems/{uid}{query}", content=json.dumps(attrs), headers=DICOM_JSON
        )

    @contextmanager
    def channel(self, aet: str) -> Iterator[ClientConnection]:
        with connect(f"{self.ws}/subscribers/{aet}", open_timeout=10) as ws:
            yield ws


def reports(ws: ClientConnection, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The next ``count`` event reports of a channel."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        out.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
    return out


def quiet(ws: ClientConnection, seconds: float = 1.5) -> None:
    """No event report arrives for a while."""
    with pytest.raises(TimeoutError):
        ws.recv(timeout=seconds)


def event(report: dict[str, Any]) -> tuple[str, int, str | None]:
    return value(report, AFFECTED), value(report, EVENT_TYPE), value(report, STATE)


@pytest.fixture
def worklist(archive: Archive) -> Worklist:
    return Worklist(archive)


def test_a_performer_claims_updates_and_completes_a_workitem(worklist: Worklist) -> None:
    """PS3.4 CC.1.1's life of a workitem, watched by a subscriber: SCHEDULED, IN PROGRESS
    (claimed with a Transaction UID that every later change must carry), COMPLETED once
    the final state requirements are met (CC.2.5.1.1)."""
    uid = worklist.create(workitem())
    stored = worklist.get(uid)
    assert value(stored, "00080016") == UPS_PUSH and value(stored, "00080018") == uid
    assert value(stored, STATE) == "SCHEDULED" and value(stored, "00741202") == "PICTOR"
    aet = "READER1"
    r = worklist.http.post(f"/workitems/{uid}/subscribers/{aet}")
    assert r.status_code == 201, r.text
    assert r.headers["content-location"] == f"{worklist.ws}/subscribers/{aet}"
    with worklist.channel(aet) as ws:
        (initial,) = reports(ws, 1)  # PS3.4 CC.2.3.2: a State Report on subscribing
        assert event(initial) == (uid, 1, "SCHEDULED")
        assert value(initial, READINESS) == "READY" and value(initial, "00000002") == UPS_PUSH
        transaction = generate_uid()
        assert worklist.state(uid, "COMPLETED", transaction).status_code == 409  # C310
        assert worklist.state(uid, "IN PROGRESS", transaction).status_code == 200
        assert event(reports(ws, 1)[0]) == (uid, 1, "IN PROGRESS")
        assert TRANSACTION not in worklist.get(uid)  # never returned (CC.2.7.3)
        again = worklist.state(uid, "IN PROGRESS", generate_uid())
        assert again.status_code == 409 and "incorrect" in again.json()["message"]  # C301
        assert worklist.state(uid, "IN PROGRESS", transaction).status_code == 409  # C302
        stolen = worklist.state(uid, "COMPLETED", generate_uid())  # issue #18: 409
        assert stolen.status_code == 409 and "incorrect" in stolen.json()["message"]
        assert value(worklist.get(uid), STATE) == "IN PROGRESS"  # nothing changed
        comments = {"00400400": element("LT", "started reading")}
        missing = worklist.update(uid, comments, None)
        assert missing.status_code == 409 and "missing" in missing.json()["message"]
        wrong = worklist.update(uid, comments, generate_uid())
        assert wrong.status_code == 409 and "incorrect" in wrong.json()["message"]  # C301
        assert worklist.update(uid, comments, transaction).status_code == 200
        assert value(worklist.get(uid), "00400400") == "started reading"
        premature = worklist.state(uid, "COMPLETED", transaction)
        assert premature.status_code == 409  # C304, naming what is missing
        assert "Performed Procedure Step End DateTime" in premature.json()["message"]
        performed = {
            "00741216": element(
                "SQ",
                {
                    "00404050": element("DT", "20261203091000"),
                    "00404051": element("DT", "20261203093000"),
                },
            )
        }
        assert worklist.update(uid, performed, transaction).status_code == 200
        assert worklist.state(uid, "COMPLETED", transaction).status_code == 200
        assert event(reports(ws, 1)[0]) == (uid, 1, "COMPLETED")
        done = worklist.state(uid, "COMPLETED", transaction)  # B306: already so
        assert done.status_code == 200 and "already" in done.headers["warning"]
        assert worklist.state(uid, "CANCELED", transaction).status_code == 409  # C300
        final = worklist.update(uid, comments, transaction)
        assert final.status_code == 400 and "COMPLETED" in final.json()["message"]
        quiet(ws)  # refusals report nothing
    stored = worklist.get(uid)
    assert value(stored, STATE) == "COMPLETED"
    assert value(stored["00741216"]["Value"][0], "00404051") == "20261203093000"


def test_a_cancellation_request_cancels_what_is_scheduled_and_asks_the_performer(
    worklist: Worklist,
) -> None:
    """PS3.4 CC.2.2.3: a SCHEDULED workitem is canceled by the archive itself (reported
    IN PROGRESS then CANCELED); one IN PROGRESS stays so, its subscribers told; a
    COMPLETED one cannot be; a CANCELED one already is."""
    scheduled = worklist.create(workitem())
    claimed = worklist.create(workitem())
    aet = "WATCHER1"
    for uid in (scheduled, claimed):
        assert worklist.http.post(f"/workitems/{uid}/subscribers/{aet}").status_code == 201
    transaction = generate_uid()
    assert worklist.state(claimed, "IN PROGRESS", transaction).status_code == 200
    with worklist.channel(aet) as ws:
        assert [event(e) for e in reports(ws, 3)] == [
            (scheduled, 1, "SCHEDULED"),
            (claimed, 1, "SCHEDULED"),
            (claimed, 1, "IN PROGRESS"),
        ]
        reason = {"00741238": element("LT", "patient left")}
        r = worklist.http.post(
            f"/workitems/{scheduled}/cancelrequest", content=json.dumps(reason), headers=DICOM_JSON
        )
        assert r.status_code == 202, r.text
        asked, started, canceled = reports(ws, 3)
        assert event(asked)[:2] == (scheduled, 2)
        assert value(asked, "00741238") == "patient left" and value(asked, "00741236") == "PICTOR"
        assert event(started) == (scheduled, 1, "IN PROGRESS")
        assert event(canceled) == (scheduled, 1, "CANCELED")
        assert value(canceled, "00741238") == "patient left"
        stored = worklist.get(scheduled)
        assert value(stored, STATE) == "CANCELED"
        progress = stored["00741002"]["Value"][0]  # the final state requirements, filled in
        assert value(progress, "00404052") and value(progress, "00741238") == "patient left"
        again = worklist.http.post(f"/workitems/{scheduled}/cancelrequest")
        assert again.status_code == 202 and "already" in again.headers["warning"]  # B304
        assert worklist.http.post(f"/workitems/{claimed}/cancelrequest").status_code == 202
        assert event(reports(ws, 1)[0])[:2] == (claimed, 2)
        assert value(worklist.get(claimed), STATE) == "IN PROGRESS"  # the performer decides
        assert worklist.state(claimed, "CANCELED", transaction).status_code == 200
        assert event(reports(ws, 1)[0]) == (claimed, 1, "CANCELED")
    done = worklist.create(workitem())
    assert worklist.state(done, "IN PROGRESS", transaction).status_code == 200
    performed = {
        "00741216": element(
            "SQ", {"00404050": element("DT", "20261203"), "00404051": element("DT", "20261203")}
        )
    }
    assert worklist.update(done, performed, transaction).status_code == 200
    assert worklist.state(done, "COMPLETED", transaction).status_code == 200
    late = worklist.http.post(f"/workitems/{done}/cancelrequest")
    assert late.status_code == 409 and "COMPLETED" in late.json()["message"]  # C311


def test_worklist_subscriptions_follow_new_workitems_until_suspended(worklist: Worklist) -> None:
    """PS3.4 CC.2.3: a worklist subscription takes in the open workitems and each new
    one; suspended, new ones are left out and the others kept; ended (either
    well-known UID), every subscription of the AE goes. A filtered one only takes
    workitems its filter matches."""
    existing = worklist.create(workitem())
    aet, picky = "GLOBAL1", "STATONLY"
    r = worklist.http.post(f"/workitems/{GLOBAL}/subscribers/{aet}?deletionlock=true")
    assert r.status_code == 201, r.text
    r = worklist.http.post(
        f"/workitems/{FILTERED}/subscribers/{picky}",
        params={"filter": "ScheduledProcedureStepPriority=HIGH"},
    )
    assert r.status_code == 201, r.text
    with worklist.channel(aet) as ws, worklist.channel(picky) as stat:
        initial = _drain(ws)  # the open workitems of the archive, this one among them
        assert (existing, 1, "SCHEDULED") in initial
        assert all(e[1] == 1 and e[2] in ("SCHEDULED", "IN PROGRESS") for e in initial)
        _drain(stat)
        low = worklist.create(workitem(priority="LOW"))
        high = worklist.create(workitem(priority="HIGH"))
        assert [event(e) for e in reports(ws, 2)] == [
            (low, 1, "SCHEDULED"),
            (high, 1, "SCHEDULED"),
        ]
        assert [event(e) for e in reports(stat, 1)] == [(high, 1, "SCHEDULED")]
        quiet(stat, 1)
        assert (
            worklist.http.post(f"/workitems/{GLOBAL}/subscribers/{aet}/suspend").status_code == 200
        )
        unseen = worklist.create(workitem())
        transaction = generate_uid()
        assert worklist.state(unseen, "IN PROGRESS", transaction).status_code == 200
        assert worklist.state(low, "IN PROGRESS", transaction).status_code == 200
        assert [event(e) for e in reports(ws, 1)] == [(low, 1, "IN PROGRESS")]  # kept
        quiet(ws, 1)
        assert worklist.http.delete(f"/workitems/{GLOBAL}/subscribers/{aet}").status_code == 200
        assert worklist.http.delete(f"/workitems/{low}/subscribers/{aet}").status_code == 404
        assert worklist.state(high, "IN PROGRESS", transaction).status_code == 200
        quiet(ws, 1)
        assert [event(e) for e in reports(stat, 1)] == [(high, 1, "IN PROGRESS")]


def _drain(ws: ClientConnection) -> list[tuple[str, int, str | None]]:
    """What the channel sends until it is quiet."""
    out = []
    while True:
        try:
            out.append(event(json.loads(ws.recv(timeout=1.5))))
        except TimeoutError:
            return out


def test_search_matches_and_orders_stat_first(worklist: Worklist) -> None:
    """PS3.18 11.9: attribute matching (single value, wildcard, UID list, date-time
    range, sequence attribute), HIGH priority first, 204 when nothing matches."""
    label = f"search-{generate_uid()[-8:]}"
    station = {
        "00404025": element(
            "SQ", {"00080100": element("SH", "CT1"), "00080104": element("LO", "CT 1")}
        )
    }
    low = worklist.create(workitem(priority="LOW", label=label))
    high = worklist.create(workitem(priority="HIGH", label=label, **station))
    medium = worklist.create(
        workitem(priority="MEDIUM", label=label, **{"00404005": element("DT", "20261204120000")})
    )

    def found(**params: str) -> list[str]:
        r = worklist.http.get("/workitems", params={"ProcedureStepLabel": label, **params})
        if r.status_code == 204:
            return []
        assert r.status_code == 200, r.text
        return [value(a, "00080018") for a in r.json()]

    assert found() == [high, medium, low]
    assert found(ScheduledProcedureStepPriority="HIGH") == [high]
    assert found(ScheduledProcedureStepStartDateTime="20261204-") == [medium]
    assert found(ScheduledProcedureStepStartDateTime="20261203") == [high, low]
    assert found(**{"ScheduledStationNameCodeSequence.CodeValue": "CT1"}) == [high]
    assert found(SOPInstanceUID=f"{low}\\{medium}") == [medium, low]
    assert found(PatientName="doe*") == [high, medium, low]  # PN: case-insensitive
    assert found(limit="1", offset="1") == [medium]
    assert found(ProcedureStepState="COMPLETED") == []
    nothing = worklist.http.get("/workitems", params={"ProcedureStepLabel": label + "x"})
    assert nothing.status_code == 204 and not nothing.content


BAD_CREATES = [
    ("not JSON", b"{", 400, "not JSON"),
    ("two datasets", json.dumps([workitem(), workitem()]).encode(), 400, "exactly one"),
    (
        "in progress",
        json.dumps(workitem(**{STATE: element("CS", "IN PROGRESS")})).encode(),
        400,
        "SCHEDULED",
    ),
    (
        "transaction",
        json.dumps(workitem(**{TRANSACTION: element("UI", "1.2.3")})).encode(),
        400,
        "Transaction UID",
    ),
    (
        "no priority",
        json.dumps({k: v for k, v in workitem().items() if k != "00741200"}).encode(),
        400,
        "Priority",
    ),
    ("bad priority", json.dumps(workitem(priority="URGENT")).encode(), 400, "HIGH"),
    (
        "bulk data",
        json.dumps(
            workitem(**{"00400400": {"vr": "LT", "BulkDataURI": "http://127.0.0.1/x"}})
        ).encode(),
        400,
        "bulk data",
    ),
    ("wrong VR", json.dumps(workitem(**{"00741204": element("DA", "x")})).encode(), 400, "VR"),
    (
        "bad value",
        json.dumps(workitem(**{"00404005": element("DT", "tomorrow")})).encode(),
        400,
        "Scheduled Procedure Step Start DateTime",
    ),
    ("bad key", json.dumps({**workitem(), "PatientName": element("PN")}).encode(), 400, "8 hex"),
    ("performed", json.dumps(workitem(**{"00741216": element("SQ", {})})).encode(), 400, "empty"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "says"), BAD_CREATES, ids=[c[0] for c in BAD_CREATES]
)
def test_bad_creates_say_what_is_wrong_and_store_nothing(
    worklist: Worklist, case: str, body: bytes, status: int, says: str
) -> None:
    uid = generate_uid()
    r = worklist.http.post(f"/workitems?{uid}", content=body, headers=DICOM_JSON)
    assert r.status_code == status, r.text
    assert says in r.json()["message"], r.json()
    assert worklist.http.get(f"/workitems/{uid}").status_code == 404


def test_hostile_requests_are_refused_before_anything_is_stored(worklist: Worklist) -> None:
    http = worklist.http
    body = json.dumps(workitem())
    assert (
        http.post(
            "/workitems", content=body, headers={"Content-Type": "application/dicom+xml"}
        ).status_code
        == 415
    )
    assert http.post("/workitems", content=body).status_code == 415  # untyped
    assert http.post("/workitems?1.2.3.x", content=body, headers=DICOM_JSON).status_code == 400
    assert (
        http.post("/workitems?workitem=1.2.3&x=1", content=body, headers=DICOM_JSON).status_code
        == 400
    )
    mismatch = http.post(
        f"/workitems?{generate_uid()}",
        content=json.dumps(workitem(**{"00080018": element("UI", generate_uid())})),
        headers=DICOM_JSON,
    )
    assert mismatch.status_code == 400 and "differs" in mismatch.json()["message"]
    big = json.dumps(workitem(**{"00400400": element("LT", "x" * (1 << 20))}))
    assert (
        http.post(f"/workitems?{generate_uid()}", content=big, headers=DICOM_JSON).status_code
        == 413
    )
    deep: dict[str, Any] = {"00100010": element("PN")}
    for _ in range(40):
        deep = {"0040A730": element("SQ", deep)}
    nested = http.post(
        f"/workitems?{generate_uid()}", content=json.dumps(workitem(**deep)), headers=DICOM_JSON
    )
    assert nested.status_code == 400 and "nested" in nested.json()["message"]
    many = {f"0009{i:04X}": element("LO", "x") for i in range(0x10, 0x10 + 2500)}
    flood = http.post(
        f"/workitems?{generate_uid()}", content=json.dumps(workitem(**many)), headers=DICOM_JSON
    )
    assert flood.status_code == 400 and "at most" in flood.json()["message"]
    uid = worklist.create(workitem())
    assert http.post(f"/workitems?{uid}", content=body, headers=DICOM_JSON).status_code == 409
    refused = worklist.update(uid, {"00100020": element("LO", "OTHER")}, None)
    assert refused.status_code == 400 and "Patient ID" in refused.json()["message"]
    assert worklist.update(uid, {STATE: element("CS", "COMPLETED")}, None).status_code == 400
    assert http.get("/workitems/1.2.x").status_code == 400
    assert http.get(f"/workitems/{generate_uid()}").status_code == 404
    assert http.get(f"/workitems/{uid}?includefield=all").status_code == 400
    assert http.get(f"/workitems/{uid}", headers={"Accept": "image/png"}).status_code == 406
    state_without_uid = http.put(
        f"/workitems/{uid}/state",
        content=json.dumps({STATE: element("CS", "IN PROGRESS")}),
        headers=DICOM_JSON,
    )
    assert state_without_uid.status_code == 400 and "missing" in state_without_uid.json()["message"]
    assert worklist.state(uid, "SCHEDULED", generate_uid()).status_code == 409  # C303
    assert worklist.state(uid, "DONE", generate_uid()).status_code == 400
    assert worklist.state(generate_uid(), "IN PROGRESS", generate_uid()).status_code == 404
    for params in (
        {"Nonsense": "1"},
        {"TransactionUID": "1.2.3"},
        {"limit": "0"},
        {"limit": "100000"},
        {"ScheduledProcedureStepStartDateTime": "2026-12"},
        {"fuzzymatching": "maybe"},
    ):
        assert http.get("/workitems", params=params).status_code == 400, params
    cancel = http.post(
        f"/workitems/{uid}/cancelrequest",
        content=json.dumps({"00100020": element("LO", "x")}),
        headers=DICOM_JSON,
    )
    assert cancel.status_code == 400 and "Reason For Cancellation" in cancel.json()["message"]
    for aet in ("A" * 17, "BAD%5CAET", "%20%20"):
        assert http.post(f"/workitems/{uid}/subscribers/{aet}").status_code == 400, aet
    assert http.post(f"/workitems/{generate_uid()}/subscribers/NOBODY").status_code == 404
    assert http.post(f"/workitems/{uid}/subscribers/X?deletionlock=yes").status_code == 400
    assert http.post(f"/workitems/{GLOBAL}/subscribers/X?filter=PatientID=1").status_code == 400
    assert http.post(f"/workitems/{FILTERED}/subscribers/X").status_code == 400
    assert http.post(f"/workitems/{FILTERED}/subscribers/X?filter=Nonsense=1").status_code == 400
    assert http.post(f"/workitems/{uid}/subscribers/X/suspend").status_code == 400
    assert http.post(f"/workitems/{GLOBAL}/subscribers/NEVER/suspend").status_code == 404
    assert http.delete(f"/workitems/{uid}/subscribers/NEVER").status_code == 404
    # the channel: only as a WebSocket, only for an AE title, only where the table has one
    plain = http.get("/subscribers/READER1")
    assert plain.status_code == 400 and "WebSocket" in plain.json()["message"]
    with pytest.raises(InvalidStatus) as refused_socket:
        connect(f"{worklist.ws}/subscribers/{'A' * 17}", open_timeout=10)
    assert refused_socket.value.response.status_code == 400
    with pytest.raises(InvalidStatus) as not_socket:
        connect(f"{worklist.ws}/studies", open_timeout=10)
    assert not_socket.value.response.status_code == 400
    with pytest.raises(InvalidStatus) as nowhere:
        connect(f"{worklist.ws}/nowhere", open_timeout=10)
    assert nowhere.value.response.status_code == 404
    assert value(worklist.get(uid), STATE) == "SCHEDULED"  # nothing above changed it


def test_event_reports_wait_for_their_channel_and_are_sent_once(
    worklist: Worklist, archive: Archive
) -> None:
    """Reports are queued in the index (a subscriber offline gets them when it comes
    back, in order) and dropped once sent."""
    aet = "OFFLINE1"
    uid = worklist.create(workitem())
    assert worklist.http.post(f"/workitems/{uid}/subscribers/{aet}").status_code == 201
    transaction = generate_uid()
    assert worklist.state(uid, "IN PROGRESS", transaction).status_code == 200
    assert archive.query("SELECT count(*) FROM ups_event WHERE aet = $1", aet)[0][0] == 2
    with worklist.channel(aet) as ws:
        got = reports(ws, 2)
        assert [event(e) for e in got] == [(uid, 1, "SCHEDULED"), (uid, 1, "IN PROGRESS")]
        assert value(got[0], "00000110") < value(got[1], "00000110")  # Message IDs
    deadline = time.monotonic() + 5
    while archive.query("SELECT count(*) FROM ups_event WHERE aet = $1", aet)[0][0]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with worklist.channel(aet) as ws:
        quiet(ws, 1)
