"""The built-in viewer at /viewer and IHE Invoke Image Display (IHE RAD TF-2 4.106) on a
real server, with a stand-in bundle laid out like OHIF's dist (the real one runs in
tests/browser/test_ohif.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app import viewer

from conftest import VIEWER_INDEX as INDEX
from conftest import Pictor, content_type, multipart, stand_in_viewer
from synth import ct_slice, new_uids


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, pictor_module: Pictor
) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    root = tmp_path_factory.mktemp("viewer")
    bundle = stand_in_viewer(root / "bundle")
    process = pictor_module(root / "data", workers=1, env={"PICTOR_VIEWER_DIR": str(bundle)})
    with httpx.Client(base_url=process.base, timeout=30) as client:
        uids: dict[str, str] = {}
        parts = []
        for key, pid, name in (
            ("a", "IID-1", "IID^ONE"),
            ("b", "IID-2", "IID^TWO"),
            ("c", "IID-2", "IID^TWO"),
        ):
            study, series = new_uids()
            uids[key] = study
            parts.append(
                ct_slice(study, series, 0, rows=32, cols=32, patient_id=pid, patient_name=name)
            )
        r = client.post(
            "/dicom-web/studies",
            content=multipart(parts),
            headers={"Content-Type": content_type()},
        )
        assert r.status_code == 200, r.text
        found = client.get(
            "/dicom-web/studies",
            params={"StudyInstanceUID": uids["a"], "includefield": "AccessionNumber"},
        ).json()
        uids["accession"] = found[0]["00080050"]["Value"][0]
        yield client, uids


def test_viewer_links_redirect_relatively(site: tuple[httpx.Client, dict[str, str]]) -> None:
    client, _ = site
    assert client.get("/viewer").headers["location"] == "viewer/"
    r = client.get("/viewer?StudyInstanceUIDs=1.2.3")
    assert r.status_code == 302 and r.headers["location"] == "viewer/viewer?StudyInstanceUIDs=1.2.3"
    # OHIF writes its study-list filters as /viewer?patientName=...: a reload keeps the list
    assert client.get("/viewer?patientName=DOE").headers["location"] == "viewer/?patientName=DOE"


@pytest.mark.parametrize(
    ("path", "root"),
    [
        ("/viewer/", "./"),
        ("/viewer/viewer", "./"),
        ("/viewer/viewer/pictor", "../"),
        ("/viewer/a/b/c", "../../"),
    ],
)
def test_deep_links_answer_the_page_with_relative_references(
    site: tuple[httpx.Client, dict[str, str]], path: str, root: str
) -> None:
    client, _ = site
    r = client.get(path, params={"StudyInstanceUIDs": "1.2.3"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert f'src="{root}app.bundle.0123456789abcdef.js"' in r.text
    assert f'href="{root}assets/favicon.ico"' in r.text
    assert f'window.PUBLIC_URL=new URL("{root}",location.href).pathname' in r.text
    assert '="/' not in r.text


def test_bundle_files(site: tuple[httpx.Client, dict[str, str]]) -> None:
    client, _ = site
    js = client.get("/viewer/app.bundle.0123456789abcdef.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert "immutable" in js.headers["cache-control"]
    assert "window.PUBLIC_URL" in js.text  # relocated at install
    assert client.get("/viewer/0ddf166f7a343eda.wasm").headers["content-type"] == "application/wasm"
    assert "url(a.woff2)" in client.get("/viewer/app.bundle.css").text
    assert client.get("/viewer/missing.js").status_code == 404
    assert client.get("/viewer/../../etc/passwd.txt").status_code == 404
    assert client.get(f"/viewer/{viewer.MARKER}").headers["content-type"].startswith("text/html")


def test_app_config_points_at_this_server(site: tuple[httpx.Client, dict[str, str]]) -> None:
    client, _ = site
    r = client.get("/viewer/app-config.js")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
    assert "new URL('../dicom-web', here)" in r.text
    config = viewer.ohif_config()
    source = config["dataSources"][0]["configuration"]
    assert source["staticWado"] is False and source["dicomUploadEnabled"] is True
    assert source["qidoSupportsIncludeField"] is True and source["imageRendering"] == "wadors"


def test_iid_study_by_uid_and_accession(site: tuple[httpx.Client, dict[str, str]]) -> None:
    client, uids = site
    r = client.get("/IHEInvokeImageDisplay", params={"requestType": "STUDY", "studyUID": uids["a"]})
    assert r.status_code == 303
    assert r.headers["location"] == f"viewer/viewer?StudyInstanceUIDs={uids['a']}"
    both = f"{uids['a']},{uids['b']}"
    r = client.get("/IHEInvokeImageDisplay", params={"requestType": "STUDY", "studyUID": both})
    assert r.headers["location"] == f"viewer/viewer?StudyInstanceUIDs={both}"
    r = client.get(
        "/IHEInvokeImageDisplay",
        params={"requestType": "STUDY", "accessionNumber": uids["accession"]},
    )
    assert r.headers["location"] == f"viewer/viewer?StudyInstanceUIDs={uids['a']}"


def test_iid_patient(site: tuple[httpx.Client, dict[str, str]]) -> None:
    client, uids = site
    one = client.get(
        "/IHEInvokeImageDisplay", params={"requestType": "PATIENT", "patientID": "IID-1"}
    )
    assert one.headers["location"] == f"viewer/viewer?StudyInstanceUIDs={uids['a']}"
    # several studies: the study list of that patient
    many = client.get(
        "/IHEInvokeImageDisplay", params={"requestType": "PATIENT", "patientID": "IID-2^^^HOSP"}
    )
    assert many.status_code == 303 and many.headers["location"] == "viewer/?mrn=IID-2"
    recent = client.get(
        "/IHEInvokeImageDisplay",
        params={"requestType": "PATIENT", "patientID": "IID-2", "mostRecentResults": "2"},
    )
    location = recent.headers["location"]
    assert uids["b"] in location and uids["c"] in location


@pytest.mark.parametrize(
    ("params", "status", "text"),
    [
        ({"requestType": "STUDY", "studyUID": "1.2.3.999"}, 404, "No study"),
        ({"requestType": "STUDY", "accessionNumber": "NOPE"}, 404, "No study"),
        ({"requestType": "PATIENT", "patientID": "NOBODY"}, 404, "No study of patient"),
        ({}, 400, "requestType is missing"),
        ({"requestType": "SERIES"}, 400, "not supported"),
        ({"requestType": "STUDY"}, 400, "needs studyUID"),
        ({"requestType": "STUDY", "studyUID": "not-a-uid"}, 400, "studyUID"),
        ({"requestType": "STUDY", "accessionNumber": "A*"}, 400, "wildcards"),
        ({"requestType": "PATIENT"}, 400, "needs patientID"),
        (
            {"requestType": "PATIENT", "patientID": "X", "mostRecentResults": "0"},
            400,
            "mostRecentResults",
        ),
        (
            {"requestType": "PATIENT", "patientID": "X", "mostRecentResults": "\u00b2"},
            400,
            "mostRecentResults",
        ),
        (
            {"requestType": "PATIENT", "patientID": "X", "mostRecentResults": "9" * 5000},
            400,
            "mostRecentResults",
        ),
    ],
)
def test_iid_errors_are_pages(
    site: tuple[httpx.Client, dict[str, str]], params: dict[str, str], status: int, text: str
) -> None:
    client, _ = site
    r = client.get("/IHEInvokeImageDisplay", params=params)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/html")
    assert text in r.text


def test_without_a_bundle_the_viewer_says_how_to_install_it(tmp_path: Path, pictor: Pictor) -> None:
    process = pictor(
        tmp_path / "data", workers=1, env={"PICTOR_VIEWER_DIR": str(tmp_path / "none")}
    )
    with httpx.Client(base_url=process.base, timeout=30) as client:
        for path in (
            "/viewer/",
            "/viewer/viewer?StudyInstanceUIDs=1.2",
            "/viewer/app-config.js",
        ):
            r = client.get(path)
            assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
            assert viewer.INSTALL_COMMAND in r.text


def test_relative_root_and_index_rewrite() -> None:
    assert viewer.relative_root("/") == "./"
    assert viewer.relative_root("/viewer/x") == "../"
    html = viewer.index_html(INDEX, "/")
    assert 'src="./app-config.js"' in html and '"/' not in html.replace('("./"', "")
