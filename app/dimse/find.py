"""Query/Retrieve C-FIND through the QIDO query model (PS3.4 C.4.1, C.6.1, C.6.2).

There is one matcher in the archive: an identifier becomes the same
:class:`~app.index.query.Query` a QIDO-RS request does (its keys with a value become
query parameters, parsed by :func:`app.services.search.build_query`, so PS3.4 C.2.2.2
single value, wildcard, range, list of UID and sequence matching mean the same over
DIMSE and over HTTP), is run by :mod:`app.services.search`, and each DICOM JSON
result becomes a response identifier holding exactly the requested keys (C.4.1.1.3.2).

Levels (C.6.1.1, C.6.2.1): STUDY, SERIES and IMAGE are the QIDO study, series and
instance levels. PATIENT (Patient Root only) is a study-level search on Patient
attributes, ordered by Patient ID, whose results are folded into one response per
patient, with Number of Patient Related Studies / Series / Instances counted from the
study rows.

Keys with a zero-length value (or only ``*``) are universal matches: returned, not
matched (C.2.2.2.3, C.2.2.2.4). Private and command/meta groups are ignored. The archive
answers relational queries too (keys above the level need not be unique keys, C.4.1.2.2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgspec
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from app.dicom.dictionary import keyword, vr_of
from app.dicom.uids import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from app.dimse.resources import Resources
from app.dimse.status import CANCEL, PENDING, IdentifierError, Service, failure
from app.errors import BadRequest
from app.services.search import Level, Query, build_query, run

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
RETRIEVE_URL = 0x00081190
PATIENT_ID = 0x00100020
ISSUER_OF_PATIENT_ID = 0x00100021
STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018
NUMBER_OF_STUDY_RELATED_SERIES = 0x00201206
NUMBER_OF_STUDY_RELATED_INSTANCES = 0x00201208
#: Patient level counts (PS3.4 C.6.1.1.2 Table C.6-1), computed from the study rows
PATIENT_COUNTS = {
    0x00201200: None,  # Number of Patient Related Studies
    0x00201202: NUMBER_OF_STUDY_RELATED_SERIES,  # ... Series
    0x00201204: NUMBER_OF_STUDY_RELATED_INSTANCES,  # ... Instances
}
#: keys the archive fills in itself: returned, never matched
LOCAL_KEYS = frozenset({RETRIEVE_AE_TITLE, *PATIENT_COUNTS})
#: results fetched per index query; responses go out while the next page is read
PAGE = 500
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_UTF8 = "ISO_IR 192"


class Model(Enum):
    """The information model of a Query/Retrieve SOP class (PS3.4 C.6)."""

    PATIENT_ROOT = "Patient Root"
    STUDY_ROOT = "Study Root"


#: Query/Retrieve SOP Class UIDs (PS3.4 C.6.1.3, C.6.2.3)

MODELS: dict[str, Model] = {
    PATIENT_ROOT_FIND: Model.PATIENT_ROOT,
    PATIENT_ROOT_MOVE: Model.PATIENT_ROOT,
    PATIENT_ROOT_GET: Model.PATIENT_ROOT,
    STUDY_ROOT_FIND: Model.STUDY_ROOT,
    STUDY_ROOT_MOVE: Model.STUDY_ROOT,
    STUDY_ROOT_GET: Model.STUDY_ROOT,
}

#: Query/Retrieve Level (0008,0052) -> the QIDO level searched
LEVELS: dict[str, Level] = {
    "PATIENT": Level.STUDY,
    "STUDY": Level.STUDY,
    "SERIES": Level.SERIES,
    "IMAGE": Level.INSTANCE,
}
HIERARCHY = ("PATIENT", "STUDY", "SERIES", "IMAGE")
#: the unique key of each level (PS3.4 C.6.1.1, C.6.2.1)
UNIQUE_KEYS = {
    "PATIENT": PATIENT_ID,
    "STUDY": STUDY_UID,
    "SERIES": SERIES_UID,
    "IMAGE": SOP_INSTANCE_UID,
}


@dataclass(frozen=True)
class Request:
    """A parsed C-FIND / C-MOVE / C-GET identifier."""

    level: str  # PATIENT, STUDY, SERIES or IMAGE
    query: Query
    #: the identifier's keys: the template of each response (PS3.4 C.4.1.1.3.2)
    keys: Dataset


def parse_identifier(identifier: Dataset, model: Model, *, retrieve: bool = False) -> Request:
    """Turn an identifier into a :class:`Request`; raise :class:`IdentifierError` (A900H).

    ``retrieve``: a C-MOVE / C-GET identifier, which holds unique keys only: the level's
    and those of the levels above it (PS3.4 C.4.2.2.1, C.4.3.2.1).
    """
    level = _level(identifier, model)
    allowed = {UNIQUE_KEYS[lv] for lv in HIERARCHY[: HIERARCHY.index(level) + 1]}
    params: list[tuple[str, str]] = []
    returned: set[int] = {UNIQUE_KEYS[level]}
    for elem in identifier:
        tag = int(elem.tag)
        if tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET) or _ignored(elem):
            continue
        returned.add(tag)
        name = keyword(tag)  # the parser takes keywords or tags; comments read better
        if elem.VR == "SQ":
            matching = _sequence_params(elem, name)
        else:
            value = key_text(elem)
            matching = [] if value in ("", "*") else [(name, value)]
        if not matching:
            continue
        if tag in LOCAL_KEYS:
            raise IdentifierError(f"matching on {keyword(tag)} is not supported", offending=tag)
        if retrieve and tag not in allowed:
            raise IdentifierError(
                f"{keyword(tag)} is not a unique key of the {level} level or above",
                offending=tag,
            )
        if level == "PATIENT" and tag >> 16 != 0x0010:
            raise IdentifierError(f"{keyword(tag)} is not a Patient level key", offending=tag)
        params.extend(matching)
    if retrieve and keyword(UNIQUE_KEYS[level]) not in (name for name, _ in params):
        key = UNIQUE_KEYS[level]
        raise IdentifierError(f"the {level} level needs a {keyword(key)} value", offending=key)
    try:
        query = build_query(LEVELS[level], params, default_limit=PAGE)
    except BadRequest as exc:
        raise IdentifierError(exc.message.replace("query parameter ", "key ")) from None
    if level == "PATIENT":
        returned |= {PATIENT_ID, ISSUER_OF_PATIENT_ID}
        returned |= {t for t in PATIENT_COUNTS.values() if t is not None}
    if level != "STUDY" and level != "PATIENT":
        returned |= {STUDY_UID} | ({SERIES_UID} if level == "IMAGE" else set())
    # the compiler always binds the base URL parameter: the SQL must use it, or
    # PostgreSQL cannot type it (QIDO's default attributes always include RetrieveURL)
    returned.add(RETRIEVE_URL)
    query = dataclasses.replace(
        query,
        returned=frozenset(returned),
        limit=PAGE,
        order=((PATIENT_ID, False),) if level == "PATIENT" else (),
    )
    return Request(level, query, identifier)


def _level(identifier: Dataset, model: Model) -> str:
    elem = identifier.get(QUERY_RETRIEVE_LEVEL)
    if elem is None or elem.value in (None, ""):
        raise IdentifierError(
            "QueryRetrieveLevel (0008,0052) is missing", offending=QUERY_RETRIEVE_LEVEL
        )
    level = str(elem.value).strip()
    if level not in LEVELS:
        raise IdentifierError(
            f"QueryRetrieveLevel {level[:16]!r} is not PATIENT, STUDY, SERIES or IMAGE",
            offending=QUERY_RETRIEVE_LEVEL,
        )
    if level == "PATIENT" and model is Model.STUDY_ROOT:
        raise IdentifierError(
            "Study Root has no PATIENT level (PS3.4 C.6.2)", offending=QUERY_RETRIEVE_LEVEL
        )
    return level


def _ignored(elem: DataElement) -> bool:
    """Private attributes and command / file meta groups are not keys."""
    return bool(elem.tag.is_private) or elem.tag.group in (0x0000, 0x0002)


def key_text(elem: DataElement) -> str:
    """The value of a key as QIDO query text (values of a multi-valued key joined by \\)."""
    value = elem.value
    if value is None or value == "" or value == b"":
        return ""
    if elem.VR in _BINARY_VRS:
        raise IdentifierError(
            f"{keyword(int(elem.tag))} has VR {elem.VR}, which cannot be matched",
            offending=int(elem.tag),
        )
    values = list(value) if isinstance(value, (MultiValue, list)) else [value]
    if elem.VR == "PN":
        # PS3.4 C.2.2.2.1: the Alphabetic group is what the archive matches
        return "\\".join(str(v).split("=")[0] for v in values)
    return "\\".join(str(v).strip() for v in values)


def _sequence_params(elem: DataElement, name: str) -> list[tuple[str, str]]:
    """Sequence matching (PS3.4 C.2.2.2.6): the keys of its one item, as dotted paths."""
    items = list(elem.value or [])
    if len(items) > 1:
        raise IdentifierError(
            f"{keyword(int(elem.tag))}: a sequence key has one item at most",
            offending=int(elem.tag),
        )
    params: list[tuple[str, str]] = []
    for sub in items[0] if items else []:
        if _ignored(sub):
            continue
        path = f"{name}.{keyword(int(sub.tag))}"
        if sub.VR == "SQ":
            params.extend(_sequence_params(sub, path))
        elif (value := key_text(sub)) not in ("", "*"):
            params.append((path, value))
    return params


# -- results -> response identifiers ----------------------------------------------------


def response(result: dict[str, Any], request: Request, ae_title: str) -> Dataset:
    """The C-FIND response identifier of one DICOM JSON result: the requested keys only,
    zero-length where the archive has no value (PS3.4 C.4.1.1.3.2)."""
    found, empty = requested(result, request.keys, ae_title)
    unique = f"{UNIQUE_KEYS[request.level]:08X}"
    if unique not in found and unique in result:
        found[unique] = result[unique]
    ds = identifier(found, empty)
    ds.QueryRetrieveLevel = request.level
    return ds


def requested(
    result: dict[str, Any], keys: Dataset, ae_title: str
) -> tuple[dict[str, Any], list[DataElement]]:
    """The keys of the request's identifier that ``result`` (DICOM JSON) has, and those
    it has not, as zero-length elements (PS3.4 C.4.1.1.3.2, K.4.1.1.3.2)."""
    found: dict[str, Any] = {}
    empty: list[DataElement] = []
    for elem in keys:
        tag = int(elem.tag)
        if tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET) or _ignored(elem):
            continue
        name = f"{tag:08X}"
        item = result.get(name)
        if tag == RETRIEVE_AE_TITLE:
            item = {"vr": "AE", "Value": [ae_title]}
        if item is None or "BulkDataURI" in item:
            vr = elem.VR if elem.VR in _KNOWN_VRS else vr_of(tag)
            empty.append(DataElement(tag, vr, [] if vr == "SQ" else None))
            continue
        if elem.VR == "SQ" and elem.value:
            item = _sequence_subset(item, elem)
        found[name] = item
    return found, empty


def identifier(found: dict[str, Any], empty: list[DataElement]) -> Dataset:
    """A response identifier from :func:`requested`'s parts, in UTF-8 when it must be."""
    ds = Dataset.from_json(found)
    for elem in empty:
        ds.add(elem)
    if not msgspec.json.encode(found).isascii():
        ds.SpecificCharacterSet = _UTF8  # PS3.5 6.1.2.3: Unicode in UTF-8
    return ds


