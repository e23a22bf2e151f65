"""Fuzzing the QIDO-RS query parser and its SQL compiler (PS3.18 8.3.4, PS3.4 C.2.2.2).

A search's query string goes the way a request's does: decoded as UTF-8 and split into
percent-decoded pairs (:mod:`app.dicomweb.qido`), parsed into the typed query
(:func:`app.services.search.build_query`), compiled into SQL
(:func:`app.index.compiler.compile_query`). For any query string, at any level, in any
scope, each step either succeeds or raises a :class:`RequestError` (a 4xx naming the
parameter), never anything else; and a compiled query is one PostgreSQL takes: each
parameter used, integers that fit the casts, numbers in PostgreSQL's syntax, no NUL.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydicom.datadict import keyword_dict

from app.dicom import levels
from app.dicom.dictionary import keyword
from app.dicomweb import qido
from app.errors import BadRequest, RequestError
from app.index.compiler import Compiled, compile_query
from app.index.query import MAX_LIMIT, Level, Query
from app.services.search import build_query

BASE = "http://archive.example/dicom-web"
UID = "1.2.826.0.1.3680043.10.5"

LEVEL_KEYWORDS = sorted(
    {keyword(t) for t in levels.STUDY_TAGS | levels.SERIES_TAGS | levels.INSTANCE_TAGS}
    | {keyword(t) for t in levels.STUDY_DEFAULTS + levels.SERIES_DEFAULTS}
)
RESERVED = ["limit", "offset", "fuzzymatching", "includefield", "orderby"]

keys = st.one_of(
    st.sampled_from(LEVEL_KEYWORDS),
    st.sampled_from(RESERVED).map(str.upper) | st.sampled_from(RESERVED),
    st.sampled_from(sorted(keyword_dict)),
    st.integers(0, 0xFFFFFFFF).map(lambda t: f"{t:08X}"),
    st.lists(
        st.sampled_from(LEVEL_KEYWORDS + sorted(keyword_dict)[:200]), min_size=2, max_size=3
    ).map(".".join),
    st.sampled_from(
        [
            "ReferencedStudySequence.ReferencedSOPInstanceUID",
            "RequestAttributesSequence.ScheduledProcedureStepID",
            "ProcedureCodeSequence.CodeValue",
            "00081110.00081155",
            " PatientID ",
        ]
    ),
    st.text(max_size=12),
)
numbers = st.one_of(
    st.integers(-(2**80), 2**80).map(str),
    st.sampled_from(["1e308", "1e309", "-0", "+5", " 5 ", ".5", "5.", "1E-999", "0x10", "١٢"]),
    st.text("0123456789.+-eE ", min_size=1, max_size=12),
    st.just("9" * 5000),
)
dates = st.one_of(
    st.from_regex(r"\d{8}(-\d{8})?|-\d{8}|\d{8}-", fullmatch=True),
    st.from_regex(r"\d{2,6}(\.\d{1,6})?(-\d{2,6})?", fullmatch=True),
    st.from_regex(r"\d{4,14}([+-]\d{4})?(-\d{4,14})?", fullmatch=True),
)
values = st.one_of(
    st.text(max_size=24),
    st.text("*?\\,-^=. abcAB\x00é漢", max_size=12),
    numbers,
    dates,
    st.sampled_from(["", "*", "true", "false", "all", "TRUE", UID, f"{UID}\\{UID}.1", f"{UID},"]),
    st.lists(st.just(UID + ".7"), min_size=1, max_size=600).map(",".join),
    st.text(max_size=2000).map(lambda t: t * 2),
)


@st.composite
def query_strings(draw: st.DrawFn) -> bytes:
    """A query string as it arrives: pairs percent-encoded more or less, or raw bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    pairs = draw(st.lists(st.tuples(keys, values), max_size=draw(st.sampled_from([6, 300]))))
    safe = draw(st.sampled_from(["", "/", "*,\\", "&=%+"]))
    parts = []
    for key, value in pairs:
        k, v = quote(key, safe=safe), quote(value, safe=safe)
        parts.append(k if draw(st.integers(0, 19)) == 0 and not v else f"{k}={v}")
    raw = "&".join(parts)
    if draw(st.booleans()):
        raw += draw(st.sampled_from(["&", "%", "%zz", "%ff", "=", "&&=", "+", "%00"]))
    return raw.encode("utf-8", "surrogatepass")


scopes = st.sampled_from(
    [
        (Level.STUDY, None, None),
        (Level.SERIES, None, None),
        (Level.SERIES, UID, None),
        (Level.INSTANCE, None, None),
        (Level.INSTANCE, UID, None),
        (Level.INSTANCE, UID, UID + ".1"),
    ]
)


