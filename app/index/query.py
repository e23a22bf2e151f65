"""The QIDO query model and its parser (PS3.18 8.3.4 and 10.6.1, PS3.4 C.2.2.2).

:func:`parse_query` turns the query parameters of a QIDO-RS request into a typed
:class:`Query`; :mod:`app.index.compiler` turns that into SQL. Both are pure. The same
model serves C-FIND (the DIMSE shim builds it from an identifier).

Matching, per PS3.4 C.2.2.2 as PS3.18 8.3.4 applies it:

* empty value: universal matching, the attribute is returned (C.2.2.2.3);
* ``*`` and ``?`` on the string VRs that allow wildcards: wildcard matching (C.2.2.2.4);
* ``a-b``, ``a-``, ``-b`` on DA, TM, DT: range matching (C.2.2.2.5), and a date range
  with a time range of the same pair (StudyDate + StudyTime, ...) is combined into one
  date-time range (C.2.2.2.5.1);
* ``\\``- or comma-separated UIDs (and codes for CS / AE / SH / IS): list matching
  (C.2.2.2.2); a repeated key is a list too;
* ``Sequence.Attribute=value``: sequence matching (C.2.2.2.6);
* anything else: single value matching (C.2.2.2.1), case-sensitive;
* ``fuzzymatching=true``: person names match case- and accent-insensitively, any name
  component by prefix (PS3.18 8.3.4.6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Literal

from app.dicom import levels
from app.dicom.dictionary import UnknownAttribute, keyword, resolve, vr_of
from app.dicom.uids import uid_problem
from app.errors import BadRequest, NotFound

#: results returned without a ``limit``: searches across the archive are paged by 100
#: (with the Warning that more exist); searches inside one study or series are not cut
#: short below MAX_LIMIT
DEFAULT_LIMIT = 100
MAX_LIMIT = 10000

# Bounds on what one search may ask for (DESIGN.md decision 12): each is far above what
# a viewer or an integration sends, and each is refused with a 400 that names it.
#: query parameters in all (keys, includefield, limit, ...)
MAX_PARAMETERS = 256
#: distinct attributes in includefield (DICOM JSON of a study has a few dozen)
MAX_INCLUDEFIELDS = 128
#: distinct matching keys
MAX_KEYS = 64
#: values of one key (a UID list: PS3.4 C.2.2.2.2)
MAX_VALUES = 512
#: characters of one value (PS3.5 6.2: the longest VR with a bound, UR/UT aside, is
#: LT with 10240; matching keys are LO, PN, SH, UI: 64)
MAX_VALUE_CHARS = 1024
#: orderby keys
MAX_ORDER = 8

Kind = Literal["single", "wildcard", "range", "list"]

#: VRs on which * and ? are wildcards (PS3.4 C.2.2.2.4)
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
#: VRs whose values may be given as a list (C.2.2.2.2 for UI; codes and numbers here)
LIST_VRS = frozenset({"UI", "CS", "AE", "SH", "IS"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})
#: date / time pairs matched as one date-time range (PS3.4 C.2.2.2.5.1)
DATE_TIME_PAIRS = {
    0x00080020: 0x00080030,  # Study Date / Time
    0x00080021: 0x00080031,  # Series Date / Time
    0x00080022: 0x00080032,  # Acquisition Date / Time
    0x00080023: 0x00080033,  # Content Date / Time
    0x00400244: 0x00400245,  # Performed Procedure Step Start Date / Time
}

_DA = re.compile(r"\d{8}", re.ASCII)
_TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", re.ASCII)
_DT = re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?", re.ASCII)


class Level(Enum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


@dataclass(frozen=True)
class Condition:
    """One matching key: an attribute (a path through sequences) and how to match it."""

    path: tuple[int, ...]
    vr: str
    kind: Kind
    values: tuple[str, ...]
    fuzzy: bool = False

    @property
    def tag(self) -> int:
        return self.path[0]


@dataclass(frozen=True)
class DateTimeRange:
    """A date range and a time range matched together (PS3.4 C.2.2.2.5.1)."""

    date_tag: int
    time_tag: int
    low: tuple[str, str] | None  # (date, time)
    high: tuple[str, str] | None


@dataclass(frozen=True)
class Query:
    level: Level
    study_uid: str | None = None
    series_uid: str | None = None
    conditions: tuple[Condition, ...] = ()
    date_times: tuple[DateTimeRange, ...] = ()
    #: top-level attributes to return (defaults + includefield + matching keys); None: all
    returned: frozenset[int] | None = frozenset()
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    order: tuple[tuple[int, bool], ...] = ()  # (tag, descending)
    fuzzy: bool = False
    warnings: tuple[str, ...] = field(default=())


def _level_allows(level: Level, tag: int) -> bool:
    if level is Level.STUDY:
        return levels.is_study_level(tag)
    if level is Level.SERIES:
        return levels.is_study_level(tag) or levels.is_series_level(tag)
    return True


def _path(name: str, param: str) -> tuple[int, ...]:
    try:
        return tuple(resolve(part) for part in name.split("."))
    except UnknownAttribute as exc:
        raise BadRequest(f"query parameter {param!r}: {exc}") from None


def _check_range_value(vr: str, value: str, param: str) -> None:
    pattern = {"DA": _DA, "TM": _TM, "DT": _DT}[vr]
    if value and not pattern.fullmatch(value):
        raise BadRequest(
            f"query parameter {param!r}: {value!r} is not a valid {vr} value (PS3.5 6.2)"
        )


#: the range of each integer VR (PS3.5 6.2: IS is a 32-bit signed integer in text)
INTEGER_RANGES = {
    "IS": (-(2**31), 2**31 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "US": (0, 2**16 - 1),
    "SL": (-(2**31), 2**31 - 1),
    "UL": (0, 2**32 - 1),
    "SV": (-(2**63), 2**63 - 1),
    "UV": (0, 2**64 - 1),
}
INTEGER_VRS = frozenset(INTEGER_RANGES)
DECIMAL_VRS = frozenset({"DS", "FL", "FD"})
#: a decimal string (PS3.5 6.2 DS), with an exponent a float64 can hold
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
#: C0 controls and DEL
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _check_number(vr: str, value: str, param: str) -> None:
    """A value for a numeric attribute must be a number its VR can hold (400 otherwise,
    not a database error later). Spaces around it are allowed (PS3.5 6.2 IS, DS), other
    white space is not: PostgreSQL's numeric does not take it."""
    if vr in INTEGER_VRS:
        text = value.strip(" ")
        if not _INTEGER.fullmatch(text):
            raise BadRequest(f"query parameter {param!r}: {value!r} is not an integer")
        number = int(text)
        low, high = INTEGER_RANGES[vr]
        if not low <= number <= high:
            raise BadRequest(
                f"query parameter {param!r}: {value!r} is outside the range of {vr} "
                f"({low} to {high}, PS3.5 6.2)"
            )
    elif vr in DECIMAL_VRS:
        text = value.strip(" ")
        if not _DECIMAL.fullmatch(text) or abs(float(text)) > 1.7e308:
            raise BadRequest(f"query parameter {param!r}: {value!r} is not a decimal number")