_KNOWN_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF"}
    | {"OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL"}
    | {"UN", "UR", "US", "UT", "UV"}
)


def _sequence_subset(item: dict[str, Any], requested: DataElement) -> dict[str, Any]:
    """The requested attributes of each item of a returned sequence (C.2.2.2.6), those
    an item lacks zero-length."""
    subs = {f"{int(sub.tag):08X}": sub.VR for sub in requested.value[0] if not _ignored(sub)}
    values = [
        {
            k: one.get(k) or {"vr": vr if vr in _KNOWN_VRS else vr_of(int(k, 16))}
            for k, vr in subs.items()
        }
        for one in item.get("Value", [])
    ]
    return {"vr": "SQ", "Value": values}


def patients(studies: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Fold study results ordered by Patient ID into one result per patient, with the
    Number of Patient Related Studies / Series / Instances (PS3.4 C.6.1.1.2)."""
    current: dict[str, Any] | None = None
    identity: tuple[str, str] | None = None
    counts = dict.fromkeys(PATIENT_COUNTS, 0)
    for study in studies:
        key = (_first(study, PATIENT_ID), _first(study, ISSUER_OF_PATIENT_ID))
        if current is not None and key != identity:
            yield _with_counts(current, counts)
            counts = dict.fromkeys(PATIENT_COUNTS, 0)
        if current is None or key != identity:
            current, identity = study, key
        for tag, source in PATIENT_COUNTS.items():
            counts[tag] += 1 if source is None else int(_first(study, source) or 0)
    if current is not None:
        yield _with_counts(current, counts)


def _first(result: dict[str, Any], tag: int) -> str:
    values = result.get(f"{tag:08X}", {}).get("Value") or [""]
    return str(values[0])


def _with_counts(result: dict[str, Any], counts: dict[int, int]) -> dict[str, Any]:
    out = dict(result)
    for tag, n in counts.items():
        out[f"{tag:08X}"] = {"vr": "IS", "Value": [n]}
    return out


# -- the service ------------------------------------------------------------------------


async def search_all(res: Resources, query: Query) -> list[list[dict[str, Any]]]:
    """Every page of results of ``query`` (used where all are needed at once)."""
    pages = []
    offset = 0
    while True:
        rows, more = await search_page(res, query, offset)
        pages.append(rows)
        if not more:
            return pages
        offset += query.limit


async def search_page(res: Resources, query: Query, offset: int) -> tuple[list[Any], bool]:
    result = await run(
        res.pool, dataclasses.replace(query, offset=offset), res.settings.public_base_url
    )
    return msgspec.json.decode(result.body), result.more


class Find:
    """The C-FIND service (runs in pynetdicom's threads; the index through the bridge)."""

    def __init__(self, res: Resources) -> None:
        self.res = res

    def handle(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """EVT_C_FIND handler: pending responses, one per match, then pynetdicom's final
        success; a failure status with an Error Comment when the identifier is unusable."""
        try:
            model = MODELS[str(event.request.AffectedSOPClassUID)]
            request = parse_identifier(event.identifier, model)
            results = self._results(request)
            for result in results:
                if event.is_cancelled:
                    yield CANCEL, None  # PS3.4 C.4.1.3.2 C-CANCEL
                    return
                yield PENDING, response(result, request, self.res.settings.dimse_ae_title)
        except Exception as exc:  # noqa: BLE001 - one place maps it to a status
            yield failure(exc, Service.FIND), None

    def _results(self, request: Request) -> Iterator[dict[str, Any]]:
        studies = self._pages(request.query)
        return patients(studies) if request.level == "PATIENT" else studies

    def _pages(self, query: Query) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            rows, more = self.res.bridge.run(search_page(self.res, query, offset))
            yield from rows
            if not more:
                return
            offset += query.limit
