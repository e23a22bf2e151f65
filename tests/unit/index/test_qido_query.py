"""The QIDO query model and SQL compiler (PS3.18 8.3.4, PS3.4 C.2.2.2), pure: parameters
-> Query -> (sql, args), asserted on the SQL text."""

from __future__ import annotations

import re

import pytest

from app.errors import BadRequest
from app.index.compiler import compile_query, like_pattern
from app.index.query import MAX_LIMIT, Level, parse_query

BASE = "http://h/dicom-web"


def sql(level: Level, params: list[tuple[str, str]], **scope: str) -> tuple[str, list[object]]:
    compiled = compile_query(parse_query(level, params, **scope), BASE)
    return compiled.sql, compiled.args


def where(level: Level, params: list[tuple[str, str]], **scope: str) -> tuple[str, list[object]]:
    text, args = sql(level, params, **scope)
    # the select list's InstanceAvailability looks up cold instances with a WHERE of its own
    text = re.sub(r"EXISTS \(SELECT FROM instance c WHERE [^)]*\)", "EXISTS (...)", text)
    clause = text.split(" WHERE ", 1)[1].split(" ORDER BY ")[0] if " WHERE " in text else ""
    return clause, args


def test_keyword_and_tag_are_the_same_key() -> None:
    assert where(Level.STUDY, [("PatientID", "P1")]) == where(Level.STUDY, [("00100020", "P1")])
    clause, args = where(Level.STUDY, [("PatientID", "P1")])
    assert clause == "st.patient_id = $1" and args[0] == "P1"


def test_universal_matching_returns_the_attribute_without_a_condition() -> None:
    q = parse_query(Level.STUDY, [("StudyDescription", "")])
    assert q.conditions == () and q.returned is not None and 0x00081030 in q.returned


@pytest.mark.parametrize(
    "value, pattern",
    [("D?E*", "D_E%"), ("*OE", "%OE"), ("A_B%C", None), ("5?\\%*", "5_\\\\\\%%")],
)
def test_wildcards_c_2_2_2_4(value: str, pattern: str | None) -> None:
    clause, args = where(Level.STUDY, [("PatientName", value)])
    if pattern is None:  # no wildcard: single value, _ and % are literal
        assert clause == "st.patient_name = $1" and args[0] == value
    else:
        # a literal prefix is also a range on the pattern index (see below)
        assert clause.rstrip(")").endswith(f"st.patient_name LIKE ${args.index(pattern) + 1}")


def test_like_pattern_escapes_sql_wildcards() -> None:
    assert like_pattern("a_b%c\\d*e?") == "a\\_b\\%c\\\\d%e_"


def test_wildcards_only_on_vrs_that_allow_them() -> None:
    # UI has no wildcard matching: '*' is not a UID
    with pytest.raises(BadRequest, match="StudyInstanceUID"):
        parse_query(Level.STUDY, [("StudyInstanceUID", "1.2*")])
    # DA: a date, not a pattern
    with pytest.raises(BadRequest, match="StudyDate"):
        parse_query(Level.STUDY, [("StudyDate", "2020*")])


@pytest.mark.parametrize(
    "value, expected",
    [
        ("20200101-20201231", "(st.study_date >= $1 AND st.study_date <= $2)"),
        ("20200101-", "(st.study_date >= $1)"),
        ("-20201231", "(st.study_date <= $1)"),
    ],
)
def test_date_ranges_c_2_2_2_5(value: str, expected: str) -> None:
    clause, _ = where(Level.STUDY, [("StudyDate", value)])
    assert clause == expected


@pytest.mark.parametrize("value", ["2020-01-01", "20201301x", "-", "20201231-20200101", "2020"])
def test_bad_ranges_name_the_parameter(value: str) -> None:
    with pytest.raises(BadRequest, match="'StudyDate'"):
        parse_query(Level.STUDY, [("StudyDate", value)])


def test_time_range_high_end_covers_the_whole_unit() -> None:
    _, args = where(Level.STUDY, [("StudyTime", "0900-10")])
    assert args[:2] == ["0900", "105959.999999"]