def check_text(value: str, param: str) -> None:
    """A value the index can compare: bounded, and no control characters (PS3.5 6.1.3:
    none but ESC, TAB, LF, FF and CR belong in a value, and PostgreSQL text holds no
    NUL)."""
    if len(value) > MAX_VALUE_CHARS:
        raise BadRequest(
            f"query parameter {param!r}: a value is longer than {MAX_VALUE_CHARS} characters"
        )
    if _CONTROL.search(value):
        raise BadRequest(f"query parameter {param!r}: a value contains a control character")


def _condition(
    path: tuple[int, ...], values: list[str], param: str, fuzzy: bool
) -> Condition | None:
    tag = path[-1]
    vr = vr_of(tag)
    if vr == "SQ":
        raise BadRequest(
            f"query parameter {param!r}: a sequence is matched through one of its "
            f"attributes, e.g. {keyword(tag)}.SomeAttribute=value"
        )
    items: list[str] = []
    for value in values:
        if vr in LIST_VRS and ("\\" in value or "," in value):
            items.extend(v for v in re.split(r"[\\,]", value))
        else:
            items.append(value)
    if len(items) == 1 and (items[0] == "" or (items[0].strip("*") == "" and vr in WILDCARD_VRS)):
        # universal matching: an empty value, or "*" alone, which PS3.4 C.2.2.2.4 makes
        # equivalent to it (it also matches objects without the attribute)
        return None
    if any(v == "" for v in items):
        raise BadRequest(f"query parameter {param!r}: an empty value in a list")
    if len(items) > MAX_VALUES:
        raise BadRequest(f"query parameter {param!r}: more than {MAX_VALUES} values")
    for v in items:
        check_text(v, param)
    if vr == "UI":
        for v in items:
            if (problem := uid_problem(v)) is not None:
                raise BadRequest(f"query parameter {param!r}: {problem}")
    if len(items) > 1:
        if any("*" in v or "?" in v for v in items):
            raise BadRequest(f"query parameter {param!r}: wildcards cannot be used in a list")
        for v in items:
            _check_number(vr, v, param)
        return Condition(path, vr, "list", tuple(items))
    value = items[0]
    dt_with_offset = (
        vr == "DT"
        and value.count("-") == 1
        and len(value.partition("-")[0]) >= 8
        and _DT.fullmatch(value) is not None
    )
    if vr in RANGE_VRS and "-" in value and not dt_with_offset:
        low, _, high = value.partition("-")
        if low == "" and high == "":
            raise BadRequest(f"query parameter {param!r}: a range needs at least one end")
        _check_range_value(vr, low, param)
        _check_range_value(vr, high, param)
        if low and high and low > high and vr != "TM":
            raise BadRequest(f"query parameter {param!r}: range {value!r} ends before it starts")
        return Condition(path, vr, "range", (low, high))
    if vr in RANGE_VRS:
        _check_range_value(vr, value, param)
    _check_number(vr, value, param)
    is_pn_fuzzy = fuzzy and vr == "PN"
    if ("*" in value or "?" in value) and vr in WILDCARD_VRS:
        return Condition(path, vr, "wildcard", (value,), fuzzy=is_pn_fuzzy)
    return Condition(path, vr, "single", (value,), fuzzy=is_pn_fuzzy)


