"""De-identification (issue #17): the Basic Application Level Confidentiality Profile of
PS3.15 Annex E, with two of its options, for routes and exports.

The profile's table (PS3.15 Table E.1-1) is not typed in here: it is the one that
``dicom-anonymizer`` (KitwareMedical) generates from the standard, edition 2026c,
with its action codes (E.1.1): D replace with a dummy value, Z replace with an empty
(or dummy) value, X remove, K keep, U replace a UID, and the conditional ones. Where the
table leaves a choice, the choice that keeps any IOD conformant is made: X/Z becomes
Z; Z/D, X/D and X/Z/D become D; X/Z/U* becomes U (a UID replaced, a sequence kept with
its items cleaned and the UIDs in them replaced, so references stay linked), else Z.
Attributes the table does not name are kept, and their sequences cleaned item by item;
private attributes are removed (no Retain Safe Private Option).

Replacement values:

* UIDs (U): ``2.25.<128 bits of HMAC-SHA256(key, UID)>`` (PS3.5 B.2): the same original
  UID always gives the same new one within an archive (the key is the archive's), so
  series, references and later exports stay linked, and nobody without the key can go
  back.
* Patient ID and Patient's Name (Z, here a consistent dummy): ``ANON-`` and 12 hex
  digits of the same HMAC over the Patient ID, so one patient's studies stay together.
* Other D values: a dummy of the VR (``ANONYMIZED``, ``19000101``, ``0``...).

Options (PS3.15 E.3):

* ``retain-dates``: Retain Longitudinal Temporal Information with Full Dates Option
  (E.3.6): the table's dates, times and date-times (VR DA, DT, TM) are kept.
* ``clean-descriptors``: Clean Descriptors Option (E.3.5): the table's free-text
  descriptions, comments, labels and histories are kept, with every identifying value of
  the instance (names, IDs, birth date, accession number, institution) cut out of them.
  The column of the table is approximated by these names; descriptor code sequences are
  still removed.

Then Patient Identity Removed (0012,0062) is YES, De-identification Method (0012,0063)
says what was done, De-identification Method Code Sequence (0012,0064) lists the CID
7050 codes, and Longitudinal Temporal Information Modified (0028,0303) is REMOVED or
UNMODIFIED. Pixel data are unchanged: text burned into the pixels is not removed (the
Clean Pixel Data Option is out of scope).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from collections.abc import Iterable

from dicomanonymizer.dicom_anonymization_databases import (
    dicomfields_2026c as _table,
)
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

OPTIONS = ("retain-dates", "clean-descriptors")
TABLE_EDITION = "2026c"

#: the table's categories -> the action taken (see the module's docstring)
_CATEGORIES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "D",
    "X_Z_TAGS": "Z",
    "X_D_TAGS": "D",
    "X_Z_D_TAGS": "D",
    "X_Z_U_STAR_TAGS": "U*",
}


def _load() -> tuple[dict[int, str], list[tuple[int, int, str]]]:
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []  # repeating groups: (tag, mask, action)
    for category, action in _CATEGORIES.items():
        for entry in getattr(_table, category):
            if len(entry) == 2:
                exact[entry[0] << 16 | entry[1]] = action
            else:
                group, element, gmask, emask = entry
                masked.append((group << 16 | element, gmask << 16 | emask, action))
    return exact, masked


_EXACT, _MASKED = _load()

#: CID 7050 De-identification Method (PS3.16): the profile and the options used
_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean-descriptors": ("113105", "Clean Descriptors Option"),
    "retain-dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
}
_DUMMY = {
    "AE": "ANONYMIZED",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "UT": "ANONYMIZED",
}
_NUMBERS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
_TEXT = {"LO", "LT", "SH", "ST", "UC", "UT"}
_DESCRIPTOR = re.compile(r"Description|Comment|Label|History|Diagnos|Allerg|Reason|Agent")
_PATIENT_ID = 0x00100020
_PATIENT_NAME = 0x00100010
#: values whose text is cut out of descriptors (Clean Descriptors Option)
_IDENTIFYING = (
    0x00100010, 0x00100020, 0x00101000, 0x00100030, 0x00080050, 0x00080080,
    0x00080090, 0x00081050, 0x00081070, 0x00200010, 0x00101040,
)  # fmt: skip


def parse_options(text: str) -> tuple[str, ...]:
    """``basic[,retain-dates][,clean-descriptors]`` -> the options; ValueError naming a
    wrong one."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words or words[0] != "basic":
        raise ValueError("de-identification is basic[,retain-dates][,clean-descriptors]")
    unknown = [w for w in words[1:] if w not in OPTIONS]
    if unknown:
        raise ValueError(
            f"unknown de-identification option {unknown[0][:40]!r}: "
            f"basic may add {', '.join(OPTIONS)}"
        )
    return tuple(sorted(set(words[1:]), key=OPTIONS.index))


