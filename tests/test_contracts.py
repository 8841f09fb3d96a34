"""Tests of poimatch.io.contracts: typed coordinates, rejection reasons, GX validation."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S
from poimatch.io import contracts as C

RAW_SCHEMA = T.StructType(
    [T.StructField(c, T.StringType(), True) for c in (S.ID, S.NAME, S.LATITUDE, S.LONGITUDE)]
)
REASONS_SCHEMA = T.StructType(
    [
        T.StructField(S.ID, T.StringType(), True),
        T.StructField(S.NAME, T.StringType(), True),
        T.StructField(S.RAW_LATITUDE, T.StringType(), True),
        T.StructField(S.RAW_LONGITUDE, T.StringType(), True),
        T.StructField(S.REASON, T.StringType(), True),
    ]
)

# (id, name, latitude, longitude) -> expected reason; each bad row is bad in one or two ways.
BAD_ROWS: list[tuple[tuple[str | None, ...], str | None]] = [
    (("p1", "Cafe", "45.0", "7.0"), None),
    (("p3", "Deli", " 12.5 ", "-180"), None),
    ((None, "Zed", "-90.0", "180"), "missing_id"),
    (("", "Bar", "abc", "7.0"), "missing_id,non_numeric_latitude"),
    (("", "Foo", "1", "1"), "missing_id"),  # blank ids are missing, not duplicates
    (("p2", "Shop", "91", "7.0"), "latitude_out_of_range"),
    (("p4", None, "10", "181"), "missing_name,longitude_out_of_range"),
    (("p5", "  ", "1", "1"), "missing_name"),
    (("p8", "\t", "NaN", "2"), "missing_name,non_numeric_latitude"),
    (("d1", "A", "1", "1"), "duplicate_id"),
    (("d1", "B", "2", "2"), "duplicate_id"),
    (("p6", "Pub", "", "-12"), "non_numeric_latitude"),
    (("p7", "Inn", "-91", "1,5"), "latitude_out_of_range,non_numeric_longitude"),
    (("p9", "Spa", "3", "Infinity"), "non_numeric_longitude"),
    (("s 1", "Gap", "1", "1"), "whitespace_in_id"),  # a space would split `matches`
    (("s2\t", "Tab", "1", "1"), "whitespace_in_id"),
    (("\u00a0s3", "Nbsp", "1", "1"), "whitespace_in_id"),  # Unicode white space too
    (("L1", "N" * 1001, "1", "1"), "name_too_long"),
    (("L2", "N" * 1000, "1", "1"), None),  # at the limit
    (("z1", "Null Island", "0", "0.0"), "zero_coordinates"),  # a geocoder's failure
    (("z2", "Equator", "0", "9"), None),  # one zero coordinate is a real place
    (("z3", "Meridian", "51.5", "-0.0"), None),
]

# Rows per rule in BAD_ROWS, written out by hand.
EXPECTED_RULE_COUNTS = {
    "missing_id": 3,
    "whitespace_in_id": 3,
    "missing_name": 3,
    "name_too_long": 1,
    "duplicate_id": 2,
    "non_numeric_latitude": 3,
    "latitude_out_of_range": 2,
    "non_numeric_longitude": 2,
    "longitude_out_of_range": 1,
    "zero_coordinates": 1,
}


def _raw(spark: SparkSession, rows: list[tuple[str | None, ...]]) -> DataFrame:
    return spark.createDataFrame(rows, RAW_SCHEMA)


@pytest.fixture(scope="module")
def bad_typed(spark: SparkSession) -> DataFrame:
    return C.add_typed_coordinates(_raw(spark, [r for r, _ in BAD_ROWS]))


@pytest.fixture(scope="module")
def clean_typed(spark: SparkSession) -> DataFrame:
    rows = [
        ("a", "Alpha", "45.5", "9.25"),
        ("b", "Beta", " -90 ", "180"),
        ("c", "Gamma", "1e1", "-180.0"),
    ]
    return C.add_typed_coordinates(_raw(spark, rows))


def _outcome(
    result: C.ContractResult, name: str, column: str | None = None
) -> C.ExpectationOutcome:
    found = [o for o in result.outcomes if o.name == name and o.column == column]
    assert len(found) == 1, (name, column, result.outcomes)
    return found[0]


# --- add_typed_coordinates -------------------------------------------------------------


def test_typed_coordinates_parse_trim_and_reject_non_numbers(spark: SparkSession) -> None:
    raw = _raw(
        spark,
        [
            ("a", "n", " 12.5 ", "\t-3\n"),
            ("b", "n", "abc", "NaN"),
            ("c", "n", "Infinity", "-Infinity"),
            ("d", "n", "", None),
            ("e", "n", "1e2", "+.5"),
            ("f", "n", "12,5", "0x1p3"),
            ("g", "n", "1.5d", "nan"),
        ],
    )
    expected = spark.createDataFrame(
        [
            ("a", "n", 12.5, -3.0, " 12.5 ", "\t-3\n"),
            ("b", "n", None, None, "abc", "NaN"),
            ("c", "n", None, None, "Infinity", "-Infinity"),
            ("d", "n", None, None, "", None),
            ("e", "n", 100.0, 0.5, "1e2", "+.5"),
            ("f", "n", None, None, "12,5", "0x1p3"),
            ("g", "n", None, None, "1.5d", "nan"),
        ],
        T.StructType(
            [
                T.StructField(S.ID, T.StringType(), True),
                T.StructField(S.NAME, T.StringType(), True),
                T.StructField(S.LATITUDE, T.DoubleType(), True),
                T.StructField(S.LONGITUDE, T.DoubleType(), True),
                T.StructField(S.RAW_LATITUDE, T.StringType(), True),
                T.StructField(S.RAW_LONGITUDE, T.StringType(), True),
            ]
        ),
    )
    assert_df_equality(C.add_typed_coordinates(raw), expected, ignore_row_order=True)


# --- add_rejection_reasons -------------------------------------------------------------


def test_rejection_reasons_per_row(spark: SparkSession, bad_typed: DataFrame) -> None:
    actual = C.add_rejection_reasons(bad_typed).select(
        S.ID, S.NAME, S.RAW_LATITUDE, S.RAW_LONGITUDE, S.REASON
    )
    expected = spark.createDataFrame([(*r, reason) for r, reason in BAD_ROWS], REASONS_SCHEMA)
    assert_df_equality(actual, expected, ignore_row_order=True)


def test_rejection_reasons_keep_columns_and_reasons_in_rule_order(spark: SparkSession) -> None:
    raw = _raw(spark, [("x", None, "abc", "200")]).withColumn(S.CITY, F.lit("Rome"))
    out = C.add_rejection_reasons(C.add_typed_coordinates(raw))
    assert out.columns == [
        S.ID,
        S.NAME,
        S.LATITUDE,
        S.LONGITUDE,
        S.CITY,
        S.RAW_LATITUDE,
        S.RAW_LONGITUDE,
        S.REASON,
    ]
    row = out.first()
    assert row is not None
    assert row[S.REASON] == "missing_name,non_numeric_latitude,longitude_out_of_range"
    assert [r.reason for r in C.INPUT_RULES] == list(EXPECTED_RULE_COUNTS)


def test_three_copies_of_an_id_are_all_duplicates(spark: SparkSession) -> None:
    raw = _raw(spark, [("z", "A", "1", "1"), ("z", "B", "1", "1"), ("z", "C", "1", "1")])
    reasons = [r[S.REASON] for r in C.add_rejection_reasons(C.add_typed_coordinates(raw)).collect()]
    assert reasons == ["duplicate_id"] * 3


# --- validate_input --------------------------------------------------------------------


def test_validate_input_clean_rows_pass(clean_typed: DataFrame) -> None:
    result = C.validate_input(clean_typed)
    assert result.suite == C.INPUT_SUITE
    assert result.success, result.describe()
    assert result.failures() == ()
    assert len(result.outcomes) == 3 + len(C.INPUT_RULES)
    assert all(o.unexpected_count == 0 for o in result.outcomes)
    assert _outcome(result, "expect_column_values_to_not_be_null", S.LATITUDE).element_count == 3
    assert "passed" in result.describe()
    C.require(result)  # does not raise
    assert not clean_typed.is_cached  # the validator released what it cached


def test_validate_input_bad_rows_fail_with_counts(bad_typed: DataFrame) -> None:
    result = C.validate_input(bad_typed)
    assert not result.success
    expected = {
        ("expect_table_row_count_to_equal", S.ID, "rule missing_id"): 3,
        ("expect_table_row_count_to_equal", S.ID, "rule whitespace_in_id"): 3,
        ("expect_table_row_count_to_equal", S.NAME, "rule missing_name"): 3,
        ("expect_column_value_lengths_to_be_between", S.NAME, "rule name_too_long"): 1,
        ("expect_column_values_to_be_unique", S.ID, "rule duplicate_id"): 2,
        ("expect_column_values_to_not_be_null", S.LATITUDE, "rule non_numeric_latitude"): 3,
        ("expect_column_values_to_be_between", S.LATITUDE, "rule latitude_out_of_range"): 2,
        ("expect_column_values_to_not_be_null", S.LONGITUDE, "rule non_numeric_longitude"): 2,
        ("expect_column_values_to_be_between", S.LONGITUDE, "rule longitude_out_of_range"): 1,
        (
            "expect_table_row_count_to_equal",
            f"{S.LATITUDE},{S.LONGITUDE}",
            "rule zero_coordinates",
        ): 1,
    }
    actual = {
        (o.name, o.column, o.detail.split(";")[0]): o.unexpected_count for o in result.failures()
    }
    assert actual == expected
    # structure is fine: columns present and coordinates typed
    assert _outcome(result, "expect_table_columns_to_match_set").success
    assert _outcome(result, "expect_column_values_to_be_of_type", S.LATITUDE).success
    text = result.describe()
    assert "FAILED 10 of 13" in text
    assert "on columns 'latitude' and 'longitude': 1 unexpected" in text
    assert "expect_column_values_to_be_unique on column 'id': 2 unexpected" in text
    assert "rule latitude_out_of_range" in text
    with pytest.raises(C.ContractError) as caught:
        C.require(result)
    assert caught.value.result is result
    assert str(caught.value) == text


def test_gx_counts_match_rejection_reasons(bad_typed: DataFrame) -> None:
    """For each rule: GX unexpected count == rows whose reason names that rule."""
    result = C.validate_input(bad_typed)
    rule_outcomes = result.outcomes[-len(C.INPUT_RULES) :]
    reasons = F.split(F.col(S.REASON), ",")
    checked = C.add_rejection_reasons(bad_typed)
    tagged = checked.select(
        *[
            F.sum(F.array_contains(reasons, r.reason).cast("int")).alias(r.reason)
            for r in C.INPUT_RULES
        ]
    ).first()
    assert tagged is not None
    for rule, outcome in zip(C.INPUT_RULES, rule_outcomes, strict=True):
        assert outcome.name == rule.expectation.expectation_type
        assert f"rule {rule.reason}" in outcome.detail
        assert outcome.unexpected_count == tagged[rule.reason] == EXPECTED_RULE_COUNTS[rule.reason]
        assert outcome.success is (outcome.unexpected_count == 0)


def test_valid_subset_passes_the_input_contract(bad_typed: DataFrame) -> None:
    kept = C.add_rejection_reasons(bad_typed).where(F.col(S.REASON).isNull())
    result = C.validate_input(kept)
    assert result.success, result.describe()
    assert _outcome(result, "expect_column_values_to_not_be_null", S.LATITUDE).element_count == 5


def test_validate_input_reports_missing_columns(spark: SparkSession) -> None:
    untyped = _raw(spark, [("a", "n", "1", "2")])  # no raw_* columns, strings not doubles
    result = C.validate_input(untyped)
    columns = _outcome(result, "expect_table_columns_to_match_set")
    assert not columns.success
    assert columns.unexpected_count == 2
    assert "'raw_latitude', 'raw_longitude'" in columns.detail
    assert not _outcome(result, "expect_column_values_to_be_of_type", S.LATITUDE).success
    assert "missing columns" in result.describe()


def test_validate_keeps_a_cached_frame_cached(clean_typed: DataFrame) -> None:
    cached = clean_typed.cache()
    try:
        assert C.validate_input(cached).success
        assert cached.is_cached
    finally:
        cached.unpersist()


def test_validation_opens_no_outside_connection(
    clean_typed: DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GX must not phone home: only loopback (the Py4J gateway) may be contacted."""
    contacted: list[Any] = []
    connect = socket.socket.connect

    def spy(self: socket.socket, address: Any) -> None:
        contacted.append(address)
        connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    assert C.validate_input(clean_typed).success
    outside = [
        a
        for a in contacted
        if isinstance(a, tuple) and not ipaddress.ip_address(a[0].split("%")[0]).is_loopback
    ]
    assert outside == []


