"""QIDO-RS against a real server and PostgreSQL (PS3.18 10.6; PS3.4 C.2.2.2 matching).

A fixture archive with tricky data is stored through STOW: accented and multi-group
person names, empty values, several modalities per study, one patient in many studies,
multi-valued attributes, a request attributes sequence. Every name and ID carries a
marker unique to this test run, so the rest of the shared test archive cannot interfere.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from conftest import Archive, multipart
from synth import ct_slice, new_uids

RUN = uuid.uuid4().hex[:6].upper()  # marker of this run's fixture
SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "PR": "1.2.840.10008.5.1.4.1.1.11.1",
    "OT": "1.2.840.10008.5.1.4.1.1.7",
    "SR": "1.2.840.10008.5.1.4.1.1.88.22",
}


@dataclass
class Study:
    key: str
    patient_name: str
    patient_id: str
    date: str
    time: str
    accession: str
    series: list[tuple[str, int]]  # (modality, number of instances)
    extra: dict[str, Any] = field(default_factory=dict)
    uid: str = ""
    series_uids: list[str] = field(default_factory=list)


STUDIES = [
    Study(
        "smith",
        f"SMITH{RUN}^JOHN",
        f"QP{RUN}-1",
        "20200115",
        "101500",
        f"QA{RUN}-1",
        [("CT", 3), ("SR", 1)],
        {"StudyDescription": "CHEST CT"},
    ),
    Study(
        "doe",
        f"DOE{RUN}^SMITTY{RUN}",
        f"QP{RUN}-2",
        "20200301",
        "083000",
        f"QA{RUN}-2",
        [("MR", 2), ("PR", 1)],
        {"StudyDescription": "BRAIN MR"},
    ),
    Study(
        "astrom1",
        f"ÅSTRÖM{RUN}^BRITT=アストロム^ブリット",
        f"QP{RUN}-3",
        "20190101",
        "235900",
        f"QA{RUN}-3",
        [("US", 1)],
    ),
    Study(
        "astrom2",
        f"ÅSTRÖM{RUN}^BRITT=アストロム^ブリット",
        f"QP{RUN}-3",
        "20210601",
        "000100",
        f"QA{RUN}-4",
        [("US", 2)],
    ),
    Study(
        "astrom3",
        f"ÅSTRÖM{RUN}^BRITT=アストロム^ブリット",
        f"QP{RUN}-3",
        "20210602",
        "120000",
        f"QA{RUN}-5",
        [("US", 1), ("CT", 1)],
    ),
    Study("empty", "", f"QP{RUN}-4", "", "", "", [("OT", 1)]),
]


def _instance(study: Study, series_uid: str, modality: str, series_no: int, index: int) -> bytes:
    ds = pydicom.dcmread(DicomBytesIO(ct_slice(study.uid, series_uid, index)))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.StudyDate, ds.StudyTime = study.date, study.time
    ds.AccessionNumber = study.accession
    ds.Modality = modality
    ds.SOPClassUID = SOP_CLASS[modality]
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SeriesNumber = series_no
    ds.SeriesDescription = f"{modality} series {series_no}"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if index % 2 == 0 else "LOCALIZER"]
    ds.PatientWeight = 70 + series_no
    for keyword, value in study.extra.items():
        setattr(ds, keyword, value)
    if study.key == "smith" and series_no == 1:
        item = Dataset()
        item.ScheduledProcedureStepID = f"SPS{RUN}"
        item.RequestedProcedureID = f"RP{RUN}"
        ds.RequestAttributesSequence = [item]
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def fixture_archive(archive: Archive) -> Archive:
    parts = []
    for study in STUDIES:
        study.uid, _ = new_uids()
        counter = itertools.count()
        for number, (modality, count) in enumerate(study.series, start=1):
            series_uid = new_uids()[1]
            study.series_uids.append(series_uid)
            parts += [
                _instance(study, series_uid, modality, number, next(counter)) for _ in range(count)
            ]
    r = archive.stow(multipart(parts))
    assert r.status_code == 200, r.text
    return archive


def get(archive: Archive, path: str, **headers: str) -> Any:
    r = archive.http.get(path, headers=headers)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    out = []
    for item in results:
        value = item.get(tag, {}).get("Value", [None])[0]
        out.append(value["Alphabetic"] if isinstance(value, dict) else value)
    return out


def study_keys(results: list[dict[str, Any]]) -> set[str]:
    uids = set(values(results, "0020000D"))
    return {s.key for s in STUDIES if s.uid in uids}


def by(key: str) -> Study:
    return next(s for s in STUDIES if s.key == key)


MATCHING_TABLE = [
    # (query, expected studies among the fixture) -- each row a matching rule
    (f"PatientID=QP{RUN}-1", {"smith"}),  # single value
    (f"00100020=QP{RUN}-2", {"doe"}),  # by tag
    (
        f"PatientID=QP{RUN}-*",
        {"smith", "doe", "astrom1", "astrom2", "astrom3", "empty"},
    ),  # wildcard
    (
        f"PatientID=QP{RUN}-%3F",
        {"smith", "doe", "astrom1", "astrom2", "astrom3", "empty"},
    ),  # ? encoded
    (f"PatientName=SMITH{RUN}*", {"smith"}),
    (f"PatientName=smith{RUN}*", set()),  # case-sensitive without fuzzy matching
    (f"PatientName=*{RUN}^SMITTY*", {"doe"}),
    (f"PatientName=ÅSTRÖM{RUN}^BRITT", {"astrom1", "astrom2", "astrom3"}),  # alphabetic group
    # a prefix ending in a non-ASCII letter: the index range's bound is the next code point
    ("PatientName=ÅSTRÖ*", {"astrom1", "astrom2", "astrom3"}),
    (f"PatientName=ÅST?ÖM{RUN}*", {"astrom1", "astrom2", "astrom3"}),  # range, then LIKE
    ("PatientName=ÅSTRO*", set()),  # O is not Ö
    (f"PatientID=QP{RUN}-*&StudyDate=20200101-20201231", {"smith", "doe"}),  # range
    (f"PatientID=QP{RUN}-*&StudyDate=20210601-", {"astrom2", "astrom3"}),  # open range
    (f"PatientID=QP{RUN}-*&StudyDate=-20191231", {"astrom1"}),
    (f"PatientID=QP{RUN}-*&StudyDate=20210601&StudyTime=0000-0100", {"astrom2"}),
    # combined date-time: from 2021-06-01 12:00 to 2021-06-02 12:00
    (f"PatientID=QP{RUN}-3&StudyDate=20210601-20210602&StudyTime=1200-1200", {"astrom3"}),
    (
        f"PatientID=QP{RUN}-3&StudyDate=20190101-20210601&StudyTime=2300-0030",
        {"astrom1", "astrom2"},
    ),
    ("ModalitiesInStudy=PR", {"doe"}),  # any of the study's modalities
    (f"PatientID=QP{RUN}-*&ModalitiesInStudy=SR,MR", {"smith", "doe"}),
    (f"PatientID=QP{RUN}-*&ModalitiesInStudy=US%5CCT", {"smith", "astrom1", "astrom2", "astrom3"}),
    (f"AccessionNumber=QA{RUN}-4", {"astrom2"}),
    (f"PatientID=QP{RUN}-*&StudyDescription=BRAIN*", {"doe"}),  # an attribute with no column
    (
        f"PatientID=QP{RUN}-*&PatientWeight=71",
        {"smith", "doe", "astrom1", "astrom2", "astrom3", "empty"},
    ),
    (f"PatientID=QP{RUN}-4&PatientName=", {"empty"}),  # universal matching
    (f"PatientName=mith{RUN}&fuzzymatching=true", set()),  # fuzzy is a prefix match
    (f"PatientName=smith{RUN}&fuzzymatching=true", {"smith"}),  # case-insensitive
    (f"PatientName=smi&PatientID=QP{RUN}-*&fuzzymatching=true", {"smith", "doe"}),  # any component
    (f"PatientName=astrom{RUN}&fuzzymatching=true", {"astrom1", "astrom2", "astrom3"}),  # accents
    (
        f"PatientName=アストロム&PatientID=QP{RUN}-*&fuzzymatching=true",
        {"astrom1", "astrom2", "astrom3"},
    ),
    (
        f"PatientName=britt%20astr&PatientID=QP{RUN}-*&fuzzymatching=true",
        {"astrom1", "astrom2", "astrom3"},
    ),
]


@pytest.mark.parametrize("query, expected", MATCHING_TABLE, ids=[q for q, _ in MATCHING_TABLE])
def test_study_matching_table(fixture_archive: Archive, query: str, expected: set[str]) -> None:
    assert study_keys(get(fixture_archive, f"/studies?{query}")) == expected


def test_study_uid_list(fixture_archive: Archive) -> None:
    uids = f"{by('smith').uid},{by('astrom2').uid}"
    assert study_keys(get(fixture_archive, f"/studies?StudyInstanceUID={uids}")) == {
        "smith",
        "astrom2",
    }
    uids = f"{by('doe').uid}%5C{by('empty').uid}"
    assert study_keys(get(fixture_archive, f"/studies?StudyInstanceUID={uids}")) == {"doe", "empty"}


def test_default_study_attributes_and_counts(fixture_archive: Archive) -> None:
    (result,) = get(fixture_archive, f"/studies?PatientID=QP{RUN}-1")
    smith = by("smith")
    for tag in (
        "00080005",
        "00080020",
        "00080030",
        "00080050",
        "00080056",
        "00080061",
        "00080090",
        "00081190",
        "00100010",
        "00100020",
        "00100030",
        "00100040",
        "0020000D",
        "00200010",
        "00201206",
        "00201208",
    ):
        assert tag in result, tag
    assert result["00201206"] == {"vr": "IS", "Value": [2]}
    assert result["00201208"] == {"vr": "IS", "Value": [4]}
    assert result["00080061"]["Value"] == ["CT", "SR"]
    assert result["00080056"]["Value"] == ["ONLINE"]
    assert result["00081190"]["Value"] == [f"{fixture_archive.url}/studies/{smith.uid}"]
    assert "00081030" not in result  # not a default attribute, not included
    (result,) = get(fixture_archive, f"/studies?PatientID=QP{RUN}-1&includefield=StudyDescription")
    assert result["00081030"]["Value"] == ["CHEST CT"]
    (result,) = get(fixture_archive, f"/studies?PatientID=QP{RUN}-1&includefield=all")
    assert result["00101030"]["Value"] == [71]  # PatientWeight: patient level, stored on the study
    assert result["00080062"]["vr"] == "UI"  # SOPClassesInStudy with "all"


def test_empty_values_are_returned_empty(fixture_archive: Archive) -> None:
    (result,) = get(fixture_archive, f"/studies?PatientID=QP{RUN}-4")
    assert result["00100010"] == {"vr": "PN"}  # present, no value (type 2)
    assert "Value" not in result.get("00080020", {})


def test_series_level(fixture_archive: Archive) -> None:
    smith = by("smith")
    results = get(fixture_archive, f"/studies/{smith.uid}/series")
    assert sorted(values(results, "00080060")) == ["CT", "SR"]
    ct = next(r for r in results if r["00080060"]["Value"] == ["CT"])
    assert ct["00201209"]["Value"] == [3]
    assert ct["00081190"]["Value"] == [
        f"{fixture_archive.url}/studies/{smith.uid}/series/{smith.series_uids[0]}"
    ]
    assert ct["00400275"]["Value"][0]["00400009"]["Value"] == [f"SPS{RUN}"]
    # all series, narrowed by study attributes; sequence matching
    results = get(fixture_archive, f"/series?PatientID=QP{RUN}-3&Modality=US")
    assert len(results) == 3 and set(values(results, "00100020")) == {f"QP{RUN}-3"}
    results = get(
        fixture_archive, f"/series?RequestAttributesSequence.ScheduledProcedureStepID=SPS{RUN}"
    )
    assert values(results, "0020000E") == [smith.series_uids[0]]
    assert get(fixture_archive, f"/studies/{smith.uid}/series?SeriesNumber=2")[0]["00080060"][
        "Value"
    ] == ["SR"]


def test_instance_level(fixture_archive: Archive) -> None:
    smith = by("smith")
    results = get(fixture_archive, f"/studies/{smith.uid}/series/{smith.series_uids[0]}/instances")
    assert len(results) == 3
    first = results[0]
    for tag in (
        "00080016",
        "00080018",
        "00080056",
        "00081190",
        "00200013",
        "00280010",
        "00280011",
        "00280100",
    ):
        assert tag in first, tag
    assert first["00080016"]["Value"] == [SOP_CLASS["CT"]]
    assert len(get(fixture_archive, f"/studies/{smith.uid}/instances")) == 4
    # multi-valued ImageType: any value matches; an instance attribute from the metadata
    axial = get(fixture_archive, f"/studies/{smith.uid}/instances?ImageType=AXIAL")
    assert len(axial) == 2 and all("AXIAL" in r["00080008"]["Value"] for r in axial)
    assert len(get(fixture_archive, f"/instances?PatientID=QP{RUN}-*&SliceThickness=1.25")) == 13
    assert (
        len(get(fixture_archive, f"/instances?PatientID=QP{RUN}-3&Modality=US&InstanceNumber=1"))
        >= 1
    )
    sop = first["00080018"]["Value"][0]
    assert values(get(fixture_archive, f"/instances?SOPInstanceUID={sop}"), "00080018") == [sop]


def test_limit_offset_and_the_more_results_warning(fixture_archive: Archive) -> None:
    path = f"/studies?PatientID=QP{RUN}-*"
    everything = get(fixture_archive, path)
    assert len(everything) == 6
    r = fixture_archive.http.get(path + "&limit=4")
    assert len(r.json()) == 4 and "additional results" in r.headers["Warning"]
    rest = fixture_archive.http.get(path + "&limit=4&offset=4")
    assert "Warning" not in rest.headers
    assert values(r.json() + rest.json(), "0020000D") == values(everything, "0020000D")
    # PS3.18 8.3.4.4: a limit above the server's maximum returns up to the maximum, and
    # says so (issue #19: it was a 400)
    big = fixture_archive.http.get(path + "&limit=250000")
    assert big.status_code == 200 and len(big.json()) == 6
    assert "at most 10000 results" in big.headers["Warning"]


def test_paging_is_stable_while_new_data_arrives(fixture_archive: Archive) -> None:
    path = f"/studies?PatientID=QP{RUN}-*&limit=3"
    page1 = get(fixture_archive, path)
    s, r = new_uids()
    ds = pydicom.dcmread(DicomBytesIO(ct_slice(s, r, 0)))
    ds.PatientID = f"QP{RUN}-9"
    out = DicomBytesIO()
    ds.save_as(out)
    assert fixture_archive.stow(multipart([out.getvalue()])).status_code == 200
    page2 = get(fixture_archive, path + "&offset=3")
    page3 = get(fixture_archive, path + "&offset=6")
    uids = values(page1 + page2 + page3, "0020000D")
    assert len(uids) == len(set(uids)) == 7 and uids[-1] == s  # nothing repeated or skipped


def test_orderby_extension(fixture_archive: Archive) -> None:
    results = get(fixture_archive, f"/studies?PatientID=QP{RUN}-3&orderby=-StudyDate")
    assert values(results, "00080020") == ["20210602", "20210601", "20190101"]


def test_json_and_406(fixture_archive: Archive) -> None:
    r = fixture_archive.http.get(
        f"/studies?PatientID=QP{RUN}-1", headers={"Accept": "application/json"}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    r = fixture_archive.http.get(
        "/studies", headers={"Accept": 'multipart/related; type="application/dicom+xml"'}
    )
    assert r.status_code == 406 and "application/dicom+json" in r.json()["message"]


@pytest.mark.parametrize(
    "path, fragment",
    [
        ("/studies?NoSuchKeyword=1", "NoSuchKeyword"),
        ("/studies?0010002X=1", "0010002X"),
        ("/studies?StudyDate=2020-01-01", "StudyDate"),
        ("/studies?limit=-5", "limit"),
        ("/studies?Modality=CT", "Modality"),
        ("/studies?includefield=Bogus", "Bogus"),
        ("/studies/1.2.x/series", "Study Instance UID"),
        ("/studies?StudyInstanceUID=1.02", "StudyInstanceUID"),
    ],
)
def test_bad_requests_are_400_naming_the_parameter(
    fixture_archive: Archive, path: str, fragment: str
) -> None:
    r = fixture_archive.http.get(path)
    assert r.status_code == 400
    assert fragment in r.json()["message"]


def test_ohif_study_list_requests(fixture_archive: Archive) -> None:
    """The exact requests OHIF 3 sends for its study list (and a patient filter)."""
    r = fixture_archive.http.get(
        "/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030",
        headers={"Accept": "application/dicom+json"},
    )
    assert r.status_code == 200 and isinstance(r.json(), list) and r.json()
    results = get(
        fixture_archive,
        f"/studies?00100020={quote(f'QP{RUN}-2')}&limit=101&offset=0&fuzzymatching=false"
        "&includefield=00081030%2C00080060%2C00080090%2C00100030",
    )
    assert study_keys(results) == {"doe"}
    assert results[0]["00081030"]["Value"] == ["BRAIN MR"]


@pytest.mark.parametrize(
    "fields",
    [
        "",
        "&includefield=StudyDescription",
        "&includefield=00081030,00080060,00100030",
        "&includefield=StudyDescription,PatientWeight",
        "&includefield=all",
    ],
)
def test_attributes_are_in_tag_order_ps3_18_f_2_2(fixture_archive: Archive, fields: str) -> None:
    """PS3.18 F.2.2: attribute objects in ascending tag order, whether the answer is the
    stored one, the stored one merged with included fields, or built for the search;
    and a merged answer has exactly the defaults plus what was included."""
    r = fixture_archive.http.get(f"/studies?PatientID=QP{RUN}-*{fields}")
    assert r.status_code == 200
    results = r.json()
    assert results
    for result in results:
        assert list(result) == sorted(result)
    if fields.startswith("&includefield=StudyDescription"):
        (plain,) = get(fixture_archive, f"/studies?PatientID=QP{RUN}-1")
        (merged,) = get(fixture_archive, f"/studies?PatientID=QP{RUN}-1{fields}")
        extra = {"00081030"} | ({"00101030"} if "PatientWeight" in fields else set())
        assert set(merged) == set(plain) | extra
        assert {tag: merged[tag] for tag in plain} == plain


@pytest.mark.parametrize("name", [f"astrom{RUN}", f"britt astrom{RUN}", "smi"])
def test_fuzzy_name_pages_are_stable(fixture_archive: Archive, name: str) -> None:
    """Fuzzy matching in the default order and with an orderby finds the same studies,
    and paging one by one visits each exactly once (PS3.18 8.3.4.4 limit / offset)."""
    base = f"/studies?PatientName={quote(name)}&fuzzymatching=true"
    alone = get(fixture_archive, base)
    ordered = get(fixture_archive, base + "&orderby=StudyInstanceUID")
    assert alone and set(values(alone, "0020000D")) == set(values(ordered, "0020000D"))
    paged = [get(fixture_archive, f"{base}&limit=1&offset={k}") for k in range(len(alone))]
    assert [uid for page in paged for uid in values(page, "0020000D")] == values(alone, "0020000D")


def test_dicomweb_client_searches(fixture_archive: Archive) -> None:
    client = DICOMwebClient(url=fixture_archive.url)
    studies = client.search_for_studies(
        search_filters={"PatientID": f"QP{RUN}-3"}, fields=["StudyDescription"]
    )
    assert len(studies) == 3
    fuzzy = client.search_for_studies(
        search_filters={"PatientName": f"astrom{RUN}", "PatientID": f"QP{RUN}-*"},
        fuzzymatching=True,
    )
    assert len(fuzzy) == 3
    page = client.search_for_studies(search_filters={"PatientID": f"QP{RUN}-*"}, limit=2, offset=2)
    assert len(page) == 2
    smith = by("smith")
    series = client.search_for_series(study_instance_uid=smith.uid)
    assert len(series) == 2
    instances = client.search_for_instances(
        study_instance_uid=smith.uid, series_instance_uid=smith.series_uids[0]
    )
    assert len(instances) == 3
    assert client.search_for_series(search_filters={"Modality": "PR", "PatientID": f"QP{RUN}-2"})


def test_stored_study_answers_stay_equal_to_freshly_built_ones(archive: Archive) -> None:
    """The precomputed study answers (trigger, app/index/fragments.py) equal what the
    compiler builds from the row now, after ingest has changed the study's aggregates;
    a new trigger definition rebuilds every study once."""
    import asyncio

    import asyncpg

    from app.index import fragments
    from app.index.compiler import study_fragment_sql

    from conftest import embedded_dsn

    study, series = new_uids()
    assert (
        archive.stow(multipart([ct_slice(study, series, 0, rows=16, cols=16)])).status_code == 200
    )
    _, series2 = new_uids()
    assert (
        archive.stow(multipart([ct_slice(study, series2, 1, rows=16, cols=16)])).status_code == 200
    )
    stale = archive.query(
        f"""SELECT count(*) FROM study st
            WHERE st.qido IS NULL OR st.qido::jsonb IS DISTINCT FROM
                  ({study_fragment_sql(all_attributes=False)})::jsonb
               OR st.qido_all::jsonb IS DISTINCT FROM
                  ({study_fragment_sql(all_attributes=True)})::jsonb"""
    )[0][0]
    assert stale == 0
    row = archive.query("SELECT qido::jsonb AS q FROM study WHERE study_uid = $1", study)[0]
    assert json.loads(row["q"])["00201206"]["Value"] == [2]  # the second series counted
    # the answer over HTTP: RetrieveURL under the request's base URL
    (found,) = archive.http.get("/studies", params={"StudyInstanceUID": study}).json()
    assert found["00081190"]["Value"] == [f"{archive.url}/studies/{study}"]

    async def reinstall() -> int:
        conn = await asyncpg.connect(embedded_dsn(archive.data_dir))
        try:
            await conn.execute("UPDATE pictor_setting SET value = 'old' WHERE name LIKE 'study%'")
            return await fragments.install(conn)
        finally:
            await conn.close()

    total = archive.query("SELECT count(*) FROM study")[0][0]
    assert asyncio.run(reinstall()) == total