def test_combined_date_time_range_c_2_2_2_5_1() -> None:
    clause, args = where(
        Level.STUDY, [("StudyDate", "20200101-20200102"), ("StudyTime", "2200-0600")]
    )
    assert (
        "st.study_date > $1 OR (st.study_date = $1 AND coalesce(st.study_time, '') >= $2)" in clause
    )
    assert args[:4] == ["20200101", "2200", "20200102", "0600" + "59.999999"]


def test_uid_lists_comma_or_backslash_c_2_2_2_2() -> None:
    for value in ("1.2.3,1.2.4", "1.2.3\\1.2.4"):
        clause, args = where(Level.STUDY, [("StudyInstanceUID", value)])
        assert clause == "st.study_uid = ANY($1::text[])" and args[0] == ["1.2.3", "1.2.4"]
    with pytest.raises(BadRequest, match="not a UID"):
        parse_query(Level.STUDY, [("StudyInstanceUID", "1.2.3,1.02")])


def test_repeated_key_is_a_list() -> None:
    clause, args = where(Level.SERIES, [("Modality", "CT"), ("Modality", "MR")])
    assert clause == "se.modality = ANY($1::text[])" and args[0] == ["CT", "MR"]


def test_modalities_in_study_matches_any() -> None:
    clause, args = where(Level.STUDY, [("ModalitiesInStudy", "CT,MR")])
    assert clause == "st.modalities && $1::text[]" and args[0] == ["CT", "MR"]


def test_sequence_matching_c_2_2_2_6() -> None:
    clause, args = where(
        Level.SERIES, [("RequestAttributesSequence.ScheduledProcedureStepID", "S1")]
    )
    assert "jsonb_array_elements(se.attrs->'00400275'->'Value') q0" in clause
    assert "jsonb_array_elements(q0->'00400009'->'Value') v" in clause
    assert args[0] == "S1"


def test_any_stored_attribute_can_be_matched() -> None:
    clause, _ = where(Level.STUDY, [("PatientWeight", "70")])
    assert "st.attrs->'00101030'" in clause and "::numeric" in clause
    clause, _ = where(Level.INSTANCE, [("SliceThickness", "1.25")])
    assert "i.metadata::jsonb" in clause


def test_fuzzy_person_name_uses_normalised_words() -> None:
    text, args = sql(Level.STUDY, [("PatientName", "Müll Jo"), ("fuzzymatching", "true")])
    assert text.count("study_word") == 2
    assert args[:4] == ["mull", "mulm", "jo", "jp"]
    q = parse_query(Level.STUDY, [("ReferringPhysicianName", "x"), ("fuzzymatching", "true")])
    assert any("fuzzymatching applies to PatientName" in w for w in q.warnings)


def test_integer_columns_compare_as_numbers() -> None:
    clause, args = where(Level.SERIES, [("SeriesNumber", "3")])
    assert clause == "se.series_number = $1::int" and args[0] == 3
    with pytest.raises(BadRequest, match="SeriesNumber"):
        parse_query(Level.SERIES, [("SeriesNumber", "three")])


def test_scope_from_the_path() -> None:
    clause, args = where(Level.INSTANCE, [], study_uid="1.2", series_uid="1.2.3")
    assert clause == "st.study_uid = $1 AND se.series_uid = $2" and args[:2] == ["1.2", "1.2.3"]
    with pytest.raises(BadRequest, match="contradicts"):
        parse_query(Level.SERIES, [("StudyInstanceUID", "9.9")], study_uid="1.2")


def test_level_must_allow_the_attribute() -> None:
    with pytest.raises(BadRequest, match="'Modality'.*study level"):
        parse_query(Level.STUDY, [("Modality", "CT")])
    parse_query(Level.SERIES, [("PatientID", "X")])  # study keys narrow series searches
    parse_query(Level.INSTANCE, [("Modality", "CT"), ("PatientID", "X"), ("Rows", "512")])


