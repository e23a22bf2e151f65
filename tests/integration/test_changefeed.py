"""The change feed (issue #17) on a real server: every store, delete, rejection,
restore, correction and merge appears, in the shape of Microsoft's DICOM service, and
a reader polling while many writers commit out of order never misses an entry."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import Archive, Pictor, content_type, multipart
from synth import ct_slice, new_uids, rejection_note, sop_instance_uid


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pictor_module: Pictor) -> Iterator[Archive]:
    process = pictor_module(tmp_path_factory.mktemp("feed") / "data")
    archive = Archive(process)
    try:
        yield archive
    finally:
        archive.http.close()


def feed(site: Archive, **params: Any) -> list[dict[str, Any]]:
    r = site.http.get("/changefeed", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    entries: list[dict[str, Any]] = r.json()
    return entries


def latest_seq(site: Archive) -> int:
    r = site.http.get("/changefeed/latest", params={"includemetadata": "false"})
    return int(r.json()["Sequence"]) if r.status_code == 200 else 0


def wait_for(site: Archive, after: int, count: int, **params: Any) -> list[dict[str, Any]]:
    """The ``count`` entries after ``after``, once the feed has numbered them."""
    deadline = time.monotonic() + 15
    while True:
        got = feed(site, offset=after, limit=1000, **params)
        if len(got) >= count or time.monotonic() > deadline:
            assert len(got) == count, got
            return got
        time.sleep(0.1)


def stow(site: Archive, parts: list[bytes]) -> None:
    r = site.http.post(
        "/studies", content=multipart(parts), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 200, r.text


def by_sop(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        out.setdefault(e["SopInstanceUid"], []).append(e)
    return out


def test_an_empty_feed_has_no_latest_entry(tmp_path: Any, pictor: Pictor) -> None:
    process = pictor(tmp_path / "data", workers=1)
    r = httpx.get(process.dicomweb + "/changefeed/latest")
    assert r.status_code == 204 and r.content == b""
    assert httpx.get(process.dicomweb + "/changefeed").json() == []


def test_every_change_appears_with_its_state(site: Archive) -> None:
    start = latest_seq(site)
    study, series = new_uids()
    sops = [sop_instance_uid(series, i) for i in range(3)]
    stow(site, [ct_slice(study, series, i, rows=16, cols=16, patient_id="FEED1") for i in range(3)])
    created = wait_for(site, start, 3)
    assert [e["Sequence"] for e in created] == [start + 1, start + 2, start + 3]
    assert {e["SopInstanceUid"] for e in created} == set(sops)
    for e in created:
        assert e["Action"] == "create" and e["State"] == "current"
        assert e["StudyInstanceUid"] == study and e["SeriesInstanceUid"] == series
        assert e["Timestamp"].endswith("Z")
        assert dt.datetime.fromisoformat(e["Timestamp"].replace("Z", "+00:00"))
        assert e["Metadata"]["00080018"]["Value"] == [e["SopInstanceUid"]]
    lean = feed(site, offset=start, includemetadata="false")
    assert lean and all("Metadata" not in e for e in lean)

    # a correction: an update per instance, the creates are replaced, metadata is new
    r = site.http.post(
        site.process.base.replace("/dicom-web", "") + f"/admin/studies/{study}/update",
        json={"PatientName": {"vr": "PN", "Value": [{"Alphabetic": "FIXED^NAME"}]}},
    )
    assert r.status_code == 200, r.text
    updated = wait_for(site, start + 3, 3)
    assert {e["Action"] for e in updated} == {"update"}
    assert all(e["State"] == "current" for e in updated)
    assert all(e["Metadata"]["00100010"]["Value"][0]["Alphabetic"] == "FIXED^NAME" for e in updated)
    assert {e["State"] for e in feed(site, offset=start, limit=3)} == {"replaced"}

    # a delete: every entry of that instance says deleted, and carries no metadata
    r = site.http.delete(f"/studies/{study}/series/{series}/instances/{sops[0]}")
    assert r.status_code == 204
    [deleted] = wait_for(site, start + 6, 1)
    assert deleted["Action"] == "delete" and deleted["SopInstanceUid"] == sops[0]
    history = by_sop(feed(site, offset=start, limit=100))[sops[0]]
    assert [e["Action"] for e in history] == ["create", "update", "delete"]
    assert {e["State"] for e in history} == {"deleted"}
    assert all("Metadata" not in e for e in history)

    # a restore from the trash: created again, what came before is replaced
    r = httpx.post(site.process.base + "/admin/trash/restore", json={"study": study})
    assert r.status_code == 200, r.text
    [restored] = wait_for(site, start + 7, 1)
    assert restored["Action"] == "create" and restored["State"] == "current"
    history = by_sop(feed(site, offset=start, limit=100))[sops[0]]
    assert [e["State"] for e in history] == ["replaced", "replaced", "replaced", "current"]

    # a rejection note (IOCM): the rejected instance is deleted, the note created
    note_series = new_uids()[1]
    note = rejection_note(study, note_series, [(series, sops[1])], patient_id="FEED1")
    stow(site, [note])
    two = wait_for(site, start + 8, 2)
    assert sorted(e["Action"] for e in two) == ["create", "delete"]
    assert {e["SopInstanceUid"] for e in two if e["Action"] == "delete"} == {sops[1]}

    # a merge of patients: updates for the instances of the merged studies
    other, other_series = new_uids()
    stow(site, [ct_slice(other, other_series, 0, rows=16, cols=16, patient_id="FEED2")])
    wait_for(site, start + 10, 1)
    r = httpx.post(
        site.process.base + "/admin/patients/merge",
        json={"source": {"PatientID": "FEED2"}, "target": {"PatientID": "FEED1"}},
    )
    assert r.status_code == 200, r.text
    [merged] = wait_for(site, start + 11, 1)
    assert merged["Action"] == "update" and merged["StudyInstanceUid"] == other
    assert merged["Metadata"]["00100020"]["Value"] == ["FEED1"]
    # latest is the newest entry
    r = site.http.get("/changefeed/latest")
    assert r.status_code == 200 and r.json()["Sequence"] == start + 12
    assert r.json()["Metadata"]["00080018"]["Value"] == [merged["SopInstanceUid"]]


def test_paging_the_time_window_and_hostile_parameters(site: Archive) -> None:
    start = latest_seq(site)
    study, series = new_uids()
    stow(site, [ct_slice(study, series, i, rows=16, cols=16) for i in range(5)])
    five = wait_for(site, start, 5, includemetadata="false")
    # offset=N: the entries after Sequence N, oldest first, at most limit
    assert [e["Sequence"] for e in feed(site, offset=start + 1, limit=2)] == [start + 2, start + 3]
    assert len(feed(site, offset=start)) == 5 and len(feed(site, offset=start, limit=1)) == 1
    assert len(site.http.get("/changefeed").json()) == min(10, start + 5)  # default limit 10
    # Microsoft's client spells it includeMetadata
    assert all("Metadata" not in e for e in feed(site, offset=start, includeMetadata="False"))
    # the time window, [startTime, endTime)
    first = five[0]["Timestamp"]
    after = feed(site, offset=0, limit=1000, startTime=first, includemetadata="false")
    assert after and all(e["Timestamp"] >= first for e in after)
    assert feed(site, offset=0, endTime="2000-01-01T00:00:00Z") == []
    assert feed(site, offset=start, startTime="2000-01-01T00:00:00") != []  # no zone: UTC
    for params, named in [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "9" * 40}, "offset"),
        ({"includemetadata": "yes"}, "includemetadata"),
        ({"startTime": "yesterday"}, "starttime"),
        ({"startTime": "2026-01-02T00:00:00Z", "endTime": "2026-01-01T00:00:00Z"}, "endTime"),
        ({"StudyInstanceUID": "1.2.3"}, "StudyInstanceUID"),
    ]:
        r = site.http.get("/changefeed", params=params)
        assert r.status_code == 400, (params, r.text)
        assert named.lower() in r.json()["message"].lower(), (params, r.text)
    twice = site.http.get("/changefeed?limit=1&LIMIT=2")
    assert twice.status_code == 400
    assert site.http.get("/changefeed/latest", params={"offset": "1"}).status_code == 400


def test_a_polling_reader_misses_nothing_while_writers_commit_out_of_order(site: Archive) -> None:
    """Eight writers store and delete at once (their transactions commit in any order);
    a reader polls with offset = the highest Sequence it has read, as a consumer of
    Microsoft's feed does. At the end it has read every entry of the feed: none ever
    appeared below what it had read. The numbering is contiguous."""
    start = latest_seq(site)
    stop = threading.Event()
    read: list[dict[str, Any]] = []
    errors: list[str] = []

    def reader() -> None:
        offset = start
        with httpx.Client(base_url=site.process.dicomweb, timeout=60) as c:
            while True:
                done = stop.is_set()
                page = c.get(
                    "/changefeed",
                    params={"offset": offset, "limit": 100, "includemetadata": "false"},
                ).json()
                for e in page:
                    if e["Sequence"] <= offset:
                        errors.append(f"{e['Sequence']} after {offset}")
                    offset = max(offset, e["Sequence"])
                read.extend(page)
                if done and not page:
                    return
                if not page:
                    time.sleep(0.01)

    stored: list[str] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        with httpx.Client(base_url=site.process.dicomweb, timeout=120) as c:
            for round_ in range(6):
                study, series = new_uids()
                parts = [
                    ct_slice(study, series, i, rows=16, cols=16)
                    for i in range(1 + (n + round_) % 4)
                ]
                r = c.post(
                    "/studies", content=multipart(parts), headers={"Content-Type": content_type()}
                )
                assert r.status_code == 200, r.text
                with lock:
                    stored.append(study)
                if round_ % 3 == 2:
                    assert c.delete(f"/studies/{study}").status_code == 204

    watcher = threading.Thread(target=reader)
    watcher.start()
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    # every change committed: wait until the feed has numbered them all, then stop
    expected = sum(1 + (n + r) % 4 for n in range(8) for r in range(6))
    expected += sum(1 + (n + r) % 4 for n in range(8) for r in range(6) if r % 3 == 2)
    full = wait_for(site, start, expected, includemetadata="false")
    stop.set()
    watcher.join(60)
    assert not errors, errors[:5]
    assert [e["Sequence"] for e in full] == list(range(start + 1, start + expected + 1))
    assert [e["Sequence"] for e in read] == [e["Sequence"] for e in full]
    # per instance, its create comes before its delete
    for history in by_sop(full).values():
        assert [e["Action"] for e in history] in (["create"], ["create", "delete"])
