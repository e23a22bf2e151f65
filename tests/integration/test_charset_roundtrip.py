"""Every file of pydicom's character set test set through STOW, QIDO and WADO (issue #19).

Stored, each is found by its Study Instance UID with its PatientName as pydicom decodes
it (PN as PS3.18 F.2.2 has it), its metadata holds every text attribute as pydicom
decodes it, its bytes come back as stored, and a non-ASCII name is found by single value
matching (PS3.4 C.2.2.2.1) on its Alphabetic component group.

(The module is not named test_charsets.py: tests/unit/dicom/ has that name, and two test
modules of one basename cannot be collected together without packages.)
"""

from __future__ import annotations

import email
import email.policy
from io import BytesIO

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from charset_files import CHARSET_FILES, expected_texts, json_texts, person_name, storable
from conftest import Archive, multipart

NAMES = [p.name for p in CHARSET_FILES]


@pytest.fixture(scope="module")
def charset_files(archive: Archive) -> dict[str, bytes]:
    """File name -> the bytes stored, all in one STOW request."""
    files = storable()
    r = archive.stow(multipart(list(files.values())))
    assert r.status_code == 200, r.text
    assert len(r.json()["00081199"]["Value"]) == len(files)
    return files


def _dataset(data: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(data))


def _instance_path(ds: Dataset) -> str:
    return (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _bodies(response: httpx.Response) -> list[bytes]:
    """The parts of a multipart/related body, by the standard library's MIME parser."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + response.content, policy=email.policy.HTTP)
    return [part.get_payload(decode=True) for part in message.iter_parts()]


def _patient_name(ds: Dataset) -> list[dict[str, str] | None] | None:
    name = ds.get("PatientName")
    return [person_name(name)] if name else None


@pytest.mark.parametrize("name", NAMES)
def test_the_study_is_found_with_its_decoded_patient_name(
    archive: Archive, charset_files: dict[str, bytes], name: str
) -> None:
    ds = _dataset(charset_files[name])
    r = archive.http.get("/studies", params={"StudyInstanceUID": ds.StudyInstanceUID})
    assert r.status_code == 200, r.text
    (study,) = r.json()
    assert study.get("00100010", {}).get("Value") == _patient_name(ds)


@pytest.mark.parametrize("name", NAMES)
def test_metadata_holds_the_text_as_pydicom_decodes_it(
    archive: Archive, charset_files: dict[str, bytes], name: str
) -> None:
    ds = _dataset(charset_files[name])
    r = archive.http.get(_instance_path(ds) + "/metadata")
    assert r.status_code == 200, r.text
    (metadata,) = r.json()
    assert json_texts(metadata) == expected_texts(ds)
    charsets = ds.SpecificCharacterSet
    charsets = [charsets] if isinstance(charsets, str) else list(charsets)
    # an empty value 1 (ASCII) is null in JSON (PS3.18 F.2.5)
    assert metadata["00080005"]["Value"] == [c or None for c in charsets]


@pytest.mark.parametrize("name", NAMES)
def test_the_instance_comes_back_as_stored(
    archive: Archive, charset_files: dict[str, bytes], name: str
) -> None:
    ds = _dataset(charset_files[name])
    r = archive.http.get(
        _instance_path(ds),
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert r.status_code == 200, r.text
    assert _bodies(r) == [charset_files[name]]


NON_ASCII_NAMES = [
    p.name
    for p in CHARSET_FILES
    if (n := pydicom.dcmread(p, stop_before_pixels=True).get("PatientName"))
    and not n.alphabetic.isascii()
]


@pytest.mark.parametrize("name", NON_ASCII_NAMES)
def test_a_non_ascii_name_is_matched_exactly(
    archive: Archive, charset_files: dict[str, bytes], name: str
) -> None:
    """Korean, Japanese (hiragana, half-width katakana), Arabic, Greek, Hebrew, Cyrillic,
    accented Latin: the query value is UTF-8 in the URL (PS3.18 8.3.4.1)."""
    ds = _dataset(charset_files[name])
    alphabetic = ds.PatientName.alphabetic
    r = archive.http.get("/studies", params={"PatientName": alphabetic, "fuzzymatching": "false"})
    assert r.status_code == 200, r.text
    found = {s["0020000D"]["Value"][0]: s["00100010"]["Value"][0] for s in r.json()}
    assert ds.StudyInstanceUID in found
    assert all(pn["Alphabetic"] == alphabetic for pn in found.values())