def search(
    raw: bytes, level: Level, study: str | None, series: str | None, confined: str | None
) -> Compiled | None:
    """The compiled search of query string ``raw``, or None when it is a 4xx."""
    try:
        params = qido.query_parameters(qido._query_string({"query_string": raw}))
        query: Query = build_query(level, params, study=study, series=series, confined=confined)
        return compile_query(query, BASE)
    except RequestError:
        return None


_PARAMETER = re.compile(r"\$(\d+)(::[a-z]+(\[\])?(::[a-z]+(\[\])?)?)?")
#: PostgreSQL's numeric input (numeric_in): ASCII digits, a point, an exponent, spaces
_PG_NUMERIC = re.compile(r" *[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)? *", re.ASCII)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def check_sql(compiled: Compiled) -> None:
    """What PostgreSQL would refuse in the statement or its parameters."""
    used: dict[int, str] = {}
    for m in _PARAMETER.finditer(compiled.sql):
        used.setdefault(int(m.group(1)), m.group(2) or "")
    # every parameter used: PostgreSQL cannot type one that is not
    assert set(used) == set(range(1, len(compiled.args) + 1)), (used, len(compiled.args))
    for n, arg in enumerate(compiled.args, 1):
        cast = used[n]
        items = arg if isinstance(arg, list) else [arg]
        for item in items:
            if isinstance(item, int):
                low, high = INT32 if cast.startswith("::int") else INT64
                assert low <= item <= high, f"${n}{cast} = {item}"
            elif isinstance(item, str):
                assert "\x00" not in item, f"${n} has a NUL (PostgreSQL text)"
                if cast.endswith(("::numeric", "::numeric[]")):
                    assert _PG_NUMERIC.fullmatch(item), f"${n}{cast} = {item!r}"
                    try:
                        Decimal(item.strip(" "))
                    except InvalidOperation:
                        raise AssertionError(f"${n}{cast} = {item!r}") from None


@given(query_strings(), scopes, st.sampled_from([None, UID, UID + ".9"]))
# found by this test: ValueError (int() refuses 4300 digits and more), a 500
@example(b"limit=" + b"9" * 5000, (Level.STUDY, None, None), None)
@example(b"offset=" + b"9" * 5000, (Level.STUDY, None, None), None)
# a number after an EM SPACE passed the parser (str.strip) and PostgreSQL refused it
@example(b"00280030=%E2%80%831", (Level.INSTANCE, UID, UID + ".1"), None)
@example(b"SeriesNumber=%C2%A05", (Level.SERIES, None, None), None)
def test_any_query_string_is_a_search_or_a_4xx(
    raw: bytes, scope: tuple[Level, str | None, str | None], confined: str | None
) -> None:
    compiled = search(raw, *scope, confined)
    if compiled is not None:
        check_sql(compiled)


@given(
    st.lists(st.tuples(keys, values), max_size=8),
    scopes,
)
def test_any_parameters_are_a_search_or_a_4xx(
    params: list[tuple[str, str]], scope: tuple[Level, str | None, str | None]
) -> None:
    """The parser's own entry, as C-FIND's identifier and the tests reach it: pairs
    already decoded, so any text at all."""
    level, study, series = scope
    try:
        compiled = compile_query(build_query(level, params, study=study, series=series), BASE)
    except RequestError:
        return
    check_sql(compiled)


def test_a_limit_of_thousands_of_digits_is_the_maximum_with_a_warning() -> None:
    """PS3.18 8.3.4.4: a limit above what the server returns is not an error, however
    large (found by this test: int() refused its 5000 digits, a 500)."""
    query = build_query(Level.STUDY, [("limit", "9" * 5000)])
    assert query.limit == MAX_LIMIT
    assert len(query.warnings) == 1 and len(query.warnings[0]) < 200
    with pytest.raises(BadRequest, match="'offset' must be at most"):
        build_query(Level.STUDY, [("offset", "9" * 5000)])
    assert build_query(Level.STUDY, [("offset", "0" * 5000 + "7")]).offset == 7


def test_numbers_take_spaces_around_them_and_no_other_white_space() -> None:
    """PS3.5 6.2 IS, DS: leading and trailing spaces are allowed; an EM SPACE passed
    str.strip() and then PostgreSQL's numeric refused it (a database error, not the
    parser's 400)."""
    compiled = compile_query(build_query(Level.INSTANCE, [("00280030", " 1.5 ")]), BASE)
    check_sql(compiled)
    with pytest.raises(BadRequest, match="not a decimal number"):
        build_query(Level.INSTANCE, [("00280030", "\u20031.5")])
    with pytest.raises(BadRequest, match="not an integer"):
        build_query(Level.SERIES, [("SeriesNumber", "\xa05")])