def new_uid(key: bytes, uid: str) -> str:
    """The replacement of ``uid``: the same for the same key, unrelated otherwise."""
    digest = hmac.new(key, b"uid\0" + uid.encode(), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def pseudonym(key: bytes, patient_id: str) -> str:
    digest = hmac.new(key, b"patient\0" + patient_id.encode(), hashlib.sha256)
    return "ANON-" + digest.hexdigest()[:12]


def archive_key(secret: bytes) -> bytes:
    """The de-identification key of an archive, from its study-link secret (shared by
    every node, kept in the index and in its backups)."""
    return hmac.new(secret, b"pictor de-identification", hashlib.sha256).digest()


def _action(tag: int) -> str | None:
    found = _EXACT.get(tag)
    if found is not None:
        return found
    for value, mask, action in _MASKED:
        if tag & mask == value:
            return action
    return None


class _Run:
    def __init__(self, key: bytes, options: tuple[str, ...], top: Dataset) -> None:
        self.key = key
        self.dates = "retain-dates" in options
        self.descriptors = "clean-descriptors" in options
        raw_id = top.get(_PATIENT_ID)
        self.patient = pseudonym(key, str(raw_id.value if raw_id is not None else "") or "")
        self.identifying = self._identifying(top) if self.descriptors else []

    @staticmethod
    def _identifying(ds: Dataset) -> list[str]:
        words: set[str] = set()
        for tag in _IDENTIFYING:
            el = ds.get(tag)
            if el is None or el.value in (None, ""):
                continue
            values = el.value if el.VM > 1 else [el.value]
            for v in values:
                text = str(v)
                words.add(text)
                words.update(p for p in re.split(r"[\^ =]+", text) if len(p) >= 3)
        return sorted(words, key=len, reverse=True)

    def clean_text(self, text: str) -> str:
        for word in self.identifying:
            text = re.sub(re.escape(word), "", text, flags=re.IGNORECASE)
        return re.sub(r"\s{2,}", " ", text).strip()

    def dataset(self, ds: Dataset) -> None:
        for el in list(ds):
            tag = int(el.tag)
            if el.tag.is_private:
                del ds[tag]
                continue
            action = _action(tag)
            if action is None:
                if el.VR == "SQ":
                    self.sequence(el)
                continue
            self.element(ds, el, action)

    def sequence(self, el: DataElement) -> None:
        for item in el.value or []:
            self.dataset(item)

    def element(self, ds: Dataset, el: DataElement, action: str) -> None:
        tag, vr = int(el.tag), el.VR
        if self.dates and vr in ("DA", "DT", "TM"):
            return  # E.3.6: kept
        if (
            self.descriptors
            and vr in _TEXT
            and _DESCRIPTOR.search(el.keyword or "")
            and action != "U"
        ):
            if isinstance(el.value, str):
                el.value = self.clean_text(el.value)
            return  # E.3.5: cleaned
        if tag in (_PATIENT_ID, _PATIENT_NAME):
            el.value = self.patient
            return
        if action == "X":
            del ds[tag]
        elif action in ("U", "U*") and vr == "UI":
            self.uids(el)
        elif vr == "SQ":
            if action in ("D", "U*"):  # items cleaned: their UIDs replaced, references kept
                self.sequence(el)
            else:
                el.value = Sequence()
        elif action == "D":
            el.value = self.dummy(vr)
        else:  # Z, and U* of what is not a UID
            el.value = None

    def uids(self, el: DataElement) -> None:
        if el.value in (None, ""):
            return
        if el.VM > 1:
            el.value = [new_uid(self.key, str(v)) for v in el.value]
        else:
            el.value = new_uid(self.key, str(el.value))

    @staticmethod
    def dummy(vr: str) -> object:
        if vr in _NUMBERS:
            return 0
        return _DUMMY.get(vr)


def deidentify(ds: Dataset, key: bytes, options: Iterable[str] = ()) -> Dataset:
    """De-identify ``ds`` in place (and its File Meta); returned for convenience."""
    chosen = tuple(o for o in OPTIONS if o in set(options))
    run = _Run(key, chosen, ds)
    run.dataset(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
    ds.PatientIdentityRemoved = "YES"
    names = ["basic", *chosen]
    ds.DeidentificationMethod = (
        f"PS3.15 E.1 Basic Profile (table {TABLE_EDITION})"
        + "".join(f"; {_CODES[n][1]}" for n in chosen)
    )[:64]
    codes = []
    for name in names:
        item = Dataset()
        item.CodeValue, item.CodeMeaning = _CODES[name]
        item.CodingSchemeDesignator = "DCM"
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(codes)
    ds.LongitudinalTemporalInformationModified = "UNMODIFIED" if run.dates else "REMOVED"
    return ds


def deidentify_part10(data: bytes, key: bytes, options: tuple[str, ...]) -> tuple[bytes, str]:
    """A Part 10 file de-identified (in a codec worker): its bytes and new SOP Instance
    UID. The transfer syntax stays: pixel data are not touched."""
    ds = dcmread(io.BytesIO(data))
    deidentify(ds, key, options)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), str(ds.SOPInstanceUID)