@pytest.mark.parametrize(
    "params, message",
    [
        ([("NoSuchKeyword", "1")], "'NoSuchKeyword'"),
        ([("0010002", "1")], "'0010002'"),
        ([("limit", "-1")], "'limit'"),
        ([("limit", "ten")], "'limit'"),
        ([("offset", "x")], "'offset'"),
        ([("offset", "30572935527722351853568")], "'offset' must be at most"),  # schemathesis
        ([("", "x")], "neither a DICOM keyword"),  # schemathesis: an empty name
        ([("PatientWeight", "heavy")], "not a decimal number"),
        ([("fuzzymatching", "yes")], "'fuzzymatching'"),
        ([("includefield", "Nope")], "includefield=Nope"),
        ([("orderby", "Nope")], "orderby=Nope"),
        ([("ProcedureCodeSequence", "x")], "sequence"),
    ],
)
def test_bad_requests_name_the_parameter(params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        compile_query(parse_query(Level.STUDY, params), BASE)


def test_orderby_only_on_indexed_attributes_of_the_level() -> None:
    text, _ = sql(Level.STUDY, [("orderby", "-StudyDate,PatientName")])
    assert text.split(" ORDER BY ")[1].startswith(
        "st.study_date DESC NULLS LAST, st.patient_name ASC NULLS LAST, st.pk LIMIT"
    )
    with pytest.raises(BadRequest, match="orderby"):
        sql(Level.STUDY, [("orderby", "SeriesNumber")])
    with pytest.raises(BadRequest, match="orderby"):
        sql(Level.STUDY, [("orderby", "PatientWeight")])


def test_stable_order_and_one_extra_row_for_the_more_results_warning() -> None:
    text, args = sql(Level.STUDY, [("limit", "25"), ("offset", "50")])
    # the page is chosen on keys, then its rows are built, in the same order
    # (default attributes: the stored answer, so no base-URL argument: $1 and $2)
    assert "ORDER BY st.pk LIMIT $1 OFFSET $2) page JOIN study st ON st.pk = page.st_pk" in text
    assert text.endswith("ORDER BY st.pk")
    assert args == [26, 50]


def test_default_and_included_return_attributes_ps3_18_10_6_3_3() -> None:
    q = parse_query(
        Level.STUDY, [("includefield", "StudyDescription,00080080"), ("includefield", "PatientAge")]
    )
    assert q.returned is not None
    for tag in (
        0x00100010,
        0x0020000D,
        0x00201206,
        0x00201208,
        0x00080061,
        0x00081030,
        0x00080080,
        0x00101010,
    ):
        assert tag in q.returned
    assert parse_query(Level.STUDY, [("includefield", "all")]).returned is None
    text, _ = sql(Level.STUDY, [("includefield", "StudyDescription")])
    assert "'00081030', st.attrs->'00081030'" in text
    assert (
        "'00201208', json_build_object('vr', 'IS', 'Value', json_build_array(st.num_instances))"
        in text
    )
    inst, _ = sql(Level.INSTANCE, [], study_uid="1.2", series_uid="1.2.3")
    assert (
        "'00080016', i.attrs->'00080016'" in inst and "'/instances/' || i.sop_instance_uid" in inst
    )


def test_a_lone_asterisk_is_universal_matching_ps3_4_c_2_2_2_4() -> None:
    """ "*" alone matches everything, objects without the attribute included: no
    condition at all (a LIKE '%' would drop rows where the attribute is absent)."""
    q = parse_query(Level.STUDY, [("StudyDescription", "*"), ("PatientName", "**")])
    assert q.conditions == ()
    assert 0x00081030 in (q.returned or ())  # still returned, as a matching key is


def test_no_base_url_argument_without_retrieve_url() -> None:
    """A query whose answer has no RetrieveURL must not carry an untyped parameter."""
    from dataclasses import replace

    q = parse_query(Level.STUDY, [("PatientID", "X")])
    q = replace(q, returned=frozenset({0x00100020, 0x0020000D}))
    compiled = compile_query(q, BASE)
    assert BASE not in compiled.args


@pytest.mark.parametrize(
    "value, bounds, like",
    [
        ("MUL*", ("MUL", "MUM"), False),  # "starts with": the range is exact
        ("MU?LER", ("MU", "MV"), True),
        ("MU*ER", ("MU", "MV"), True),
        ("*LLER", None, True),  # no literal prefix: no range
        ("Z\U0010ffff*", ("Z\U0010ffff", "["), False),  # the last character cannot grow
        ("\ud7ff*", ("\ud7ff", "\ue000"), False),  # surrogates are skipped
        ("\U0010ffff*", ("\U0010ffff",), True),  # no upper bound at all: LIKE checks
    ],
)
def test_prefix_patterns_are_index_ranges(
    value: str, bounds: tuple[str, ...] | None, like: bool
) -> None:
    """A wildcard value with a literal prefix matches the byte-order range of that prefix
    (text_pattern_ops operators): a generic, cached plan can use the index, which it
    cannot for "LIKE $1". The LIKE stays where the range only narrows."""
    clause, args = where(Level.STUDY, [("PatientName", value)])
    col = "st.patient_name"
    ranges = [f"{col} ~>=~ $1", f"{col} ~<~ $2"][: len(bounds or ())]
    checks = ranges + ([f"{col} LIKE ${len(ranges) + 1}"] if like else [])
    assert clause == (" AND ".join(checks) if len(checks) == 1 else f"({' AND '.join(checks)})")
    assert tuple(args[: len(ranges)]) == (bounds or ())
    if like:
        assert args[len(ranges)] == like_pattern(value)


@pytest.mark.parametrize(
    "name, value, matches",
    [
        ("MULLER^HANS", "MUL*", True),
        ("MUM", "MUL*", False),
        ("MUL", "MUL*", True),
        ("MUKZZZ", "MUL*", False),
        ("MUL\U0010ffff", "MUL*", True),
        ("Z\U0010ffffA", "Z\U0010ffff*", True),
        ("[", "Z\U0010ffff*", False),
    ],
)
def test_the_prefix_range_is_starts_with(name: str, value: str, matches: bool) -> None:
    """The bounds compared as PostgreSQL's ~>=~ / ~<~ do (UTF-8 bytes) agree with
    str.startswith, edge characters included."""
    _, args = where(Level.STUDY, [("PatientName", value)])
    low, high = (str(a).encode() for a in args[:2])
    assert (low <= name.encode() < high) is matches is name.startswith(value[:-1])


def test_fuzzy_words_are_index_ranges_too() -> None:
    text, args = sql(Level.STUDY, [("PatientName", "smi"), ("fuzzymatching", "true")])
    assert "(w.word ~>=~ $1 AND w.word ~<~ $2)" in text and "LIKE" not in text
    assert args[:2] == ["smi", "smj"]


def test_an_unindexed_attribute_keeps_a_plain_like() -> None:
    clause, args = where(Level.STUDY, [("StudyDescription", "CT*")])
    assert "~>=~" not in clause and "LIKE $1" in clause and args[0] == "CT%"


def test_included_fields_are_merged_into_the_stored_study_answer() -> None:
    """OHIF's study list names four fields: the stored default answer is sent with the
    extra study-level ones built alone (merged in tag order by search()); Modality is a
    series attribute and adds nothing at the study level."""
    ohif = [("includefield", "00081030,00080060,00080090,00100030"), ("limit", "101")]
    compiled = compile_query(parse_query(Level.STUDY, ohif), BASE)
    assert compiled.merge
    select = compiled.sql.split(" FROM (", 1)[0]
    assert "COALESCE(st.qido," in select
    assert select.endswith(
        "convert_to((json_strip_nulls(json_build_object('00081030', st.attrs->'00081030')))"
        "::text, 'UTF8')"
    )
    # only defaults (ReferringPhysicianName and PatientBirthDate are among them): no merge
    plain = [("includefield", "00080090,00100030")]
    assert not compile_query(parse_query(Level.STUDY, plain), BASE).merge
    assert not compile_query(parse_query(Level.STUDY, [("includefield", "all")]), BASE).merge


def test_a_limit_above_the_maximum_is_capped_with_a_warning() -> None:
    """PS3.18 8.3.4.4: not an error; the origin server returns at most its maximum."""
    query = parse_query(Level.STUDY, [("limit", "250000")])
    assert query.limit == MAX_LIMIT
    assert any("250000" in w and str(MAX_LIMIT) in w for w in query.warnings)
    assert parse_query(Level.STUDY, [("limit", str(MAX_LIMIT))]).warnings == ()
    with pytest.raises(BadRequest, match="'limit'"):
        parse_query(Level.STUDY, [("limit", "-5")])