#: far beyond any index (PostgreSQL's OFFSET takes a 64-bit integer)
MAX_OFFSET = 2**31 - 1


#: significant digits read of an integer parameter: more than any bound applied to one,
#: fewer than int() takes (it refuses 4300 and more: CVE-2020-10735)
_MAX_DIGITS = 20
#: what a longer integer is read as: past every bound, answered as 10**20 would be
_HUGE: int = 10**_MAX_DIGITS


def _integer(value: str, param: str) -> int:
    if not _INTEGER.fullmatch(value):
        raise BadRequest(f"query parameter {param!r}: {value!r} is not an integer")
    sign = -1 if value.startswith("-") else 1
    digits = value.lstrip("+-").lstrip("0") or "0"
    if len(digits) > _MAX_DIGITS:
        return sign * _HUGE
    return sign * int(digits)


def _non_negative(value: str, param: str, maximum: int | None = None) -> int:
    number = _integer(value, param)
    if number < 0:
        raise BadRequest(f"query parameter {param!r} must not be negative")
    if maximum is not None and number > maximum:
        raise BadRequest(f"query parameter {param!r} must be at most {maximum}")
    return number


def pad_high_time(value: str) -> str:
    """The last instant a partial TM denotes: '10' is up to 10:59:59.999999."""
    full = "235959.999999"
    if "." in value:
        return value.ljust(len(full), "9")
    return value + full[len(value) :]


def _combine_date_times(conditions: list[Condition]) -> tuple[list[Condition], list[DateTimeRange]]:
    by_tag = {c.path: c for c in conditions if len(c.path) == 1 and c.kind == "range"}
    combined: list[DateTimeRange] = []
    used: set[tuple[int, ...]] = set()
    for date_tag, time_tag in DATE_TIME_PAIRS.items():
        d, t = by_tag.get((date_tag,)), by_tag.get((time_tag,))
        if d is None or t is None:
            continue
        low = (d.values[0], t.values[0] or "000000") if d.values[0] else None
        high = (d.values[1], pad_high_time(t.values[1] or "")) if d.values[1] else None
        combined.append(DateTimeRange(date_tag, time_tag, low, high))
        used |= {d.path, t.path}
    return [c for c in conditions if c.path not in used], combined


_RESERVED = {"limit", "offset", "fuzzymatching", "includefield", "orderby"}