# --- validate_output -------------------------------------------------------------------

MATCH_SCHEMA = T.StructType(
    [
        T.StructField(S.ID, T.StringType(), True),
        T.StructField(S.MATCHES, T.StringType(), True),
        T.StructField(S.GROUP_ID, T.StringType(), True),
    ]
)


@pytest.fixture(scope="module")
def input_ids(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([("a",), ("b",), ("c",), ("d",)], f"{S.ID} string")


def _matches(spark: SparkSession, rows: list[tuple[str | None, ...]]) -> DataFrame:
    return spark.createDataFrame(rows, MATCH_SCHEMA)


@pytest.fixture(params=["spark", "pandas"])
def engine(request: pytest.FixtureRequest) -> str:
    """Which of GX's engines checks the output: Spark frames, or the pandas frames a
    small run holds on the driver; every output test runs with both, same outcomes."""
    return str(request.param)


def _check_output(engine: str, out: DataFrame, input_ids: DataFrame) -> C.ContractResult:
    if engine == "pandas":
        return C.validate_output(out.toPandas(), input_ids=input_ids.toPandas())
    return C.validate_output(out, input_ids=input_ids)


def test_validate_output_accepts_a_correct_result(
    spark: SparkSession, input_ids: DataFrame, engine: str
) -> None:
    out = _matches(
        spark, [("a", "a b", "g1"), ("b", "b a", "g1"), ("c", "c", "g2"), ("d", "d", "g3")]
    )
    result = _check_output(engine, out, input_ids)
    assert result.suite == C.OUTPUT_SUITE
    assert result.success, result.describe()
    assert len(result.outcomes) == 7
    assert S.OUTPUT_FIRST_MATCH not in out.columns


def test_validate_output_missing_id(spark: SparkSession, input_ids: DataFrame, engine: str) -> None:
    out = _matches(spark, [("a", "a b", "g1"), ("b", "b a", "g1"), ("c", "c", "g2")])
    result = _check_output(engine, out, input_ids)
    assert not result.success
    failed = {(o.name, o.column): o.unexpected_count for o in result.failures()}
    assert failed == {
        ("expect_table_row_count_to_equal", None): 1,
        ("expect_column_pair_values_to_be_equal", f"{S.ID},{S.OUTPUT_ID_FOUND}"): 1,
    }
    text = result.describe()
    assert "input ids missing from the output" in text
    assert "('d', None)" in text
    assert "observed 3 rows, expected 4" in text


def test_validate_output_duplicated_id(
    spark: SparkSession, input_ids: DataFrame, engine: str
) -> None:
    out = _matches(
        spark,
        [
            ("a", "a b", "g1"),
            ("b", "b a", "g1"),
            ("c", "c", "g2"),
            ("d", "d", "g3"),
            ("d", "d", "g3"),
        ],
    )
    result = _check_output(engine, out, input_ids)
    assert not result.success
    failed = {(o.name, o.column): o.unexpected_count for o in result.failures()}
    assert failed == {
        ("expect_column_values_to_be_unique", S.ID): 2,
        ("expect_table_row_count_to_equal", None): 1,
    }
    assert (
        "expect_column_values_to_be_unique on column 'id': 2 unexpected of 5" in result.describe()
    )


def test_validate_output_matches_must_start_with_the_id(
    spark: SparkSession, input_ids: DataFrame, engine: str
) -> None:
    out = _matches(
        spark, [("a", "b a", "g1"), ("b", "b a", "g1"), ("c", " c", "g2"), ("d", None, None)]
    )
    result = _check_output(engine, out, input_ids)
    assert not result.success
    failed = {(o.name, o.column): o.unexpected_count for o in result.failures()}
    assert failed == {
        ("expect_column_values_to_not_be_null", S.MATCHES): 1,
        ("expect_column_pair_values_to_be_equal", f"{S.ID},{S.OUTPUT_FIRST_MATCH}"): 3,
    }
    text = result.describe()
    assert "first id in matches must be the row's id" in text
    assert "('a', 'b')" in text
    with pytest.raises(C.ContractError, match="expect_column_values_to_not_be_null"):
        C.require(result)


def test_validate_output_without_matches_column_fails_cleanly(
    spark: SparkSession, input_ids: DataFrame, engine: str
) -> None:
    out = spark.createDataFrame([("a",), ("b",), ("c",), ("d",)], f"{S.ID} string")
    result = _check_output(engine, out, input_ids)
    assert not result.success
    columns = _outcome(result, "expect_table_columns_to_match_set")
    assert (columns.success, columns.unexpected_count) == (False, 1)
    assert "missing columns: 'matches'" in result.describe()
    assert _outcome(result, "expect_column_values_to_be_unique", S.ID).success
    assert not out.is_cached
    assert not input_ids.is_cached


def test_rule_violated_is_a_column_matching_its_condition(spark: SparkSession) -> None:
    typed = C.add_typed_coordinates(_raw(spark, [("a", "n", "95", "1"), ("b", "n", "5", "1")]))
    rule = next(r for r in C.INPUT_RULES if r.reason == "latitude_out_of_range")
    flags = [r["v"] for r in typed.select(S.ID, rule.violated.alias("v")).orderBy(S.ID).collect()]
    assert flags == [True, False]
    assert "`latitude` > 90.0" in rule.condition


# --- Checkpoints, stored results, Data Docs --------------------------------------------


def test_a_checkpoint_run_stores_its_result_and_writes_data_docs(
    bad_typed: DataFrame, clean_typed: DataFrame, tmp_path: Path
) -> None:
    project = tmp_path / "gx-project"
    failed = C.validate_input(bad_typed, store=str(project), run_name="bad rows")
    passed = C.validate_input(clean_typed, store=str(project), run_name="clean rows")
    # the same outcomes as in memory: storing changes nothing about the check
    assert failed.outcomes == C.validate_input(bad_typed).outcomes
    assert (failed.success, passed.success) == (False, True)
    gx_dir = project / "gx"
    # the suite, its Validation Definition and the Checkpoint are stored GX objects
    checkpoint = json.loads((gx_dir / "checkpoints" / f"{C.INPUT_SUITE}.json").read_text())
    assert [a["type"] for a in checkpoint["actions"]] == ["update_data_docs"]
    (definition,) = checkpoint["validation_definitions"]
    stored = json.loads((gx_dir / "validation_definitions" / f"{C.INPUT_SUITE}.json").read_text())
    assert stored["suite"]["name"] == C.INPUT_SUITE
    assert stored["id"] == definition["id"]
    # one stored result per run, filed under its run name, with GX's own counts
    results = {
        p.relative_to(gx_dir / "uncommitted" / "validations").parts[2]: json.loads(p.read_text())
        for p in (gx_dir / "uncommitted" / "validations").rglob("*.json")
    }
    assert set(results) == {"bad rows", "clean rows"}
    assert (results["bad rows"]["success"], results["clean rows"]["success"]) == (False, True)
    unique = [
        r
        for r in results["bad rows"]["results"]
        if r["expectation_config"]["type"] == "expect_column_values_to_be_unique"
    ]
    assert unique[0]["result"]["unexpected_count"] == EXPECTED_RULE_COUNTS["duplicate_id"]
    # Data Docs: a front page linking each result's page, which shows the failure
    index = C.data_docs_index(str(project))
    front = index.read_text(encoding="utf-8")
    for result in (failed, passed):
        (url,) = result.data_docs
        page = Path(unquote(url.removeprefix("file://")))
        assert page.is_file()
        assert page.name in front
    bad_page = Path(unquote(failed.data_docs[0].removeprefix("file://"))).read_text()
    text = " ".join(re.sub(r"<[^>]+>", " ", bad_page).split())
    assert "Status: Failed" in text
    assert "Run Name bad rows" in text
    assert f"{EXPECTED_RULE_COUNTS['duplicate_id']} unexpected values found" in text


def test_an_unstored_check_writes_nothing(
    clean_typed: DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a GX file project would appear by default
    result = C.validate_input(clean_typed)
    assert result.success
    assert result.data_docs == ()
    assert list(tmp_path.iterdir()) == []
