"""Routing (issue #17) between two real servers on loopback: a DICOMweb destination
behind a bearer token, one that refuses part of a batch (PS3.18 10.5.3: 202 with the
Failed SOP Sequence), one that refuses a request without a token (401); and hostile
route definitions refused with what was wrong, through the CLI and /admin/routes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread

from conftest import Archive, Pictor, content_type, multipart, pictor_cli, until
from synth import ct_slice, new_uids

FAST = {
    "PICTOR_STABLE_SECONDS": "1",
    "PICTOR_ROUTE_BACKOFF_SECONDS": "0.3",
    "PICTOR_ROUTE_RETRY_SECONDS": "3",
}


def _routes(data: Path) -> dict[str, Any]:
    done = pictor_cli("route", "status", "--json", data_dir=data)
    assert done.returncode == 0, done.stderr
    return {r["name"]: r for r in json.loads(done.stdout)}


def _uid(data: bytes) -> str:
    return str(dcmread(io.BytesIO(data)).SOPInstanceUID)


def test_a_dicomweb_route_behind_a_token_records_what_the_destination_refused(
    tmp_path: Path, pictor: Pictor
) -> None:
    dest_data = tmp_path / "dest"
    dest = pictor(dest_data, workers=1, env={"PICTOR_AUTH": "true"})
    made = pictor_cli("token", "create", "--name", "router", "--scopes", "read,write",
                      data_dir=dest_data)  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    study, series = new_uids()
    x, y, z = (ct_slice(study, series, i, rows=32, cols=32) for i in range(3))
    # the destination holds another object under x's SOP Instance UID already
    other = ct_slice(study, series, 0, rows=32, cols=32, seed=7)
    assert _uid(other) == _uid(x) and other != x
    stored = httpx.post(
        f"{dest.dicomweb}/studies", content=multipart([other]),
        headers={"Content-Type": content_type(), "Authorization": f"Bearer {secret}"},
    )  # fmt: skip
    assert stored.status_code == 200, stored.text

    src_data = tmp_path / "src"
    src = pictor(src_data, workers=1, env=FAST)
    added = pictor_cli("route", "add", "partner", "--on", "instance.created",
                       "--to", f"dicomweb:{dest.dicomweb}/", "--token-file", "-",
                       data_dir=src_data, stdin=secret + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    no_token = pictor_cli("route", "add", "no-token", "--to", f"dicomweb:{dest.dicomweb}",
                          data_dir=src_data)  # fmt: skip
    assert no_token.returncode == 0, no_token.stderr
    archive = Archive(src)
    try:
        assert archive.stow(multipart([x, y, z])).status_code == 200
        gave_up = until(lambda: (r := _routes(src_data))["partner"]["failed"] and r,
                         what="the partner route to give up")  # fmt: skip
        partner = gave_up["partner"]
        assert partner["sent"] == 2 and partner["token"] is True
        assert _uid(x) in partner["lastError"] and "Failure Reason" in partner["lastError"]
        assert secret not in json.dumps(gave_up)
        # y and z are at the destination, x is its own object still
        auth = {"Authorization": f"Bearer {secret}"}
        theirs = httpx.get(f"{dest.dicomweb}/studies/{study}/instances", headers=auth).json()
        assert sorted(i["00080018"]["Value"][0] for i in theirs) == sorted(map(_uid, (x, y, z)))
        kept = httpx.get(
            f"{dest.dicomweb}/studies/{study}/series/{series}/instances/{_uid(x)}",
            headers={**auth, "Accept": 'multipart/related; type="application/dicom"'},
        )
        assert other in kept.content and x not in kept.content
        # without the token: 401, nothing acknowledged, given up after the retry time
        refused = until(lambda: (r := _routes(src_data))["no-token"]["failed"] and r,
                         what="the no-token route to give up")["no-token"]  # fmt: skip
        assert refused["sent"] == 0 and "HTTP 401" in refused["lastError"]
        studies = pictor_cli("route", "status", "partner", "--json", data_dir=src_data)
        [entry] = json.loads(studies.stdout)
        assert entry["study"] == study and entry["state"] == "failed" and entry["sent"] == 2
    finally:
        archive.http.close()


def test_hostile_routes_are_refused(tmp_path: Path, pictor: Pictor) -> None:
    data = tmp_path / "data"
    process = pictor(data, workers=1)
    admin = process.base + "/admin/routes"
    good = {"name": "r1", "to": "dicomweb:http://127.0.0.1:9/dicom-web"}
    for body, named in [
        ({**good, "name": "../x"}, "route name"),
        ({**good, "name": "x" * 65}, "route name"),
        ({**good, "name": ""}, "route name"),
        ({**good, "to": "ftp://127.0.0.1/x"}, "a destination is"),
        ({**good, "to": "dicomweb:ftp://127.0.0.1/x"}, "dicomweb:https://host/path"),
        ({**good, "to": "dicomweb:http://u:p@127.0.0.1/x"}, "no user or password"),
        ({**good, "to": "dicomweb:http://127.0.0.1/x?a=1"}, "no query"),
        ({**good, "to": "dicomweb:http://127.0.0.1:99999/x"}, "port that is not a number"),
        ({**good, "to": "dicomweb:http://127.0.0.1:x/x"}, "port that is not a number"),
        ({**good, "to": "dicomweb:http://127.0.0.1/a b"}, "space or a control character"),
        ({**good, "to": "dicomweb:http://127.0.0.1/a\r\nX-Evil: 1"}, "space or a control"),
        ({**good, "to": "dimse:A" + "B" * 16 + "@127.0.0.1:104"}, "dimse:AET@host:port"),
        ({**good, "to": "dimse:AET@127.0.0.1:99999"}, "dimse:AET@host:port"),
        ({**good, "to": "dimse:AET@bad host:104"}, "dimse:AET@host:port"),
        ({**good, "to": "dimse:AET\\X@127.0.0.1:104"}, "dimse:AET@host:port"),
        ({**good, "to": "dimse:AET@127.0.0.1:104", "token": "abc"}, "DICOMweb or FHIR"),
        ({**good, "to": "fhir:ftp://127.0.0.1/fhir"}, "fhir:https://host/fhir"),
        ({**good, "to": "fhir:http://127.0.0.1/fhir?x=1"}, "no query"),
        ({**good, "to": "fhir:http://127.0.0.1/a\r\nX-Evil: 1"}, "space or a control"),
        ({**good, "to": "fhir:http://127.0.0.1/fhir", "deidentify": "basic"}, "no --deidentify"),
        ({**good, "token": "a b"}, "no space"),
        ({**good, "when": ["NoSuchKeyword=1"]}, "neither a DICOM keyword"),
        ({**good, "when": ["Modality"]}, "Keyword=value"),
        ({**good, "when": ["Modality="]}, "1 to 32 values"),
        ({**good, "when": ["Modality=" + ",".join(["CT"] * 33)]}, "1 to 32 values"),
        ({**good, "when": ["Modality=C\nT"]}, "control character"),
        ({**good, "when": ["ReferencedImageSequence=1"]}, "cannot be compared"),
        ({**good, "when": ["PixelData=1"]}, "cannot be compared"),
        ({**good, "when": ["Modality=CT"] * 17}, "at most 16"),
        ({**good, "on": "study.exploded"}, "runs on one of"),
        ({**good, "extra": 1}, "extra"),
    ]:
        r = httpx.post(admin, json=body)
        assert r.status_code == 400 and named in r.json()["message"], (body, r.text)
    made = httpx.post(admin, json={**good, "when": ["Modality=CT,MR", "StationName=CT?*"],
                                   "token": "s3cr3t-t0ken"})  # fmt: skip
    assert made.status_code == 201, made.text
    route = made.json()
    assert route["token"] is True and "s3cr3t" not in made.text
    assert route["when"] == [
        {"keyword": "Modality", "tag": "00080060", "like": ["CT", "MR"]},
        {"keyword": "StationName", "tag": "00081010", "like": ["CT_%"]},
    ]
    assert httpx.post(admin, json=good).status_code == 409
    assert "s3cr3t" not in httpx.get(admin).text
    study, series = new_uids()
    export = process.base + "/admin/studies/{}/export/{}"
    assert httpx.post(export.format(study, "r1")).status_code == 404  # no such study
    assert httpx.post(export.format("1.2.x", "r1")).status_code == 400
    archive = Archive(process)
    try:
        assert (
            archive.stow(multipart([ct_slice(study, series, 0, rows=32, cols=32)])).status_code
            == 200
        )
    finally:
        archive.http.close()
    assert httpx.post(export.format(study, "nope")).status_code == 404
    assert httpx.post(export.format(study, "r1")).status_code == 202
    assert httpx.get(f"{admin}/r1").json()["studies"][0]["cause"] == "manual"
    assert httpx.get(f"{admin}/nope").status_code == 404
    assert httpx.delete(f"{admin}/r1").status_code == 204
    assert httpx.delete(f"{admin}/r1").status_code == 404
    bad = pictor_cli("route", "add", "x", "--to", "file:///etc/passwd", data_dir=data)
    assert bad.returncode != 0 and "a destination is" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_corrected_study_goes_out_corrected(tmp_path: Path, pictor: Pictor) -> None:
    """Corrections live in the index, not in the files (issue #15): a forward sends the
    file with its header rewritten, as WADO-RS does, and the length it declares fits."""
    dest = pictor(tmp_path / "dest", workers=1)
    src_data = tmp_path / "src"
    src = pictor(src_data, workers=1, env=FAST)
    study, series = new_uids()
    archive = Archive(src)
    try:
        parts = [ct_slice(study, series, i, rows=32, cols=32) for i in range(2)]
        assert archive.stow(multipart(parts)).status_code == 200
        fixed = httpx.post(
            f"{src.base}/admin/studies/{study}/update",
            json={"00100010": {"vr": "PN", "Value": [{"Alphabetic": "FIXED^NAME"}]}},
        )
        assert fixed.status_code == 200, fixed.text
        added = pictor_cli("route", "add", "copy", "--to", f"dicomweb:{dest.dicomweb}",
                           data_dir=src_data)  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert httpx.post(f"{src.base}/admin/studies/{study}/export/copy").status_code == 202
        until(lambda: _routes(src_data)["copy"]["sent"] == 2, what="the export")
        names = {
            i["00100010"]["Value"][0]["Alphabetic"]
            for i in httpx.get(f"{dest.dicomweb}/studies/{study}/instances",
                               params={"includefield": "00100010"}).json()
        }  # fmt: skip
        assert names == {"FIXED^NAME"}
    finally:
        archive.http.close()