def parse_query(
    level: Level,
    params: list[tuple[str, str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    default_limit: int = DEFAULT_LIMIT,
) -> Query:
    """Parse QIDO-RS query parameters (already percent-decoded) into a :class:`Query`.

    Raises :class:`BadRequest` naming the offending parameter.
    """
    if len(params) > MAX_PARAMETERS:
        raise BadRequest(f"more than {MAX_PARAMETERS} query parameters")
    fuzzy = False
    limit: int | None = None
    offset = 0
    includes: set[int] = set()
    include_all = False
    order: list[tuple[int, bool]] = []
    matching: dict[tuple[int, ...], list[str]] = {}
    names: dict[tuple[int, ...], str] = {}
    warnings: list[str] = []

    for name, value in params:
        key = name.strip()
        lower = key.lower()
        if lower == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise BadRequest("query parameter 'fuzzymatching' must be true or false")
            fuzzy = value.lower() == "true"
        elif lower == "limit":
            limit = _non_negative(value, "limit")
            if limit > MAX_LIMIT:
                # PS3.18 8.3.4.4: a limit above what the origin server returns at once is
                # not an error; it returns its maximum, and says so (Warning 299)
                shown = value if len(value) <= _MAX_DIGITS else value[:_MAX_DIGITS] + "..."
                warnings.append(
                    f"the limit {shown} is more than this server returns at once; "
                    f"at most {MAX_LIMIT} results are returned"
                )
                limit = MAX_LIMIT
        elif lower == "offset":
            offset = _non_negative(value, "offset", MAX_OFFSET)
        elif lower == "includefield":
            for item in value.split(","):
                item = item.strip()
                if item.lower() == "all":
                    include_all = True
                elif item:
                    includes.add(_path(item, f"includefield={item}")[0])
                    if len(includes) > MAX_INCLUDEFIELDS:
                        raise BadRequest(
                            f"includefield names more than {MAX_INCLUDEFIELDS} attributes; "
                            "use includefield=all"
                        )
        elif lower == "orderby":
            for item in value.split(","):
                item = item.strip()
                descending = item.startswith("-")
                order.append((_path(item.lstrip("+-"), f"orderby={item}")[0], descending))
                if len(order) > MAX_ORDER:
                    raise BadRequest(f"orderby names more than {MAX_ORDER} attributes")
        else:
            if lower in _RESERVED:
                continue
            path = _path(key, key)
            if not _level_allows(level, path[0]):
                raise BadRequest(
                    f"query parameter {key!r}: {keyword(path[0])} is not an attribute of the "
                    f"{level.value} level here; search the "
                    f"{'series or instance' if level is Level.STUDY else 'instance'} level"
                )
            if path[0] in (0x0020000D, 0x0020000E) and len(path) == 1:
                scope = study_uid if path[0] == 0x0020000D else series_uid
                if scope is not None and value not in ("", scope):
                    raise BadRequest(f"query parameter {key!r} contradicts the UID in the path")
            matching.setdefault(path, []).append(value)
            names[path] = key
            if len(matching) > MAX_KEYS:
                raise BadRequest(f"more than {MAX_KEYS} matching keys")

    conditions: list[Condition] = []
    for path, values in matching.items():
        cond = _condition(path, values, names[path], fuzzy)
        if cond is not None:
            conditions.append(cond)
        if fuzzy and cond is not None and cond.vr == "PN" and path != (0x00100010,):
            warnings.append(
                f"fuzzymatching applies to PatientName; {names[path]} was matched exactly"
            )
    conditions, date_times = _combine_date_times(conditions)

    returned: frozenset[int] | None
    if include_all:
        returned = None
    else:
        defaults = {
            Level.STUDY: levels.STUDY_DEFAULTS,
            Level.SERIES: levels.SERIES_DEFAULTS,
            Level.INSTANCE: levels.INSTANCE_DEFAULTS,
        }[level]
        tags = set(defaults) | includes | {p[0] for p in matching}
        if level is not Level.STUDY:
            tags.add(0x0020000D)
            if study_uid is None:
                tags |= set(levels.STUDY_DEFAULTS) - {0x00081190}
        if level is Level.INSTANCE:
            tags.add(0x0020000E)
            if series_uid is None:
                tags |= set(levels.SERIES_DEFAULTS) - {0x00081190}
        returned = frozenset(tags)

    if limit is None:
        limit = default_limit if study_uid is None else MAX_LIMIT
    return Query(
        level=level,
        study_uid=study_uid,
        series_uid=series_uid,
        conditions=tuple(conditions),
        date_times=tuple(date_times),
        returned=returned,
        limit=limit,
        offset=offset,
        order=tuple(order),
        fuzzy=fuzzy,
        warnings=tuple(warnings),
    )


def confine(query: Query, study: str) -> Query:
    """``query`` limited to one study (a study link's search, app.auth.middleware): the
    study is ANDed with whatever the client asked for, after the parser has
    normalised every key (``StudyInstanceUID``, `` StudyInstanceUID ``, ``0020000D``
    are one attribute to it), so no spelling can widen it. A path scoped to another
    study matches nothing."""
    if query.study_uid is not None and query.study_uid != study:
        raise NotFound("not found")
    return replace(query, study_uid=study)
